// The page: a drawing pad that asks /api/predict as you draw, and paints the answer.
// No framework, no build step, nothing fetched from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const pad = $("pad"), ctx = pad.getContext("2d");
const DEBOUNCE_MS = 120;       // wait this long after the last stroke movement before asking again
const LAYERS = [               // [name, caption, css pixels per feature-map pixel]
  ["conv1", "conv1 + ReLU", 2], ["pool1", "max-pool", 3], ["conv2", "conv2 + ReLU", 3], ["pool2", "max-pool", 5],
];

// ---------------------------------------------------------------------------------------------------------------
// drawing: pointer events cover mouse, touch and pen alike

let drawing = false, inked = false, last = null;

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
}

function at(ev) {  // event -> canvas coordinates, whatever size CSS gives the canvas
  const r = pad.getBoundingClientRect();
  return [(ev.clientX - r.left) * pad.width / r.width, (ev.clientY - r.top) * pad.height / r.height];
}

function stroke(from, to) {
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = +$("width").value;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from[0], from[1]);
  ctx.lineTo(to[0], to[1]);
  ctx.stroke();
}

pad.addEventListener("pointerdown", (ev) => {
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  drawing = true;
  last = at(ev);
  stroke(last, last);  // a tap leaves a dot
  inked = true;
  $("truth").textContent = "";
  schedule();
});
pad.addEventListener("pointermove", (ev) => {
  if (!drawing) return;
  const p = at(ev);
  stroke(last, p);
  last = p;
  schedule();
});
for (const end of ["pointerup", "pointercancel"]) {
  pad.addEventListener(end, () => { drawing = false; schedule(); });
}

$("width").addEventListener("input", () => { $("width-out").textContent = $("width").value; });
$("clear").addEventListener("click", () => {
  clearPad(); resetResult(); document.dispatchEvent(new CustomEvent("mnist:clear"));
});

// ---------------------------------------------------------------------------------------------------------------
// asking the server: debounced, at most one request in flight, the latest drawing always wins

let timer = null, inFlight = false, dirty = false;

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(predictPad, DEBOUNCE_MS);
}

async function predictPad() {
  if (!inked) return;
  if (inFlight) { dirty = true; return; }
  inFlight = true;
  try {
    const blob = await new Promise((ok) => pad.toBlob(ok, "image/png"));
    const form = new FormData();
    form.append("file", blob, "drawing.png");
    await ask(fetch("/api/predict?activations=true", { method: "POST", body: form }));
  } finally {
    inFlight = false;
    if (dirty) { dirty = false; predictPad(); }
  }
}

async function ask(request) {
  let res;
  try {
    res = await request;
  } catch (e) {
    return say("The server is not answering: " + e.message);
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) return say(`${res.status}: ${body.detail || res.statusText}`);
  render(body);
  return body;
}

function say(text) { $("status").textContent = text; }

// ---------------------------------------------------------------------------------------------------------------
// painting the answer

function buildBars() {
  const bars = $("bars");
  for (let d = 0; d < 10; d++) {
    const label = document.createElement("div"), track = document.createElement("div");
    const fill = document.createElement("div"), value = document.createElement("div");
    label.className = "bar-label"; label.textContent = d;
    track.className = "bar-track"; fill.className = "bar-fill"; track.appendChild(fill);
    value.className = "bar-value"; value.id = "p" + d; value.textContent = "–";
    for (const el of [label, track, value]) { el.dataset.digit = d; bars.appendChild(el); }
  }
}

function resetResult() {
  $("digit").textContent = "?";
  $("confidence").textContent = "no prediction yet";
  $("truth").textContent = "";
  for (let d = 0; d < 10; d++) {
    document.querySelector(`.bar-track[data-digit="${d}"] .bar-fill`).style.width = "0";
    $("p" + d).textContent = "–";
  }
  $("seen").getContext("2d").clearRect(0, 0, 28, 28);
  $("maps").replaceChildren();
  document.body.dataset.prediction = "";
  say("Draw a digit in the black square.");
}

function render(r) {
  const p = r.probabilities;
  $("digit").textContent = r.prediction;
  $("confidence").textContent = `${(100 * p[r.prediction]).toFixed(1)}% sure it is a ${r.prediction}`;
  for (let d = 0; d < 10; d++) {
    const fill = document.querySelector(`.bar-track[data-digit="${d}"] .bar-fill`);
    fill.style.width = (100 * p[d]).toFixed(2) + "%";
    for (const el of document.querySelectorAll(`#bars [data-digit="${d}"]`)) {
      el.classList.toggle("bar-row-top", d === r.prediction);
    }
    $("p" + d).textContent = (100 * p[d]).toFixed(1) + "%";
    $("p" + d).dataset.p = p[d];
  }
  paintGray($("seen"), r.input_28x28.flat(), 28, 28);
  if (r.activations) paintMaps(r.activations);
  document.body.dataset.prediction = r.prediction;  // for tests and scripts: the page has an answer
  document.dispatchEvent(new CustomEvent("mnist:result", { detail: r }));  // learn.js explains this answer
  document.body.dataset.updates = (+(document.body.dataset.updates || 0) + 1).toString();
  say("Keep drawing: the answer follows every stroke.");
}

function paintGray(canvas, values, w, h) {
  canvas.width = w; canvas.height = h;
  const c = canvas.getContext("2d"), img = c.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = values[i];
    img.data[4 * i + 3] = 255;
  }
  c.putImageData(img, 0, 0);
}

// a small perceptual colour map (black -> purple -> orange -> pale yellow), 256 entries
const CMAP = (() => {
  const stops = [[0, 0, 0], [60, 15, 110], [190, 55, 80], [250, 150, 30], [252, 250, 190]];
  const out = [];
  for (let i = 0; i < 256; i++) {
    const t = i / 255 * (stops.length - 1), k = Math.min(Math.floor(t), stops.length - 2), f = t - k;
    out.push(stops[k].map((v, j) => Math.round(v + f * (stops[k + 1][j] - v))));
  }
  return out;
})();

function decode(b64) {
  const s = atob(b64), a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
  return a;
}

function paintMap(canvas, data, offset, w, h, gain) {
  canvas.width = w; canvas.height = h;
  const c = canvas.getContext("2d"), img = c.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const rgb = CMAP[Math.round(data[offset + i] * gain)];
    img.data[4 * i] = rgb[0]; img.data[4 * i + 1] = rgb[1]; img.data[4 * i + 2] = rgb[2]; img.data[4 * i + 3] = 255;
  }
  c.putImageData(img, 0, 0);
}

function layerBlock(id, title, shape) {
  let block = document.getElementById("layer-" + id);
  if (!block) {
    block = document.createElement("div");
    block.className = "layer"; block.id = "layer-" + id;
    block.innerHTML = `<h3>${title} <span>${shape.join("×")}</span></h3><div class="grid"></div>`;
    $("maps").appendChild(block);
  }
  return block;
}

function paintMaps(acts) {
  for (const [name, title, scale] of LAYERS) {
    const a = acts[name];
    if (!a) continue;
    const [n, h, w] = a.shape, data = decode(a.data), top = Math.max(...a.max) || 1;
    const grid = layerBlock(name, title, a.shape).querySelector(".grid");
    while (grid.children.length < n) {
      const c = document.createElement("canvas");
      c.className = "pixelated";
      c.style.width = w * scale + "px"; c.style.height = h * scale + "px";
      grid.appendChild(c);
    }
    for (let k = 0; k < n; k++) {
      const canvas = grid.children[k];
      canvas.title = `${name} map ${k}: max ${a.max[k].toFixed(2)}`;
      paintMap(canvas, data, k * h * w, w, h, Math.sqrt(a.max[k] / top));  // weak maps dimmer, never invisible
    }
  }
  const fc = acts.fc1;
  if (fc) {
    const block = layerBlock("fc1", "fc1 + ReLU", fc.shape);
    let strip = block.querySelector("canvas");
    if (!strip) {
      strip = document.createElement("canvas");
      strip.className = "vector pixelated";
      block.querySelector(".grid").replaceWith(strip);
    }
    paintMap(strip, decode(fc.data), 0, fc.shape[0], 1, 1);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// a test digit, an upload: both land on the pad as the 28x28 the network saw

function showOnPad(pixels) {
  const small = document.createElement("canvas");
  paintGray(small, pixels.flat(), 28, 28);
  clearPad();
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, pad.width, pad.height);
  inked = true;
}

$("sample").addEventListener("click", async () => {
  say("Fetching a test digit…");
  let res;
  try { res = await fetch("/api/sample"); } catch (e) { return say("The server is not answering: " + e.message); }
  const s = await res.json().catch(() => ({}));
  if (!res.ok) return say(`${res.status}: ${s.detail || res.statusText}`);
  showOnPad(s.pixels);
  const r = await ask(fetch("/api/predict?activations=true", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ pixels: s.pixels }),
  }));
  if (r) {
    const ok = r.prediction === s.label;
    $("truth").textContent = `test digit #${s.index}: true label ${s.label} ${ok ? "✓" : "✗ (a miss)"}`;
  }
});

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const r = await ask(fetch("/api/predict?activations=true", { method: "POST", body: form }));
  if (r) { showOnPad(r.input_28x28); $("truth").textContent = `uploaded: ${file.name}`; }
  $("upload").value = "";
});

// ---------------------------------------------------------------------------------------------------------------

async function showModel() {
  try {
    const m = await (await fetch("/api/model")).json();
    const acc = m.test_accuracy == null ? "" : ` · test accuracy ${(100 * m.test_accuracy).toFixed(2)}%`;
    const ep = m.epochs == null ? "" : ` after ${m.epochs} epoch${m.epochs === 1 ? "" : "s"}`;
    $("model-line").textContent = `model ${m.checkpoint} · ${m.params.toLocaleString("en")} parameters${acc}${ep}`;
  } catch (e) {
    $("model-line").textContent = "model info unavailable";
  }
}

buildBars();
clearPad();
showModel();
