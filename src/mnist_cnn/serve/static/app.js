// The page: a drawing pad (draw.js) that answers a digit as you draw, and paints the answer.
// No framework, no build step, nothing fetched from outside this server.
//
// Drawn digits are answered in the page: every change of the pad is reduced to the 28x28 digit (preprocess.js,
// the server's to_mnist ported step for step, shared with `export --web`) and run at once through the served
// network with its own weights (forward.js, from GET /api/weights: the same float32 numbers as the server's to
// ~1e-5), and the answer is painted before the browser draws the next frame. No request goes out while drawing.
// The server answers everything else: number mode, test images, uploads, a unit's arithmetic, teaching; and
// drawn digits too when /api/weights has no weights for this page (an ONNX model, a network too big for a frame)
// or before they have arrived. Then (the server path):
// the pad is reduced to the 28x28 digit here and only those 784 pixels go to the server; the
// feature maps come back as raw 8-bit bytes after the JSON (?binary=true). No debounce: a request goes out as soon
// as the pad changes and none is in flight; while one is, the latest drawing waits and goes next (the latest wins).
// When the stroke ends, its drawing goes at once even beside a request in flight, whose older answer is dropped.
// Number mode uploads the pad as a PNG: cutting a number into digits is the server's (predict/segment.py).
"use strict";

const $ = (id) => document.getElementById(id);
const LAYERS = [               // [name, caption, css pixels per feature-map pixel]
  ["conv1", "conv1 + ReLU", 2], ["pool1", "max-pool", 3], ["conv2", "conv2 + ReLU", 3], ["pool2", "max-pool", 5],
];

const PREDICT = "/api/predict?activations=true&binary=true";  // the answer with its maps as raw bytes (readAnswer)

let classes = [...Array(10).keys()].map(String);  // class k's name, from /api/model
let digits = true;             // the model reads digits: drawing makes sense (else: pick a test image)
let inFlight = 0, dirty = false;  // requests in flight (one while drawing, see predictPad); a newer drawing waits
let asked = 0;                 // the pad's version the latest request was made from
let clearedAt = 0;             // the pad's version at the last clear: an answer to an older drawing is dropped
let net = null;                // the served network's weights (forward.js); null: drawn digits go to the server

const pad = drawPad($("pad"), { width: () => +$("width").value, changed: drawn,
                                ended: () => answerHere() || predictPad(true) });
const boxes = $("boxes"), bctx = boxes.getContext("2d");

function drawn() { $("truth").textContent = ""; answerHere() || predictPad(); }

function clearPad() {
  pad.clear();
  clearedAt = pad.version;
  dirty = false;
  document.body.dataset.busy = "0";
  clearBoxes();
}

$("width").addEventListener("input", () => { $("width-out").textContent = $("width").value; });
$("clear").addEventListener("click", () => {
  clearPad(); resetResult(); document.dispatchEvent(new CustomEvent("mnist:clear"));
});

// number mode: a wider pad for several digits side by side, read digit by digit (boxes drawn over the pad)
$("number-mode").addEventListener("change", () => {
  const on = $("number-mode").checked;
  document.body.classList.toggle("number-mode", on);
  pad.canvas.width = boxes.width = on ? 840 : 280;
  clearPad();
  resetResult();
});

// ---------------------------------------------------------------------------------------------------------------
// answering a drawn digit here: the network runs in the page (forward.js)

async function loadNet() {  // GET /api/weights once; without them (or on any failure) the server keeps answering
  try {
    const res = await fetch("/api/weights");
    if (res.ok) net = mnistForward.load(await res.arrayBuffer());
  } catch (e) {
    net = null;
  }
  document.body.dataset.forward = net ? "page" : "server";  // for tests and benches: who answers a drawing
}

function answerHere() {  // the pad's digit answered and painted now; false: not here (the server is asked)
  if (!net || $("number-mode").checked) return false;
  document.body.dataset.busy = "0";  // nothing to wait for: the answer is painted before this returns
  if (!pad.inked || pad.version === asked) return true;  // a cleared pad, or this very drawing shown already
  const version = asked = pad.version;  // an older answer still coming from the server is dropped (ask)
  let pixels;
  try {
    pixels = mnistPreprocess.toMnist(pad.pixels(), pad.canvas.width, pad.canvas.height);
  } catch (e) {  // "no ink found" (a first dot is too little to crop to): say it, answer the next change
    say(e.message);
    return true;
  }
  render(mnistForward.answer(net, pixels), version);
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// asking the server: one request in flight while drawing (two at a stroke's end), the latest drawing wins

async function predictPad(final = false) {
  if (!pad.inked) { document.body.dataset.busy = "0"; return; }  // a cleared pad asks nothing
  if (pad.version === asked) {  // this very drawing is asked about already (a stroke's end changes no ink)
    if (!inFlight) document.body.dataset.busy = "0";
    return;
  }
  document.body.dataset.busy = "1";  // for tests: an answer is still coming
  // one request at a time while drawing; at the stroke's end the last drawing goes at once, beside an answer in
  // flight for an older one (that answer is then dropped: no waiting for a drawing that is already gone)
  if (inFlight && !final) { dirty = true; return; }
  dirty = false;
  inFlight++;
  try {
    const version = asked = pad.version, number = $("number-mode").checked;
    const request = number ? await padUpload() : padPixels();
    const r = request && await ask(request, version);
    if (r && number) drawBoxes(r.digits || []);  // boxes are in the pad's pixels
  } finally {
    inFlight--;
    if (dirty && !inFlight) { dirty = false; predictPad(); }
    else if (!inFlight && !pad.drawing) document.body.dataset.busy = "0";
  }
}

function padPixels() {  // the pad -> its 28x28 digit, here -> POST {pixels: 784 numbers}; null: nothing to ask
  let pixels;
  try {
    pixels = mnistPreprocess.toMnist(pad.pixels(), pad.canvas.width, pad.canvas.height);
  } catch (e) {  // "no ink found" (a first dot is too little to crop to): say it, ask again on the next stroke
    say(e.message);
    return null;
  }
  return postPixels(Array.from(pixels));
}

async function padUpload() {  // the pad as a PNG, preprocessed (and cut into digits) by the server; null: no ink yet
  try {  // the same ink test the server runs, here, so a first dot that is too little ink asks nothing
    mnistPreprocess.toMnist(pad.pixels(), pad.canvas.width, pad.canvas.height);
  } catch (e) {
    say(e.message);
    return null;
  }
  const blob = await new Promise((ok) => pad.canvas.toBlob(ok, "image/png"));
  const form = new FormData();
  form.append("file", blob, "drawing.png");
  return fetch(PREDICT, { method: "POST", body: form });
}

function postPixels(pixels) {
  return fetch(PREDICT, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ pixels }) });
}

// an answer -> the JSON object, each layer's maps as a Uint8Array in `data`: from ?binary=true's layout (a uint32
// N, N bytes of JSON, then each layer's bytes in order), or from plain JSON (an error; base64 maps decoded)
async function readAnswer(res) {
  if (res.headers.get("content-type") !== "application/octet-stream") {
    const body = await res.json();
    for (const a of Object.values(body.activations || {})) a.data = decode(a.data);
    return body;
  }
  const buf = await res.arrayBuffer(), n = new DataView(buf).getUint32(0, true);
  const body = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  let at = 4 + n;
  for (const a of Object.values(body.activations || {})) {
    const size = a.shape.reduce((x, y) => x * y, 1);
    a.data = new Uint8Array(buf, at, size);
    at += size;
  }
  return body;
}

async function ask(request, version = pad.version) {
  let res;
  try {
    res = await request;
  } catch (e) {
    return say("The server is not answering: " + e.message);
  }
  const body = await readAnswer(res).catch(() => ({}));
  if (version < clearedAt) return;  // the pad was cleared while this was in flight: its answer is stale
  if (version < asked) return;  // a newer drawing is asked about already (predictPad): this answer is stale
  if (!res.ok) return say(`${res.status}: ${body.detail || res.statusText}`);
  render(body, version);
  return body;
}

function say(text) { $("status").textContent = text; }

// ---------------------------------------------------------------------------------------------------------------
// painting the answer

function buildBars() {  // one row per class: its name, a bar, the probability
  const bars = $("bars");
  bars.replaceChildren();
  bars.classList.toggle("named", !digits);
  classes.forEach((name, d) => {
    const label = document.createElement("div"), track = document.createElement("div");
    const fill = document.createElement("div"), value = document.createElement("div");
    label.className = "bar-label"; label.textContent = name;
    track.className = "bar-track"; fill.className = "bar-fill"; track.appendChild(fill);
    value.className = "bar-value"; value.id = "p" + d; value.textContent = "–";
    for (const el of [label, track, value]) { el.dataset.digit = d; bars.appendChild(el); }
  });
}

function resetResult() {
  $("digit").textContent = "?";
  $("digit").classList.remove("not-digit");
  $("best-guess").textContent = "";
  $("digit-list").replaceChildren();
  $("confidence").textContent = "no prediction yet";
  $("truth").textContent = "";
  paintBars(null, -1);
  $("seen").getContext("2d").clearRect(0, 0, 28, 28);
  $("maps").classList.add("blank");  // hidden, not removed: 193 canvases made again would cost ~25 ms
  document.body.dataset.prediction = "";
  document.body.dataset.isDigit = "";
  document.body.dataset.number = "";
  say(!digits ? "Pick a test image below the pad." : $("number-mode").checked
    ? "Write a number, digits side by side." : "Draw a digit in the black square.");
}

function render(r, version) {
  $("digit").classList.toggle("not-digit", r.is_digit === false);
  $("best-guess").textContent = "";
  $("digit-list").replaceChildren();
  clearBoxes();
  const name = classes[r.best_guess] ?? String(r.best_guess);
  $("digit").classList.toggle("named", !digits);
  if (r.digits && r.digits.length > 1) renderNumber(r);
  else if (r.is_digit === false) {
    $("digit").textContent = "✗";
    $("confidence").textContent = "not a digit";
    $("best-guess").textContent = `best guess ${name} (${(100 * r.confidence).toFixed(1)}%)`;
  } else {
    $("digit").textContent = name;
    $("confidence").textContent = `${(100 * r.confidence).toFixed(1)}% sure it is ${digits ? "a " : ""}${name}`;
  }
  paintBars(r.probabilities, r.best_guess);
  paintGray($("seen"), r.input_28x28.flat(), 28, 28);
  if (r.activations) paintMaps(r.activations);
  const data = document.body.dataset;
  data.prediction = r.prediction ?? (r.number ?? "none");  // for tests: the page has an answer
  data.isDigit = String(r.is_digit);
  data.number = r.number ?? "";
  data.shownVersion = String(version);  // the pad's version this answer was made from (bench/page_latency.py)
  document.dispatchEvent(new CustomEvent("mnist:result", { detail: r }));  // learn.js explains this answer
  data.updates = (+(data.updates || 0) + 1).toString();
  say(digits ? "Keep drawing: the answer follows every stroke." : "Pick another test image.");
}

function renderNumber(r) {
  const read = r.digits.map((d) => (d.is_digit === false ? "?" : d.prediction)).join("");
  $("digit").textContent = read;
  $("confidence").textContent = r.number == null
    ? `${r.digits.length} marks, not all of them digits`
    : `${r.digits.length} digits, ${(100 * r.confidence).toFixed(1)}% sure of all of them`;
  for (const d of r.digits) {
    const li = document.createElement("li");
    const best = d.probabilities.indexOf(Math.max(...d.probabilities));
    li.textContent = d.is_digit === false ? `not a digit (best guess ${best}, ${(100 * d.confidence).toFixed(0)}%)`
      : `${d.prediction} (${(100 * d.confidence).toFixed(1)}%)`;
    $("digit-list").appendChild(li);
  }
}

function clearBoxes() { bctx.clearRect(0, 0, boxes.width, boxes.height); }

function drawBoxes(found) {  // each digit's box over the pad, its reading above it
  clearBoxes();
  bctx.lineWidth = 3;
  bctx.font = "bold 26px system-ui, sans-serif";
  for (const d of found) {
    if (!d.box) continue;
    const [x0, y0, x1, y1] = d.box;
    bctx.strokeStyle = bctx.fillStyle = d.is_digit === false ? "#e8710a" : "#34d399";
    bctx.strokeRect(x0 - 4, y0 - 4, x1 - x0 + 8, y1 - y0 + 8);
    bctx.fillText(d.is_digit === false ? "?" : String(d.prediction), x0, Math.max(26, y0 - 8));
  }
}

function paintBars(p, top) {
  const rows = $("bars").children;  // label, track, value per class
  for (let d = 0; d < rows.length / 3; d++) {
    const [label, track, value] = [rows[3 * d], rows[3 * d + 1], rows[3 * d + 2]];
    track.firstChild.style.width = p ? (100 * p[d]).toFixed(2) + "%" : "0";
    for (const el of [label, track, value]) el.classList.toggle("bar-row-top", p != null && d === top);
    value.textContent = p ? (100 * p[d]).toFixed(1) + "%" : "–";
    value.dataset.p = p ? p[d] : "";
  }
}

// a canvas is resized only when its size changes: setting width or height reallocates and clears it
function sized(canvas, w, h) {
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  return canvas.getContext("2d");
}

function paintGray(canvas, values, w, h) {
  const c = sized(canvas, w, h), img = c.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = values[i];
    img.data[4 * i + 3] = 255;
  }
  c.putImageData(img, 0, 0);
}

// a small perceptual colour map (black -> purple -> orange -> pale yellow): 256 opaque RGBA pixels, packed as
// the 32-bit words an ImageData holds (byte order R, G, B, A in memory)
const CMAP = (() => {
  const stops = [[0, 0, 0], [60, 15, 110], [190, 55, 80], [250, 150, 30], [252, 250, 190]];
  const bytes = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const t = i / 255 * (stops.length - 1), k = Math.min(Math.floor(t), stops.length - 2), f = t - k;
    for (let j = 0; j < 3; j++) bytes[4 * i + j] = Math.round(stops[k][j] + f * (stops[k + 1][j] - stops[k][j]));
    bytes[4 * i + 3] = 255;
  }
  return new Uint32Array(bytes.buffer);
})();

function decode(b64) {
  const s = atob(b64), a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
  return a;
}

const scratch = {};  // one ImageData per map size (and its pixels as 32-bit words), reused for every such map

function paintMap(canvas, data, offset, w, h, gain, ctx = sized(canvas, w, h)) {
  const key = w + "x" + h;
  if (!scratch[key]) {
    const img = ctx.createImageData(w, h);
    scratch[key] = { img, px: new Uint32Array(img.data.buffer) };
  }
  const { img, px } = scratch[key];
  for (let i = 0; i < w * h; i++) px[i] = CMAP[Math.round(data[offset + i] * gain)];
  ctx.putImageData(img, 0, 0);
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

const shownMax = {};  // layer -> each map's maximum in the answer shown: a map's tooltip, written on hover

function paintMaps(acts) {  // ~193 small canvases, made once; each painted with its context kept from the first time
  $("maps").classList.remove("blank");
  for (const [name, title, scale] of LAYERS) {
    const a = acts[name];
    if (!a) continue;
    const [n, h, w] = a.shape, data = a.data, top = Math.max(...a.max) || 1;  // data: bytes (readAnswer)
    const grid = layerBlock(name, title, a.shape).querySelector(".grid");
    const ctxs = grid.contexts || (grid.contexts = []);
    while (grid.children.length < n) {
      const c = document.createElement("canvas");
      c.className = "pixelated";
      c.style.width = w * scale + "px"; c.style.height = h * scale + "px";
      grid.appendChild(c);
      ctxs.push(sized(c, w, h));
    }
    shownMax[name] = a.max;
    for (let k = 0; k < n; k++) {  // weak maps dimmer, never invisible
      paintMap(grid.children[k], data, k * h * w, w, h, Math.sqrt(a.max[k] / top), ctxs[k]);
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
    paintMap(strip, fc.data, 0, fc.shape[0], 1, 1);
  }
}

$("maps").addEventListener("pointerover", (ev) => {  // a map's tooltip: its layer, index and maximum
  const canvas = ev.target.closest(".grid canvas"), block = ev.target.closest(".layer");
  if (!canvas || !block) return;
  const name = block.id.replace("layer-", ""), k = [...canvas.parentNode.children].indexOf(canvas);
  const max = (shownMax[name] || [])[k];
  canvas.title = max === undefined ? "" : `${name} map ${k}: max ${max.toFixed(2)}`;
});

// ---------------------------------------------------------------------------------------------------------------
// a test image, an upload: both land on the pad as the 28x28 the network saw

function showOnPad(pixels) {
  const small = document.createElement("canvas");
  paintGray(small, pixels.flat(), 28, 28);
  clearPad();
  pad.put(small);
}

async function getJSON(path) {  // the parsed answer, or null with the reason said in the status line
  let res;
  try { res = await fetch(path); } catch (e) { say("The server is not answering: " + e.message); return null; }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) { say(`${res.status}: ${body.detail || res.statusText}`); return null; }
  return body;
}

async function showSample(s) {  // a test image {index, label, pixels}: on the pad, predicted, its truth said
  showOnPad(s.pixels);
  const r = await ask(postPixels(s.pixels));
  if (r) {
    const ok = r.best_guess === s.label, what = digits ? "digit" : "image";
    $("truth").textContent = `test ${what} #${s.index}: true label ${classes[s.label] ?? s.label} ` +
      (ok ? "✓" : "✗ (a miss)");
  }
}

$("sample").addEventListener("click", async () => {
  say("Fetching a test image…");
  const s = await getJSON("/api/sample");
  if (s) await showSample(s);
});

const GALLERY = 24;  // test images offered to click when the model does not read digits

async function buildGallery() {  // thumbnails of random test images; a click predicts one
  const got = await getJSON(`/api/samples?n=${GALLERY}`);
  if (!got) return;
  const gallery = $("gallery");
  gallery.replaceChildren();
  for (const s of got.samples) {
    const thumb = document.createElement("canvas");
    thumb.className = "pixelated";
    thumb.title = `test image #${s.index}: ${s.class_name}`;
    thumb.dataset.index = s.index;
    paintGray(thumb, s.pixels.flat(), 28, 28);
    thumb.addEventListener("click", () => showSample(s));
    gallery.appendChild(thumb);
  }
}

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const r = await ask(fetch(PREDICT, { method: "POST", body: form }));
  if (r) { showOnPad(r.input_28x28); $("truth").textContent = `uploaded: ${file.name}`; }
  $("upload").value = "";
});

// ---------------------------------------------------------------------------------------------------------------

async function showModel() {
  let m;
  try {
    m = await (await fetch("/api/model")).json();
  } catch (e) {
    $("model-line").textContent = "model info unavailable";
    document.body.dataset.forward = "server";
    return;
  }
  if (m.classes) {
    classes = m.classes;
    digits = classes.length === 10 && classes.every((c, d) => c === String(d));
  }
  document.body.classList.toggle("not-digits", !digits);  // style.css hides drawing; the gallery shows
  if (!digits) {
    $("title").textContent = `Pick a ${m.dataset} test image, watch the CNN think`;
    buildBars();
    resetResult();
    buildGallery();
  }
  document.dispatchEvent(new CustomEvent("mnist:model", { detail: m }));  // learn.js names the classes
  if (digits && m.page_forward) loadNet();  // drawn digits answered in the page from now on
  else document.body.dataset.forward = "server";
  const acc = m.test_accuracy == null ? "" : ` · test accuracy ${(100 * m.test_accuracy).toFixed(2)}%`;
  const ep = m.epochs == null ? "" : ` after ${m.epochs} epoch${m.epochs === 1 ? "" : "s"}`;
  const data = digits ? "" : ` · ${m.dataset}`;
  $("model-line").textContent = `model ${m.checkpoint}${data} · ${m.params.toLocaleString("en")} parameters` +
    acc + ep;
}

buildBars();
clearPad();
resetResult();
// after every script has run: learn.js listens for "mnist:model", and /api/model can answer while it still loads
document.addEventListener("DOMContentLoaded", showModel);
