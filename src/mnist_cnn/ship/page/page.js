// The static page: draw on the pad (draw.js), preprocess in JS (preprocess.js, the server's steps), run
// model.onnx with onnxruntime-web's WebAssembly backend, paint the answer. Everything is loaded from this folder.
"use strict";

const $ = (id) => document.getElementById(id);
const STROKE = 22;            // pen width in pad pixels (the server page's default)
const WARM_RUNS = 50;         // timed runs per latency figure, after one untimed warm-up run

ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation, which a plain static server does not give

let session = null, busy = false, again = false;
const pad = drawPad($("pad"), { width: () => STROKE, changed: predictPad, ended: predictPad });  // draw.js
$("clear").addEventListener("click", () => { pad.clear(); $("digit").textContent = "?"; });

// ---------------------------------------------------------------------------------------------------------------

function softmax(logits) {
  const m = Math.max(...logits), e = logits.map((v) => Math.exp(v - m)), s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

async function classify(pixels) {  // Uint8Array(784) -> 10 probabilities
  const input = new ort.Tensor("uint8", pixels, [1, 28, 28]);
  const out = await session.run({ [session.inputNames[0]]: input });
  return softmax(Array.from(out[session.outputNames[0]].data));
}

function padPixels() {
  return mnistPreprocess.toMnist(pad.pixels(), pad.canvas.width, pad.canvas.height);
}

async function predictPad() {
  if (!session || !pad.inked) return;
  if (busy) { again = true; return; }
  busy = true;
  try {
    const pixels = padPixels();
    show(pixels, await classify(pixels));
  } catch (e) {
    $("confidence").textContent = e.message;
  } finally {
    busy = false;
    if (again) { again = false; predictPad(); }
  }
}

function show(pixels, probs) {
  const best = probs.indexOf(Math.max(...probs));
  $("digit").textContent = String(best);
  $("confidence").textContent = `${(100 * probs[best]).toFixed(1)}% sure`;
  probs.forEach((p, d) => {
    $(`fill-${d}`).style.width = `${(100 * p).toFixed(1)}%`;
    $(`value-${d}`).textContent = `${(100 * p).toFixed(1)}%`;
  });
  const img = new ImageData(28, 28);
  pixels.forEach((v, i) => img.data.set([v, v, v, 255], 4 * i));
  $("seen").getContext("2d").putImageData(img, 0, 0);
}

function median(xs) { const s = [...xs].sort((a, b) => a - b); return s[s.length >> 1]; }

// Warm latency per digit, measured here with performance.now(): the pad's drawing preprocessed and classified
// `runs` times after one untimed run. Returns medians in ms: inference alone, and preprocessing + inference.
async function measureLatency(runs = WARM_RUNS) {
  const pixels = padPixels();
  await classify(pixels);
  const infer = [], total = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const p = padPixels();
    const t1 = performance.now();
    await classify(p);
    const t2 = performance.now();
    infer.push(t2 - t1);
    total.push(t2 - t0);
  }
  const r = { runs, inference_ms: median(infer), total_ms: median(total) };
  $("latency").textContent = `warm latency per digit, median of ${runs}: ${r.inference_ms.toFixed(2)} ms inference, ` +
    `${r.total_ms.toFixed(2)} ms with preprocessing`;
  return r;
}
window.measureLatency = measureLatency;

async function start() {
  const bars = $("bars");
  for (let d = 0; d < 10; d++) {
    bars.insertAdjacentHTML("beforeend", `<div>${d}</div><div class="track"><div class="fill" id="fill-${d}"></div>` +
      `</div><div class="muted" id="value-${d}">0.0%</div>`);
  }
  try {
    const info = await (await fetch("model.json")).json();
    session = await ort.InferenceSession.create("model.onnx", { executionProviders: ["wasm"] });
    const acc = info.test_accuracy ? ` · test accuracy ${(100 * info.test_accuracy).toFixed(2)}%` : "";
    $("model-line").textContent = `model ${info.file} (${info.kind})${acc} · onnxruntime-web ${info.onnxruntime_web}`;
    document.body.dataset.ready = "1";
  } catch (e) {
    $("model-line").textContent = `could not load the model: ${e.message}`;
  }
}
start();
