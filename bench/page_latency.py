"""How fast the served page answers a stroke: pointer up to the prediction and every feature map painted.

    python bench/page_latency.py MODEL.pth [--strokes 40] [--data-dir data] [--results bench/results/] [--server]

Starts `mnist-cnn serve` on a free loopback port, opens the page in Debian's headless Chromium (Playwright) and
draws --strokes strokes with the mouse, one after another, each a short line of 12 moves on a fresh pad (Clear
between strokes). For each stroke the page itself measures, with performance.now():

    answered_ms      pointerup -> the page has rendered an answer that includes the whole stroke (bars, the
                     28x28, every feature map written to its canvas); 0 if that was before the pointerup
    frame_ms         pointerup -> the next animation frame after that render (when the browser paints it)
    ink_answered_ms  the stroke's last ink change (its last pointer move) -> that render

and the parts of the answer (see PARTS below). A drawn digit is answered in the page when the server hands it the
weights (GET /api/weights: the page runs the network itself, static/forward.js) and by a request otherwise; the
parts of the path taken are timed, the others are left out (`answered_in_page` counts the strokes answered in the
page). --server refuses the page its weights (the route is blocked in the browser), so every drawing is asked of the
server as on a page without them: both paths, one build.

"Includes the whole stroke": the page stamps every stroke segment (`data-ink-version` on <body>) and every
answer with the version it was made from (`data-shown-version`); an answer to an older version does not count.
Prints the median and p90 of each, with the 1-minute load average before and after (a 2-core machine shared
with other work measures that work too), and writes them with perf/results.py's wrapper.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from serve_load import start_server  # bench/serve_load.py: serve on a free port, wait for /healthz

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
PARTS = ("answered_ms", "frame_ms", "ink_answered_ms", "preprocess_ms", "forward_ms", "request_ms",
         "after_response_ms", "headers_ms", "render_ms", "sent_after_up_ms")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

# runs in the page: capture listeners time each stroke's last ink change and its pointerup; the first answer that
# includes the whole stroke ends it. Each request is followed from the pad version it was made from (fetch,
# Response.json or .arrayBuffer and render wrapped): its toMnist time, send, headers, body read, render, so the
# parts below belong to the answered request itself. An answer made in the page (mnistForward.answer wrapped: the
# forward pass, softmax and the maps quantized) has its toMnist, forward and render times, and no request parts.
# An answer on screen before pointerup counts 0 ms from it.
HOOK = """() => {
  window.__lat = [];
  const reqs = new Map();  // pad version -> {pre, sent, headers, parsed, render, shown}
  let pending = null, pre = 0, fwd = 0, fwdAt = -1, inked = 0;
  const toMnist = mnistPreprocess.toMnist;  // timed: the page's share of each request
  mnistPreprocess.toMnist = (...a) => { const t = performance.now(); const r = toMnist(...a);
                                        pre = performance.now() - t; return r; };
  if (window.mnistForward) {  // the page's own forward pass (forward.js), when it answers drawings itself
    const answer = mnistForward.answer;
    mnistForward.answer = (...a) => { const t = performance.now(); const r = answer(...a);
                                      fwd = performance.now() - t; fwdAt = pad.version; return r; };
  }
  const fetch0 = window.fetch, json0 = Response.prototype.json;
  window.fetch = (url, opts) => {
    if (!String(url).includes('/api/predict')) return fetch0(url, opts);
    const r = { pre, sent: performance.now() };
    reqs.set(pad.version, r);
    return fetch0(url, opts).then((res) => { r.headers = performance.now(); res.__timing = r; return res; });
  };
  const read = (f0) => function () {  // the body read: JSON parsed, or the bytes of a ?binary=true answer
    const r = this.__timing;
    return f0.call(this).then((body) => { if (r) r.parsed = performance.now(); return body; });
  };
  Response.prototype.json = read(json0);
  Response.prototype.arrayBuffer = read(Response.prototype.arrayBuffer);
  const render0 = window.render;
  window.render = (...a) => {
    if (!reqs.has(a[1]) && fwdAt === a[1]) reqs.set(a[1], { pre, forward: fwd, local: true });  // made here
    const t = performance.now(), out = render0(...a), r = reqs.get(a[1]);
    if (r && !r.shown) { r.shown = performance.now(); r.render = r.shown - t; }
    return out;
  };
  const pad_ = document.getElementById('pad');
  for (const ev of ['pointerdown', 'pointermove']) pad_.addEventListener(ev, () => { inked = performance.now(); },
                                                                      true);
  const record = (p, r, t1) => requestAnimationFrame(() => window.__lat.push({
      answered_ms: Math.max(0, t1 - p.t0), frame_ms: performance.now() - p.t0, ink_answered_ms: t1 - p.inked,
      preprocess_ms: r.pre, forward_ms: r.forward, request_ms: r.parsed - r.sent, after_response_ms: t1 - r.parsed,
      headers_ms: r.headers - r.sent, render_ms: r.render, sent_after_up_ms: r.sent - p.t0,
      before_up: t1 <= p.t0, in_page: !!r.local }));
  pad_.addEventListener('pointerup', () => {
    const p = { t0: performance.now(), inked, want: +(document.body.dataset.inkVersion || 0) };
    const shown = +(document.body.dataset.shownVersion || 0);
    if (shown >= p.want) record(p, reqs.get(shown) || {}, (reqs.get(shown) || {}).shown);  // answered already
    else pending = p;
  }, true);
  document.addEventListener('mnist:result', () => {
    const shown = +(document.body.dataset.shownVersion || 0);
    if (!pending || shown < pending.want) return;
    const p = pending, r = reqs.get(shown) || {};
    pending = null;
    record(p, r, performance.now());
  });
}"""
# what each figure is: pointerup (or the stroke's last ink change: ink_answered_ms) to the answer; for the request
# whose answer counts: the page's preprocessing of its drawing, the request from send to its body read (server,
# loopback, parse), of which send to headers, after that until answered (painting), of which inside render(), and
# when it was sent after the pointerup (negative: during the stroke; positive: it waited for an answer in flight);
# for an answer made in the page: its preprocessing, forward pass (with softmax and the maps' quantizing), render


def fail(msg: str):
    print(f"page_latency: {msg}", file=sys.stderr)
    sys.exit(2)


def strokes(page, n: int) -> list[dict]:
    """n strokes, each on a cleared pad; the page's own timings of each."""
    page.evaluate(HOOK)
    box = page.locator("#pad").bounding_box()
    x0, y0, s = box["x"], box["y"], box["width"] / 280
    for k in range(n):
        page.click("#clear")
        y = 60 + (k % 5) * 30
        page.mouse.move(x0 + 60 * s, y0 + y * s)
        page.mouse.down()
        page.mouse.move(x0 + 210 * s, y0 + (y + 80) * s, steps=12)
        page.mouse.up()
        page.wait_for_function(f"window.__lat.length >= {k + 1}", timeout=30_000)
    return page.evaluate("window.__lat")


def load(page, url: str | None, server_only: bool):
    """Open url (None: reload) and wait until the page knows its model and who answers a drawing (data-forward:
    page or server). server_only: /api/weights is refused while the page loads, and only then: a routed page
    sends every request through Playwright's driver, which would slow the requests being timed."""
    if server_only:
        page.route("**/api/weights", lambda route: route.abort())
    page.goto(url) if url else page.reload()
    page.wait_for_function("document.getElementById('model-line').textContent.includes('parameters') "
                           "&& document.body.dataset.forward")
    if server_only:
        page.unroute("**/api/weights")


def summary(values: list[float]) -> dict | None:  # None: no stroke took this path
    s = sorted(values)
    if not s:
        return None
    return {"median": round(statistics.median(s), 2), "p90": round(s[int(0.9 * (len(s) - 1))], 2),
            "min": round(s[0], 2), "max": round(s[-1], 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--strokes", type=int, default=40, help="strokes to time (default 40)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed strokes first (default 3)")
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results") + os.sep,
                    help="file or folder for the JSON (default bench/results/)")
    ap.add_argument("--server", action="store_true", help="refuse the page /api/weights: the server answers")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        fail(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from mnist_cnn.perf.results import model_hashes, write_results

    with tempfile.NamedTemporaryFile("w", prefix="page_latency-", suffix=".log", delete=False) as log:
        proc, base = start_server(args.model, args.data_dir, [], log)
        try:
            load_before = os.getloadavg()[0]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1100, "height": 1000})
                load(page, base + "/", args.server)
                strokes(page, args.warmup)
                load(page, None, args.server)
                timed = strokes(page, args.strokes)
                browser.close()
            load_after = os.getloadavg()[0]
        finally:
            proc.send_signal(2)
            proc.wait(timeout=15)
    out = {key: summary([t[key] for t in timed if t.get(key) is not None and t[key] == t[key]]) for key in PARTS}
    out.update({
           "answered_before_up": sum(t["before_up"] for t in timed),
           "answered_in_page": sum(t.get("in_page", False) for t in timed), "server_only": args.server,
           "per_stroke": timed, "load_average_1min": {"before": load_before, "after": load_after},
           "models_sha256": model_hashes([args.model]), "frame_budget_ms": round(1000 / 60, 1)})
    path = write_results(args.results, "page_latency", out, n=len(timed), n_is="strokes timed")
    print(f"{len(timed)} strokes, load {load_before:.2f} -> {load_after:.2f}; "
          f"{out['answered_before_up']} answered before the pointer went up, {out['answered_in_page']} in the page")
    for key in PARTS:
        if out[key] is None:
            continue
        print(f"  {key:18s} median {out[key]['median']:7.2f}  p90 {out[key]['p90']:7.2f}  "
              f"(min {out[key]['min']:.2f}, max {out[key]['max']:.2f})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
