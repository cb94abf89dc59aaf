// Any RGBA image -> the uint8 28x28 MNIST-style digit, step for step as mnist_cnn/predict/preprocess.py's to_mnist
// does it on the server: flatten transparency, grayscale, white on black, remove the background, crop to the ink,
// thicken thin strokes, fit the longer side to 20 px (Pillow's BOX filter, or bilinear when enlarging), and put the
// centre of mass at pixel (14, 14). tests/test_web_export.py checks that both give the same 784 bytes.
//
// The numbers follow numpy's and Pillow's: numpy computes on float32 arrays in float32 (Math.fround after each
// operation here, a Python float taking part being rounded to float32 first), Pillow resamples float images with
// double sums stored as float32, and Python's round() rounds half to even.
"use strict";

(function (root) {
  const f = Math.fround;
  const BOX = 20, SIDE = 28, CENTER = 14.0;

  function pyRound(x) {  // Python's round(): half to even
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  function image(h, w, d) { return { h, w, d: d || new Float32Array(h * w) }; }

  // ---------------------------------------------------------------------------------------------------------------
  // numpy's linear percentile: a scalar q computes in float32, a list of q in float64

  function sorted(values) {  // ascending; mostly exact zeros (a canvas's paper): only the non-zero values are sorted
    const n = values.length, neg = [], out = new Float32Array(n);
    let k = 0;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      if (v > 0) out[k++] = v;
      else if (v < 0) neg.push(v);
    }
    out.subarray(0, k).sort();
    out.copyWithin(n - k, 0, k).fill(0, 0, n - k);
    out.set(Float32Array.from(neg).sort(), 0);  // the negatives (paper under its own level) first, zeros between
    return out;
  }

  function percentile(s, q, float32) {  // s: sorted Float32Array
    const n = s.length, vi = (n - 1) * (q / 100);
    if (vi >= n - 1) return s[n - 1];
    const prev = Math.floor(vi), g = vi - prev, a = s[prev], b = s[prev + 1];
    if (float32) {
      const d = f(b - a);
      return g >= 0.5 ? f(b - f(d * f(1 - g))) : f(a + f(d * f(g)));
    }
    const d = f(b - a);
    return g >= 0.5 ? b - d * (1 - g) : a + d * g;
  }

  function percentilesOf(values, qs, float32) {  // qs.map((q) => percentile(sorted(values), q, float32)), without
    const n = values.length;                      // the sort when every value read is a zero (mostly paper: usual)
    let neg = 0, zero = 0;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      if (v < 0) neg++;
      else if (!(v > 0)) zero++;  // as sorted() counts it: zeros (and NaN) between the negatives and the positives
    }
    if (qs.every((q) => readsZeros(n, neg, zero, q))) return qs.map(() => 0);
    const s = sorted(values);
    return qs.map((q) => percentile(s, q, float32));
  }

  function readsZeros(n, neg, zero, q) {  // percentile() of n sorted values (neg below zero, then zero zeros) reads
    const vi = (n - 1) * (q / 100), prev = Math.floor(vi);  // s[prev] and s[prev + 1]: both zeros -> it gives 0
    return vi < n - 1 && prev >= neg && prev + 1 < neg + zero;
  }

  function median(values) {  // np.median of float32 values
    const s = Float32Array.from(values).sort(), n = s.length, m = n >> 1;
    return n % 2 ? s[m] : f(f(s[m - 1] + s[m]) / 2);
  }

  function interp(n, xp, fp) {  // np.interp(np.arange(n), xp, fp), as numpy's C loop computes it
    const out = new Float64Array(n), last = xp.length - 1;
    let j = 0;
    for (let i = 0; i < n; i++) {
      while (j < last && xp[j + 1] <= i) j++;
      if (i === xp[last] || j === last) out[i] = fp[last];
      else if (xp[j] === i) out[i] = fp[j];
      else out[i] = ((fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])) * (i - xp[j]) + fp[j];
    }
    return out;
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Pillow's resampling of a float ("F") image: horizontal pass, then vertical, double sums stored as float32

  const FILTERS = {
    box: { support: 0.5, fn: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
    bilinear: { support: 1.0, fn: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
  };

  function coeffs(inSize, in0, in1, outSize, filter) {
    const scale = (in1 - in0) / outSize, filterscale = Math.max(scale, 1.0);
    const support = filter.support * filterscale, ksize = Math.ceil(support) * 2 + 1;
    const kk = new Float64Array(outSize * ksize), bounds = new Int32Array(outSize * 2);
    for (let xx = 0; xx < outSize; xx++) {
      const center = in0 + (xx + 0.5) * scale, ss = 1.0 / filterscale;
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
      let ww = 0.0;
      for (let x = 0; x < xmax; x++) {
        const w = filter.fn((x + xmin - center + 0.5) * ss);
        kk[xx * ksize + x] = w;
        ww += w;
      }
      for (let x = 0; x < xmax; x++) if (ww !== 0.0) kk[xx * ksize + x] /= ww;
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    return { kk, bounds, ksize };
  }

  function resize(src, w, h, box, filterName) {  // Image.fromarray(src).resize((w, h), filter, box)
    const filter = FILTERS[filterName];
    box = box || [0, 0, src.w, src.h];
    const needH = w !== src.w || box[0] !== 0 || box[2] !== w, needV = h !== src.h || box[1] !== 0 || box[3] !== h;
    const ch = coeffs(src.w, box[0], box[2], w, filter), cv = coeffs(src.h, box[1], box[3], h, filter);
    let cur = src;
    if (needH) {
      const first = cv.bounds[0], lastRow = cv.bounds[h * 2 - 2] + cv.bounds[h * 2 - 1];
      for (let i = 0; i < h; i++) cv.bounds[i * 2] -= first;
      const tmp = image(lastRow - first, w);
      for (let y = 0; y < tmp.h; y++) {
        for (let xx = 0; xx < w; xx++) {
          const xmin = ch.bounds[xx * 2], xmax = ch.bounds[xx * 2 + 1];
          let ss = 0.0;
          for (let x = 0; x < xmax; x++) ss += src.d[(y + first) * src.w + x + xmin] * ch.kk[xx * ch.ksize + x];
          tmp.d[y * w + xx] = ss;
        }
      }
      cur = tmp;
    }
    if (needV) {
      const out = image(h, w);
      for (let yy = 0; yy < h; yy++) {
        const ymin = cv.bounds[yy * 2], ymax = cv.bounds[yy * 2 + 1];
        for (let xx = 0; xx < w; xx++) {
          let ss = 0.0;
          for (let y = 0; y < ymax; y++) ss += cur.d[(y + ymin) * cur.w + xx] * cv.kk[yy * cv.ksize + y];
          out.d[yy * w + xx] = ss;
        }
      }
      cur = out;
    }
    return cur === src ? image(src.h, src.w, Float32Array.from(src.d)) : cur;
  }

  // ---------------------------------------------------------------------------------------------------------------
  // the steps, in preprocess.py's order

  const LEVELS = Float32Array.from({ length: 256 }, (_, v) => v / 255.0);  // an 8-bit level as float32, v / 255

  function luminance(rgb, n, stride) {  // Pillow's RGB -> L, in integers; stride 3 (RGB) or 4 (RGBA, alpha unused)
    const g = new Float32Array(n);
    for (let i = 0, j = 0; i < n; i++, j += stride) {
      g[i] = LEVELS[(rgb[j] * 19595 + rgb[j + 1] * 38470 + rgb[j + 2] * 7471 + 0x8000) >> 16];
    }
    return g;
  }

  function flattenToGray(rgba, w, h) {  // flatten_transparency + to_grayscale for an RGBA image
    const n = w * h, luma = luminance(rgba, n, 4);  // Pillow's RGBA -> LA keeps alpha and takes this L
    let opaque = true;
    for (let i = 0; i < n; i++) if (rgba[4 * i + 3] !== 255) { opaque = false; break; }
    if (opaque) return image(h, w, luma);
    const alpha = new Float32Array(n);
    let weight = 0, inked = 0;
    for (let i = 0; i < n; i++) {
      alpha[i] = f(rgba[4 * i + 3] / 255.0);
      weight += alpha[i];
      inked += f(luma[i] * alpha[i]);
    }
    const inkLuma = weight > 0 ? inked / weight : 0.0;
    let bg = weight / n < 0.5 ? 1.0 - inkLuma : inkLuma;
    bg = bg >= 0.5 ? 1.0 : 0.0;
    const grey = new Float32Array(n);
    for (let i = 0; i < n; i++) {  // grey = luma * alpha + bg * (1 - alpha), in float32, to 8 bits and back
      const v = f(f(luma[i] * alpha[i]) + f(bg * f(1.0 - alpha[i])));
      grey[i] = f(pyRound(f(v * 255)) / 255.0);
    }
    return image(h, w, grey);
  }

  function whiteOnBlack(x) {
    const { h, w, d } = x, border = [];
    for (let c = 0; c < w; c++) border.push(d[c]);
    for (let c = 0; c < w; c++) border.push(d[(h - 1) * w + c]);
    for (let r = 1; r < h - 1; r++) border.push(d[r * w]);
    for (let r = 1; r < h - 1; r++) border.push(d[r * w + w - 1]);
    let bg = median(border);
    if (bg === 0.5) bg = median(d);
    return bg > 0.5 ? image(h, w, d.map((v) => f(1.0 - v))) : x;
  }

  function tilePercentile(d, w, r0, r1, c0, c1, q) {  // percentile(sorted(tile), q, true) of d[r0:r1, c0:c1]:
    const n = (r1 - r0) * (c1 - c0);                    // counted in place, copied out only to be sorted
    let neg = 0, zero = 0;
    for (let r = r0; r < r1; r++) {
      for (let c = c0; c < c1; c++) {
        const v = d[r * w + c];
        if (v < 0) neg++;
        else if (!(v > 0)) zero++;
      }
    }
    if (readsZeros(n, neg, zero, q)) return 0;
    const tile = new Float32Array(n);
    let k = 0;
    for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) tile[k++] = d[r * w + c];
    return percentile(sorted(tile), q, true);
  }

  function tileBackground(x) {
    const { h, w, d } = x;
    const t = Math.min(Math.max(Math.floor(Math.min(h, w) / 16), 1), 6);
    const cuts = (n) => Array.from({ length: t + 1 }, (_, i) => (i === t ? n : Math.trunc(i * (n / t))));
    const ys = cuts(h), xs = cuts(w);
    let grid = [];
    for (let i = 0; i < t; i++) {
      grid.push([]);
      for (let j = 0; j < t; j++) {
        grid[i].push(tilePercentile(d, w, ys[i], ys[i + 1], xs[j], xs[j + 1], 30));
      }
    }
    if (t === 1 || grid.every((row) => row.every((v) => v === grid[0][0]))) {  // one level: the interpolation
      return new Float32Array(h * w).fill(grid[0][0]);                          // below gives it everywhere
    }
    const at = (i, j) => grid[Math.min(Math.max(i, 0), t - 1)][Math.min(Math.max(j, 0), t - 1)];
    grid = grid.map((row, i) => row.map((_, j) => {
      let m = Infinity;
      for (let a = -1; a <= 1; a++) for (let b = -1; b <= 1; b++) m = Math.min(m, at(i + a, j + b));
      return m;
    }));
    const through = (n, c, v, sub) => {  // preprocess.py's interp(): extrapolated to -1 and n, then np.interp
      const first = v[0] - (sub(v[1], v[0]) * (c[0] + 1)) / (c[1] - c[0]);
      const last = v[t - 1] + (sub(v[t - 1], v[t - 2]) * (n - c[t - 1])) / (c[t - 1] - c[t - 2]);
      return interp(n, [-1.0, ...c, n], [first, ...v, last]);
    };
    const sub32 = (a, b) => f(a - b), sub64 = (a, b) => a - b;  // numpy subtracts float32 values in float32
    const centres = (cut) => Array.from({ length: t }, (_, i) => (cut[i] + cut[i + 1]) / 2 - 0.5);
    const cy = centres(ys), cx = centres(xs);
    const cols = Array.from({ length: t }, (_, j) => through(h, cy, grid.map((row) => row[j]), sub32));
    const out = new Float32Array(h * w);
    for (let r = 0; r < h; r++) {
      const line = through(w, cx, cols.map((col) => col[r]), sub64);
      for (let c = 0; c < w; c++) out[r * w + c] = line[c];
    }
    return out;
  }

  // preprocess.py's INK_SIGMAS, MIN_CONTRAST, MIN_INK_PIXELS, MIN_INK_SHARE: what counts as ink
  const INK_SIGMAS = 7.0, MIN_CONTRAST = 0.08, MIN_INK_PIXELS = 4, MIN_INK_SHARE = 2e-4;

  function removeBackground(x) {
    const { h, w } = x, bg = tileBackground(x), d = new Float32Array(h * w);
    for (let i = 0; i < d.length; i++) d[i] = f(x.d[i] - bg[i]);
    const [p30, p10] = percentilesOf(d, [30, 10], false);  // paper under its own level (negative) counts too
    const noise = (p30 - p10) / 0.757;
    const floor = f(Math.max(INK_SIGMAS * noise, MIN_CONTRAST)), ink = new Float32Array(d.length);
    let k = 0;
    for (let i = 0; i < d.length; i++) if (d[i] > floor) ink[k++] = d[i];
    if (k < Math.max(MIN_INK_PIXELS, d.length * MIN_INK_SHARE)) return image(h, w);  // one colour, or grain only
    const top = percentile(sorted(ink.subarray(0, k)), 99, true);
    const cut = Math.max(4.0 * noise, Math.min(h, w) > 64 ? 0.15 * top : 0.0);
    const cut32 = f(cut), range32 = f(top - cut);
    for (let i = 0; i < d.length; i++) d[i] = Math.min(Math.max(f(f(d[i] - cut32) / range32), 0.0), 1.0);
    return image(h, w, d);
  }

  function crop(x, r0, r1, c0, c1) {
    const out = image(r1 - r0, c1 - c0);
    for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) out.d[(r - r0) * out.w + c - c0] = x.d[r * x.w + c];
    return out;
  }

  function cropToInk(x) {
    const { h, w, d } = x;
    if (!d.some((v) => v > 0)) throw new Error("no ink found: the image is blank (one colour, or contrast too low)");
    const rows = new Float64Array(h), cols = new Float64Array(w);
    for (let r = 0; r < h; r++) {
      for (let c = 0; c < w; c++) {
        const v = d[r * w + c] > 0.25 ? d[r * w + c] : 0.0;
        rows[r] += v;
        cols[c] += v;
      }
    }
    const span = (profile, n) => {
      const top = f(f(Math.max(...profile)) / 50), keep = [];
      profile.forEach((v, i) => { if (f(v) > top) keep.push(i); });
      return [Math.max(0, keep[0] - 1), Math.min(n, keep[keep.length - 1] + 2)];
    };
    const [r0, r1] = span(rows, h), [c0, c1] = span(cols, w);
    const y = crop(x, r0, r1, c0, c1);
    let top = y.h, bottom = -1, left = y.w, right = -1;  // the first and last rows and columns with a non-zero
    for (let r = 0; r < y.h; r++) {
      for (let c = 0; c < y.w; c++) {
        if (y.d[r * y.w + c] !== 0) {
          if (r < top) top = r;
          bottom = r;
          if (c < left) left = c;
          if (c > right) right = c;
        }
      }
    }
    return crop(y, top, bottom + 1, left, right + 1);
  }

  function thickenStrokes(x, target = 2.0) {
    const scale = (4 * BOX) / Math.max(x.h, x.w);
    if (scale >= 1) return x;
    const y = resize(x, Math.max(1, pyRound(x.w * scale)), Math.max(1, pyRound(x.h * scale)), null, "box");
    const { h, w, d } = y;
    let peak = -Infinity;
    for (const v of d) peak = Math.max(peak, v);
    const half = f(0.5 * peak), ink = (r, c) => (r >= 0 && r < h && c >= 0 && c < w && d[r * w + c] > half ? 1 : 0);
    let area = 0, perimeter = 0;
    for (let r = -1; r <= h; r++) {
      for (let c = -1; c <= w; c++) {
        area += ink(r, c);
        if (r < h) perimeter += ink(r, c) !== ink(r + 1, c) ? 1 : 0;
        if (c < w) perimeter += ink(r, c) !== ink(r, c + 1) ? 1 : 0;
      }
    }
    const width = (2 * area) / Math.max(perimeter, 1);
    const grow = pyRound((4 * target - width) / 2);
    if (grow < 1) return y;
    const out = image(h, w);
    for (let r = 0; r < h; r++) {
      for (let c = 0; c < w; c++) {
        let m = 0;  // the zero padding around the image takes part in the max
        for (let a = r - grow; a <= r + grow; a++) {
          for (let b = c - grow; b <= c + grow; b++) if (a >= 0 && a < h && b >= 0 && b < w) m = Math.max(m, d[a * w + b]);
        }
        out.d[r * w + c] = m;
      }
    }
    return out;
  }

  function scaleToBox(x) {
    const { h, w } = x, scale = BOX / Math.max(h, w);
    const nh = Math.max(1, pyRound(h * scale)), nw = Math.max(1, pyRound(w * scale));
    let y;
    if (scale < 1) {
      y = resize(x, nw, nh, null, "box");
    } else {  // one pixel of paper around the crop, then bilinear inside it
      const padded = image(h + 2, w + 2);
      for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) padded.d[(r + 1) * (w + 2) + c + 1] = x.d[r * w + c];
      y = resize(padded, nw, nh, [1, 1, w + 1, h + 1], "bilinear");
    }
    let top = 0;
    for (let i = 0; i < y.d.length; i++) { y.d[i] = Math.max(y.d[i], 0.0); top = Math.max(top, y.d[i]); }
    return top > 0 ? image(y.h, y.w, y.d.map((v) => f(v / top))) : y;
  }

  function centerByMass(x) {
    const { h, w, d } = x, rows = new Float64Array(h), cols = new Float64Array(w);
    let mass = 0;
    for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) { rows[r] += d[r * w + c]; cols[c] += d[r * w + c]; }
    let my = 0, mx = 0;
    rows.forEach((v, r) => { mass += v; my += f(v) * r; });
    cols.forEach((v, c) => { mx += f(v) * c; });
    const top = pyRound(CENTER - my / mass), left = pyRound(CENTER - mx / mass);
    const out = new Float32Array(SIDE * SIDE);
    for (let r = Math.max(0, top); r < Math.min(SIDE, top + h); r++) {
      for (let c = Math.max(0, left); c < Math.min(SIDE, left + w); c++) out[r * SIDE + c] = d[(r - top) * w + c - left];
    }
    return out;
  }

  function toMnist(rgba, w, h) {  // RGBA bytes (h*w*4) -> Uint8Array(784), row-major 28x28, white on black
    let x = whiteOnBlack(flattenToGray(rgba, w, h));
    x = scaleToBox(thickenStrokes(cropToInk(removeBackground(x))));
    const out = centerByMass(x), u8 = new Uint8Array(SIDE * SIDE);
    for (let i = 0; i < u8.length; i++) u8[i] = pyRound(f(Math.min(Math.max(out[i], 0.0), 1.0) * 255.0));
    return u8;
  }

  const api = { toMnist };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.mnistPreprocess = api;
})(typeof globalThis !== "undefined" ? globalThis : this);
