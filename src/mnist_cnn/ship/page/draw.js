// The drawing pad both pages share (the served page, /static/draw.js, and the static page `export --web` writes):
// white strokes on a black canvas from pointer events, which cover mouse, touch and pen alike.
//
//   const pad = drawPad(canvas, { width: () => 22, changed: () => ..., ended: () => ... });
//   pad.clear()      black again, nothing drawn
//   pad.inked        anything drawn (or put) since the last clear
//   pad.version      bumped by every change (a stroke segment, a clear, an image put on it): an answer made from
//                    an older version is out of date; mirrored in <body data-ink-version> for tests and benches
//   pad.drawing      a stroke is under way (pointer down)
//   pad.pixels()     the canvas's RGBA bytes (for preprocess.js)
//   pad.put(img)     draw an image over the whole pad (a test digit, an upload) and mark it inked
"use strict";

function drawPad(canvas, { width, changed = () => {}, ended = () => {} }) {
  const ctx = canvas.getContext("2d", { willReadFrequently: true });  // read back on every stroke
  let last = null;
  const pad = { canvas, ctx, inked: false, drawing: false, version: 0 };

  function bump() { pad.version++; document.body.dataset.inkVersion = String(pad.version); }

  pad.clear = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    pad.inked = false;
    bump();
  };

  pad.pixels = () => ctx.getImageData(0, 0, canvas.width, canvas.height).data;

  pad.put = (image) => {
    pad.clear();
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    pad.inked = true;
    bump();
  };

  function at(ev) {  // event -> canvas coordinates, whatever size CSS gives the canvas
    const r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
  }

  function stroke(from, to) {
    Object.assign(ctx, { strokeStyle: "#fff", lineWidth: width(), lineCap: "round", lineJoin: "round" });
    ctx.beginPath();
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0], to[1]);
    ctx.stroke();
    pad.inked = true;
    bump();
  }

  canvas.addEventListener("pointerdown", (ev) => {
    ev.preventDefault();
    canvas.setPointerCapture(ev.pointerId);
    pad.drawing = true;
    last = at(ev);
    stroke(last, last);  // a tap leaves a dot
    changed();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!pad.drawing) return;
    const p = at(ev);
    stroke(last, p);
    last = p;
    changed();
  });
  for (const end of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(end, () => { pad.drawing = false; ended(); });
  }
  pad.clear();
  return pad;
}
