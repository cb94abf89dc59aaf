// Learning views on the page: click any unit to see its arithmetic (POST /api/explain), teach the model one
// step on your drawing (POST /api/teach, a private copy per browser), the tutorial's questions as a guide, and
// the output-size arithmetic of a network you configure (GET /api/shapes). Every number shown comes from the
// server's model; this file only formats it (4 significant digits).
"use strict";

(() => {
const $ = (id) => document.getElementById(id);
const fmt = (v) => (Math.abs(v) < 1e-12 ? "0" : Number(v).toPrecision(4));
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
let names = [...Array(10).keys()].map(String);  // class k's name (the model's, from /api/model)
let last = null;  // the latest /api/predict answer: its input_28x28 is what every view below explains

document.addEventListener("mnist:result", (ev) => { last = ev.detail; $("learn-hint").hidden = true; });
document.addEventListener("mnist:clear", () => { last = null; $("learn-hint").hidden = false; });
document.addEventListener("mnist:model", (ev) => {  // the model's class names for "It is a ..."
  if (!ev.detail.classes) return;
  names = ev.detail.classes;
  if (names.every((c, d) => c === String(d))) return;  // digits: the options in index.html
  $("teach-label").replaceChildren(...names.map((name, k) => new Option(name, String(k))));
});

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const out = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${res.status}: ${out.detail || res.statusText}`);
  return out;
}

function grid(rows, cls = "", mark = null) {  // a 2-D array as a small table of numbers
  return `<table class="nums ${cls}">` + rows.map((row, i) => "<tr>" + row.map((v, j) =>
    `<td${mark && mark[0] === i && mark[1] === j ? ' class="won"' : ""}>${fmt(v)}</td>`).join("") + "</tr>").join("")
    + "</table>";
}

// ---------------------------------------------------------------------------------------------------------------
// click a unit, see its arithmetic

async function explainUnit(unit) {
  if (!last) return;
  const panel = $("unit-panel");
  panel.hidden = false;
  panel.querySelector(".body").textContent = "computing…";
  try {
    const u = await api("/api/explain", { pixels: last.input_28x28, unit });
    panel.querySelector(".body").innerHTML = render(u);
    panel.dataset.layer = u.layer;
    panel.dataset.sum = u.sum === undefined ? u.value : u.sum;  // for tests and scripts
    panel.scrollIntoView({ block: "nearest" });
  } catch (e) {
    panel.querySelector(".body").textContent = e.message;
  }
}

function render(u) {
  if (u.layer === "conv1" || u.layer === "conv2") return renderConv(u);
  if (u.layer === "pool1" || u.layer === "pool2") return renderPool(u);
  return renderLinear(u);
}

function renderConv(u) {
  const head = `<h3>${u.layer} map ${u.channel}, row ${u.y}, column ${u.x}</h3>`;
  const tail = `<p class="sum">sum of products ${fmt(u.sum - u.bias)} + bias ${fmt(u.bias)} = <b>${fmt(u.sum)}</b>;
    after ReLU max(0, ${fmt(u.sum)}) = <b>${fmt(u.relu)}</b> <span class="muted">(the layer computed
    ${fmt(u.model)})</span></p>`;
  if (u.layer === "conv1") {
    return head + `<div class="steps">
      <div><h4>pixels drawn</h4>${grid(u.patch_pixels)}</div>
      <div><h4>normalised (p/255−0.5)/0.5</h4>${grid(u.patch[0])}</div>
      <div><h4>× kernel ${u.channel}</h4>${grid(u.kernel[0])}</div>
      <div><h4>= products</h4>${grid(u.products[0])}</div></div>` + tail;
  }
  const rows = u.top_channels.map((t) => `<tr><td>pool1 map ${t.channel}</td><td>${fmt(t.sum)}</td></tr>`).join("");
  const c = u.top_channels[0].channel;
  return head + `<p>conv2 looks at all ${u.patch.length} pool1 maps: one 3×3 patch × kernel slice per map, each
    summed. The strongest contributions:</p><table class="nums wide-table"><tr><th>input</th><th>3×3 sum</th></tr>
    ${rows}</table><div class="steps"><div><h4>pool1 map ${c} patch</h4>${grid(u.patch[c])}</div>
    <div><h4>× kernel slice</h4>${grid(u.kernel[c])}</div><div><h4>= products</h4>${grid(u.products[c])}</div></div>`
    + tail;
}

function renderPool(u) {
  return `<h3>${u.layer} map ${u.channel}, row ${u.y}, column ${u.x}</h3>
    <p>Max-pooling keeps the largest value of a 2×2 window of ${u.input} (rows ${u.window_origin[0]}–
    ${u.window_origin[0] + u.window.length - 1}, columns ${u.window_origin[1]}–${u.window_origin[1] +
    u.window[0].length - 1}); it has no weights to learn.</p>${grid(u.window, "", u.winner)}
    <p class="sum">max = <b>${fmt(u.value)}</b> <span class="muted">(the layer computed ${fmt(u.model)})</span></p>`;
}

function renderLinear(u) {
  const rows = u.top.map((t) => `<tr><td>${esc(t.name)}</td><td>${fmt(t.value)}</td><td>× ${fmt(t.weight)}</td>
    <td>= ${fmt(t.product)}</td></tr>`).join("");
  let out = `<h3>${u.layer} unit ${u.index}</h3><p>${u.inputs} inputs, each times its weight, summed, plus a bias.
    The largest products:</p><table class="nums wide-table"><tr><th>input</th><th>value</th><th>weight</th>
    <th>product</th></tr>${rows}<tr><td colspan="3">the other ${u.rest_count}</td><td>= ${fmt(u.rest_sum)}</td></tr>
    <tr><td colspan="3">bias</td><td>${fmt(u.bias)}</td></tr></table>
    <p class="sum">sum = <b>${fmt(u.sum)}</b>`;
  if (u.layer === "fc1") return out + `; after ReLU <b>${fmt(u.relu)}</b></p>`;
  const s = u.softmax;
  const srows = s.logits.map((z, d) => `<tr${d === u.index ? ' class="won"' : ""}><td>${esc(names[d] ?? d)}</td>
    <td>${fmt(z)}</td>
    <td>${fmt(s.exp[d])}</td><td>${fmt(s.probabilities[d])}</td></tr>`).join("");
  return out + ` = the logit z<sub>${u.index}</sub></p><h4>softmax: e<sup>z</sup> / Σ e<sup>z</sup></h4>
    <table class="nums wide-table"><tr><th>class</th><th>z</th><th>e<sup>z</sup></th><th>probability</th></tr>
    ${srows}<tr><td colspan="2">total</td><td>${fmt(s.total)}</td><td>1</td></tr></table>`;
}

$("maps").addEventListener("click", (ev) => {  // a feature-map pixel -> its (layer, channel, y, x)
  const canvas = ev.target.closest("canvas"), block = ev.target.closest(".layer");
  if (!canvas || !block) return;
  const layer = block.id.replace("layer-", ""), r = canvas.getBoundingClientRect();
  const x = Math.min(canvas.width - 1, Math.floor((ev.clientX - r.left) * canvas.width / r.width));
  const y = Math.min(canvas.height - 1, Math.floor((ev.clientY - r.top) * canvas.height / r.height));
  if (layer === "fc1") return explainUnit({ layer, index: x });
  explainUnit({ layer, channel: [...canvas.parentNode.children].indexOf(canvas), y, x });
});
$("bars").addEventListener("click", (ev) => {  // a digit's bar -> fc2's unit for that digit, with softmax
  const d = ev.target.closest("[data-digit]");
  if (d) explainUnit({ layer: "fc2", index: +d.dataset.digit });
});
$("unit-close").addEventListener("click", () => { $("unit-panel").hidden = true; });

// ---------------------------------------------------------------------------------------------------------------
// teach it one step

function paintHeat(canvas, rows) {  // rows of values, |v| scaled to the largest: white = most
  const h = rows.length, w = rows[0].length, top = Math.max(...rows.flat().map(Math.abs)) || 1;
  canvas.width = w; canvas.height = h;
  const c = canvas.getContext("2d"), img = c.createImageData(w, h);
  rows.flat().forEach((v, i) => {
    const a = Math.round(255 * Math.abs(v) / top);
    img.data.set(v >= 0 ? [a, a, a, 255] : [a, Math.round(a * 0.4), Math.round(a * 0.4), 255], 4 * i);
  });
  c.putImageData(img, 0, 0);
}

async function teach() {
  if (!last) return ($("teach-out").textContent = "Draw something first.");
  const body = { pixels: last.input_28x28, label: +$("teach-label").value, zero_grad: $("teach-zero").checked,
                 train_mode: $("teach-train").checked, lr: +$("teach-lr").value };
  try {
    const t = await api("/api/teach", body);
    const u = t.update, p = (v) => (100 * v).toFixed(1) + "%";
    $("teach-out").innerHTML = `<p>step ${t.steps}: loss on your drawing <b>${fmt(t.loss_before)}</b> →
      <b id="loss-after">${fmt(t.loss_after)}</b>; P(${t.label}) ${p(t.probabilities_before[t.label])} →
      ${p(t.probabilities_after[t.label])}</p>
      <p>gradients summed in .grad: ${t.backwards_in_grad} backward pass${t.backwards_in_grad > 1 ? "es" : ""}
      (norm ${fmt(t.grad_norm)})${t.zero_grad ? "" : " — zero_grad() was skipped, so they add up"}.</p>
      <p>${esc(u.param)}: new = old − lr × grad = ${fmt(u.old)} − ${fmt(u.lr)} × ${fmt(u.grad)} = ${fmt(u.new)}</p>
      <p class="muted">train() vs eval() outputs differ by at most ${fmt(t.train_eval_max_diff)}: ${
        t.train_eval_max_diff === 0 ? "this network has no dropout or batch norm, so the mode changes nothing"
                                    : "dropout is active in train()"}.</p>`;
    $("teach-out").dataset.lossBefore = t.loss_before;
    $("teach-out").dataset.lossAfter = t.loss_after;
    paintHeat($("saliency"), t.saliency);
    paintHeat($("fc2-grad"), t.fc2_grad);
    $("teach-figs").hidden = false;
  } catch (e) {
    $("teach-out").textContent = e.message;
  }
}

$("teach-step").addEventListener("click", teach);
$("teach-reset").addEventListener("click", async () => {
  await api("/api/teach/reset", {}).catch(() => null);
  $("teach-out").textContent = "Your copy is gone: the next step starts again from the served model.";
  $("teach-figs").hidden = true;
});

// ---------------------------------------------------------------------------------------------------------------
// output sizes of a network you configure

async function shapes() {
  const q = new URLSearchParams();
  for (const k of ["kernel_size", "pool_kernel", "pool_stride", "c1", "c2", "fc_units"]) q.set(k, $("s-" + k).value);
  const out = $("shapes-out");
  try {
    const s = await api("/api/shapes?" + q);
    out.innerHTML = `<table class="nums wide-table"><tr><th>layer</th><th>output</th><th>formula</th><th>params</th>
      </tr>${s.layers.map((l) => `<tr><td>${l.name}</td><td>${l.output_shape.join("×")}</td><td>${esc(l.formula)}
      </td><td>${l.params.toLocaleString("en")}</td></tr>`).join("")}<tr><td colspan="3">total</td>
      <td>${s.params.toLocaleString("en")}</td></tr></table>`;
    out.dataset.params = s.params;
  } catch (e) {
    out.textContent = e.message;
    out.dataset.params = "";
  }
}
for (const el of document.querySelectorAll("#shapes-form input")) el.addEventListener("change", shapes);

// ---------------------------------------------------------------------------------------------------------------
// the tutorial's questions, each answered by a live view

function strongest(layer) {  // the brightest unit of a layer in the latest answer
  const a = last && last.activations && last.activations[layer];
  if (!a) return { layer, channel: 0, y: 0, x: 0 };
  const [, h, w] = a.shape, channel = a.max.indexOf(Math.max(...a.max));
  const data = a.data, off = channel * h * w;  // bytes (app.js readAnswer)
  let best = 0;
  for (let i = 1; i < h * w; i++) if (data[off + i] > data[off + best]) best = i;
  return { layer, channel, y: Math.floor(best / w), x: best % w };
}

const GUIDE = [
  ["What does softmax do?", "Click to see the logits of your drawing, e^z of each, their total and each share. "
    + "(The tutorial rounds its own example wrongly: softmax([2.0, 1.0, 0.5]) = [0.6285, 0.2312, 0.1402].)",
    () => explainUnit({ layer: "fc2", index: last ? last.best_guess ?? last.prediction ?? 0 : 0 })],
  ["Which digit does it predict, and why 10 outputs?", "The predicted digit is the largest probability (argmax). "
    + "fc2 has one output per class, so 10 outputs means 10 classes: the row for the winner is highlighted.",
    () => explainUnit({ layer: "fc2", index: last ? last.best_guess ?? last.prediction ?? 0 : 0 })],
  ["Do we choose the filters' numbers?", "No: we choose their size and count; the values are learned. Here is "
    + "one learned 3×3 kernel at work. Teach a step below and its numbers change (in your copy only).",
    () => explainUnit(strongest("conv1"))],
  ["What do ToTensor and Normalize do to a pixel?", "The patch under conv1's strongest unit: the 0–255 pixels "
    + "you drew, then (p/255 − 0.5)/0.5, the values in −1..1 the network actually sees.",
    () => explainUnit(strongest("conv1"))],
  ["How does a 3×3 kernel work on a 28×28 image?", "One output of conv1: the 3×3 patch × the kernel, nine "
    + "products summed, plus the bias. Click any conv map pixel to slide the kernel elsewhere.",
    () => explainUnit(strongest("conv1"))],
  ["What does max-pooling keep?", "One pool1 output: the 2×2 window of conv1 it looked at and which value won. "
    + "No weights: nothing here is learned.", () => explainUnit(strongest("pool1"))],
  ["Why more filters deeper (32 → 64)?", "A conv2 unit sums evidence from all 32 pool1 maps: see which ones "
    + "pushed it most. Parameter counts per layer are in the shapes table below.",
    () => explainUnit(strongest("conv2"))],
  ["How is the output size computed?", "floor((W − K + 2P)/S) + 1, for conv and pool alike. The tutorial's "
    + "“Input/Stride” gives 5.5 for pool2; the real size is floor((11 − 2)/2) + 1 = 5. Change the numbers below.",
    () => { $("shapes-panel").open = true; shapes(); }],
  ["What does fc1 do with the flattened maps?", "One fc1 unit: the 1600 pool2 values × its weights; the largest "
    + "products listed.", () => explainUnit({ layer: "fc1", index: 0 })],
  ["What are a loss and a gradient?", "Teach it below: the cross-entropy loss on your drawing before and after "
    + "one step, the gradient on every input pixel and on fc2's weights.", () => { $("teach-panel").open = true; }],
  ["Batches and optimizers?", "Training averages the loss over a batch (64 images in the tutorial) and the "
    + "optimizer moves every weight against its gradient. Here the batch is your one drawing and the optimizer "
    + "is plain SGD, so new w = old w − lr × grad can be read off.", () => { $("teach-panel").open = true; }],
  ["What does zero_grad() do?", "Untick zero_grad and teach twice: the gradients of both steps add up in .grad.",
    () => { $("teach-panel").open = true; $("teach-zero").checked = false; }],
  ["train() or eval()?", "Toggle train mode and teach: this network has no dropout or batch norm, so the "
    + "outputs are identical either way.", () => { $("teach-panel").open = true; }],
];

function buildGuide() {
  const list = $("guide");
  GUIDE.forEach(([q, a, show], i) => {
    const item = document.createElement("li");
    item.innerHTML = `<button type="button" data-q="${i}">${esc(q)}</button><p class="muted">${esc(a)}</p>`;
    item.querySelector("button").addEventListener("click", () => {
      if (!last) return ($("learn-hint").textContent = "Draw a digit first: every answer uses your drawing.");
      show();
    });
    list.appendChild(item);
  });
}

buildGuide();
shapes();
})();
