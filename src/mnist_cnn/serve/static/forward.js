// The served network run in the page: GET /api/weights' bytes in, /api/predict's answer for a 28x28 digit out.
//
//   const net = mnistForward.load(arrayBuffer);      // the weights, parsed once (config, classes, trust, tensors)
//   const answer = mnistForward.answer(net, pixels);  // Uint8Array(784) -> the fields /api/predict answers with
//
// The same network as model.py's Net in eval mode, with the same weights, in float32 (each layer's output is a
// Float32Array; each unit's sum is formed in double and rounded to float32 once), so its numbers equal PyTorch's
// to ~1e-5 (tests/test_web_trust.py checks the probabilities and the 8-bit maps against the server's). BatchNorm
// comes folded into conv1 and conv2 by the server (serve/app.py folded_weights): "conv1" here is after BN, as the
// model's trace has it. Dropout is off in eval mode. Shapes for the tutorial's network (C1 32, C2 64, fc 128):
//
//   input  (1, 28, 28)    (pixel / 255 - mean) / std
//   conv1  (32, 26, 26)   3x3, padding P, + bias; ReLU       (maps: conv1)
//   pool   (32, 13, 13)   max over 2x2, stride 2             (maps: pool1; ReLU then pool = pool then ReLU)
//   conv2  (64, 11, 11)   3x3 over 32 channels; ReLU        (maps: conv2)
//   pool   (64, 5, 5)     floor((11 - 2) / 2) + 1 = 5        (maps: pool2)
//   fc1    (128,)         1600 -> 128; ReLU                  (maps: fc1)
//   fc2    (10,)          128 -> 10: logits; softmax(logits / T) with the checkpoint's temperature T
//
// The answer is made the server's way (serve/app.py, predict/classifier.py): probabilities at the calibration
// temperature, "not a digit" when the largest probability at the rejection temperature is under the threshold,
// each feature map quantized to 8 bits by its own maximum (quantize_maps).
"use strict";

(function (root) {
  const f = Math.fround;
  const LAYERS = ["conv1", "pool1", "conv2", "pool2", "fc1"];  // the maps the server returns (backend.LAYERS)

  function load(buf) {  // /api/weights: uint32 N, N bytes of JSON, then float32 tensors (offsets in the JSON)
    const n = new DataView(buf).getUint32(0, true);
    const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
    const t = {};
    for (const { name, shape, offset } of head.tensors) {
      t[name] = new Float32Array(buf, 4 + n + offset, shape.reduce((a, b) => a * b, 1));
    }
    return { cfg: head.config, classes: head.classes, trust: head.trust, t };
  }

  // (cin, side, side) -> (cout, so, so), so = side + 2 * pad - k + 1; w: (cout, cin, k, k), b: (cout,).
  // The input's k x k patches first, as rows of a (cin * k * k, so * so) matrix (zeros where the padding is), so
  // each weight multiplies a whole row at once: the inner loop runs over so * so outputs, not so. In double
  // (no float32 conversion in the inner loop: ~30% faster in V8 than float32 arrays), one output map at a time.
  function conv(x, cin, side, w, b, k, pad) {
    const cout = b.length, so = side + 2 * pad - k + 1, n = so * so, rows = cin * k * k;
    const patches = new Float64Array(rows * n), acc = new Float64Array(n), out = new Float32Array(cout * n);
    for (let c = 0; c < cin; c++) {
      for (let ki = 0; ki < k; ki++) {
        for (let kj = 0; kj < k; kj++) {
          const r = ((c * k + ki) * k + kj) * n;
          const j0 = Math.max(0, pad - kj), j1 = Math.min(so, side + pad - kj);  // columns inside the input
          const i0 = Math.max(0, pad - ki), i1 = Math.min(so, side + pad - ki);  // rows inside the input
          for (let i = i0; i < i1; i++) {
            const from = c * side * side + (i + ki - pad) * side + kj - pad;
            for (let j = j0; j < j1; j++) patches[r + i * so + j] = x[from + j];
          }
        }
      }
    }
    for (let o = 0; o < cout; o++) {
      acc.fill(b[o]);
      for (let r = 0; r < rows; r++) {
        const wv = w[o * rows + r], pr = r * n;
        for (let j = 0; j < n; j++) acc[j] += wv * patches[pr + j];
      }
      out.set(acc, o * n);  // each output rounded to float32 once
    }
    return [out, so];
  }

  function relu(a) { for (let i = 0; i < a.length; i++) if (!(a[i] > 0)) a[i] = 0; return a; }

  // (c, side, side) -> (c, so, so): max over k x k windows at stride s, so = floor((side - k) / s) + 1
  function pool(x, c, side, k, s) {
    const so = Math.floor((side - k) / s) + 1, out = new Float32Array(c * so * so);
    for (let ch = 0; ch < c; ch++) {
      for (let i = 0; i < so; i++) {
        for (let j = 0; j < so; j++) {
          let m = -Infinity;
          for (let a = 0; a < k; a++) {
            const row = ch * side * side + (i * s + a) * side + j * s;
            for (let b = 0; b < k; b++) if (x[row + b] > m) m = x[row + b];
          }
          out[(ch * so + i) * so + j] = m;
        }
      }
    }
    return [out, so];
  }

  function dense(x, w, b) {  // (n,) -> (m,): w (m, n), b (m,); each sum in double, stored as float32
    const m = b.length, n = x.length, out = new Float32Array(m);
    for (let o = 0; o < m; o++) {
      let s = 0;
      for (let i = 0, r = o * n; i < n; i++) s += w[r + i] * x[i];
      out[o] = s + b[o];
    }
    return out;
  }

  function forward(net, pixels) {  // Uint8Array(784) -> {conv1, pool1, conv2, pool2, fc1, logits}, after ReLUs
    const { cfg, t } = net, [c1, c2] = cfg.channels, side0 = cfg.image_size, mean = f(cfg.mean), std = f(cfg.std);
    const x = new Float32Array(side0 * side0);
    for (let i = 0; i < x.length; i++) x[i] = f(f(f(pixels[i] / 255) - mean) / std);  // data.normalize
    const k = cfg.kernel_size, pad = cfg.padding, pk = cfg.pool_kernel, ps = cfg.pool_stride;
    const [a1, s1] = conv(x, 1, side0, t["conv1.weight"], t["conv1.bias"], k, pad);
    const [p1, q1] = pool(relu(a1), c1, s1, pk, ps);
    const [a2, s2] = conv(p1, c1, q1, t["conv2.weight"], t["conv2.bias"], k, pad);
    const [p2, q2] = pool(relu(a2), c2, s2, pk, ps);
    const h = relu(dense(p2, t["fc1.weight"], t["fc1.bias"]));
    return { conv1: [a1, [c1, s1, s1]], pool1: [p1, [c1, q1, q1]], conv2: [a2, [c2, s2, s2]],
             pool2: [p2, [c2, q2, q2]], fc1: [h, [h.length]], logits: dense(h, t["fc2.weight"], t["fc2.bias"]) };
  }

  function softmax(z, temperature) {  // logits -> probabilities of softmax(z / T), in double
    const y = Array.from(z, (v) => v / temperature), top = Math.max(...y);
    const e = y.map((v) => Math.exp(v - top)), sum = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / sum);
  }

  function rint(x) {  // numpy's rint for x >= 0: half to even (Math.round takes halves up)
    const r = Math.round(x);
    return r - x === 0.5 && (r & 1) ? r - 1 : r;
  }

  // serve/app.py quantize_maps: each map (or the vector) scaled to 0..255 by its own maximum, in float32
  function quantize([a, shape]) {
    const maps = shape.length === 3 ? shape[0] : 1, size = a.length / maps, data = new Uint8Array(a.length);
    const max = [], one = f(255);
    for (let m = 0; m < maps; m++) {
      let peak = 0;
      for (let i = m * size; i < (m + 1) * size; i++) if (a[i] > peak) peak = a[i];
      const d = Math.max(peak, f(1e-12));
      for (let i = m * size; i < (m + 1) * size; i++) data[i] = rint(f(f((a[i] > 0 ? a[i] : 0) / d) * one));
      max.push(Math.round(peak * 1e4) / 1e4);
    }
    return { shape, max, data };
  }

  function answer(net, pixels) {  // Uint8Array(784) -> /api/predict's answer for this digit, maps as bytes
    const out = forward(net, pixels), { trust, classes } = net;
    const probabilities = softmax(out.logits, trust.temperature);
    const best = probabilities.indexOf(Math.max(...probabilities)), confidence = probabilities[best];
    const sure = Math.max(...softmax(out.logits, trust.reject_temperature));  // classifier.reject_score
    const isDigit = trust.threshold == null ? null : sure >= trust.threshold;
    const label = classes[best], prediction = isDigit === false ? null : best;
    const reading = { prediction, label, probabilities, box: null, is_digit: isDigit, confidence };
    const activations = {};
    for (const name of LAYERS) activations[name] = quantize(out[name]);
    return { ...reading, best_guess: best, digits: [reading], trust: trust.note, activations,
             number: isDigit === false || !/^\d+$/.test(label) ? null : String(best),
             input_28x28: Array.from({ length: 28 }, (_, i) => Array.from(pixels.subarray(28 * i, 28 * i + 28))) };
  }

  root.mnistForward = { load, forward, answer };
})(typeof window !== "undefined" ? window : globalThis);
