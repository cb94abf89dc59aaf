"""How fast the served page answers a stroke: pointer up to the prediction and every feature map painted.

    python bench/page_latency.py MODEL.pth [--strokes 40] [--data-dir data] [--results bench/results/]

Starts `mnist-cnn serve` on a free loopback port, opens the page in Debian's headless Chromium (Playwright) and
draws --strokes strokes with the mouse, one after another, each a short line of 12 moves on a fresh pad (Clear
between strokes). For each stroke the page itself measures, with performance.now():

    answered_ms   pointerup -> the page has rendered an answer that includes the whole stroke (bars, the 28x28,
                  every feature map written to its canvas)
    frame_ms      pointerup -> the next animation frame after that render (when the browser paints it)

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
PARTS = ("answered_ms", "frame_ms", "preprocess_ms", "request_ms", "after_response_ms")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

# runs in the page: a capture listener times each pointerup to the first answer that includes it
HOOK = """() => {
  window.__lat = [];
  performance.setResourceTimingBufferSize(100000);
  const pad = document.getElementById('pad');
  let pending = null, pre = 0;
  const toMnist = mnistPreprocess.toMnist;  // timed: the page's share of each request
  mnistPreprocess.toMnist = (...a) => { const t = performance.now(); const r = toMnist(...a);
                                        pre = performance.now() - t; return r; };
  pad.addEventListener('pointerup', () => {
    pending = { t0: performance.now(), want: +(document.body.dataset.inkVersion || 0) };
  }, true);
  document.addEventListener('mnist:result', () => {
    if (!pending || +(document.body.dataset.shownVersion || 0) < pending.want) return;
    const p = pending, t1 = performance.now();
    pending = null;
    const req = performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/predict')).pop();
    requestAnimationFrame(() => window.__lat.push({
      answered_ms: t1 - p.t0, frame_ms: performance.now() - p.t0, preprocess_ms: pre,
      request_ms: req.responseEnd - req.startTime, after_response_ms: t1 - req.responseEnd }));
  });
}"""
# what each figure is: the page's preprocessing of the answered drawing, its request from send to the last byte
# (server and loopback), and JSON parsing plus painting after the response

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


def summary(values: list[float]) -> dict:
    s = sorted(values)
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
                page.goto(base + "/")
                page.wait_for_function("document.getElementById('model-line').textContent.includes('parameters')")
                strokes(page, args.warmup)
                page.reload()
                page.wait_for_function("document.getElementById('model-line').textContent.includes('parameters')")
                timed = strokes(page, args.strokes)
                browser.close()
            load_after = os.getloadavg()[0]
        finally:
            proc.send_signal(2)
            proc.wait(timeout=15)
    out = {key: summary([t[key] for t in timed]) for key in PARTS}
    out.update({
           "per_stroke": timed, "load_average_1min": {"before": load_before, "after": load_after},
           "models_sha256": model_hashes([args.model]), "frame_budget_ms": round(1000 / 60, 1)})
    path = write_results(args.results, "page_latency", out, n=len(timed), n_is="strokes timed")
    print(f"{len(timed)} strokes, load {load_before:.2f} -> {load_after:.2f}")
    for key in PARTS:
        print(f"  {key:18s} median {out[key]['median']:7.2f}  p90 {out[key]['p90']:7.2f}  "
              f"(min {out[key]['min']:.2f}, max {out[key]['max']:.2f})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
