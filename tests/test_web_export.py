"""`mnist-cnn export --web DIR`: preprocess.js gives the server's 28x28 bytes exactly, and the static page, served
by a plain static file server with every non-local request blocked, reads a 7 drawn with the mouse in Chromium."""

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_trust import on_paper
from webutil import free_port, get

from mnist_cnn.predict.preprocess import to_mnist
from mnist_cnn.ship.web import ORT_FILES

PREPROCESS_JS = Path(__file__).resolve().parents[1] / "src/mnist_cnn/ship/page/preprocess.js"
CHROMIUM = Path("/usr/bin/chromium")
HARNESS = """
const p = require(process.argv[1]);
const items = JSON.parse(require('fs').readFileSync(0, 'utf8'));
console.log(JSON.stringify(items.map((it) => {
  try { return Buffer.from(p.toMnist(Buffer.from(it.rgba, 'base64'), it.w, it.h)).toString('base64'); }
  catch (e) { return 'error: ' + e.message; }
})));
"""


def drawings(mnist) -> dict:
    """Each path through the pipeline: an opaque canvas, dark ink on paper, a transparent canvas, a tiny image
    (enlarged), uneven lit paper with noise, a hairline pen (thickened), MNIST digits, a blank page, and issue
    13's ink detection: small, thin, light digits on tinted noisy (JPEG) paper, and such paper with no digit."""
    def canvas(size, bg, lines, ink, width):
        im = Image.new("RGBA", size, bg)
        for line in lines:
            ImageDraw.Draw(im).line(line, fill=ink, width=width, joint="curve")
        return im

    black, white = (0, 0, 0, 255), (255, 255, 255, 255)
    out = {"canvas 7": canvas((280, 280), black, [[(70, 60), (205, 58), (120, 235)]], white, 18),
           "canvas 1": canvas((280, 280), black, [[(140, 30), (140, 250)]], white, 22),
           "tiny 1": canvas((10, 12), black, [[(5, 1), (5, 10)]], white, 2),
           "hairline 7": canvas((400, 400), white, [[(150, 80), (250, 80), (180, 330)]], black, 2),
           "transparent 0": Image.new("RGBA", (300, 300), (0, 0, 0, 0)),
           "blank": Image.new("RGBA", (50, 50), white)}
    ImageDraw.Draw(out["transparent 0"]).ellipse([90, 40, 210, 260], outline=black, width=12)
    three = Image.new("RGBA", (200, 150), (245, 240, 230, 255))
    ImageDraw.Draw(three).arc([40, 10, 120, 75], 180, 90, fill=(20, 20, 60, 255), width=7)
    ImageDraw.Draw(three).arc([40, 70, 130, 140], 270, 180, fill=(20, 20, 60, 255), width=7)
    out["paper 3"] = three
    rng = np.random.default_rng(0)
    paper = np.linspace(150, 230, 320)[None, :] * np.ones((240, 1)) + rng.normal(0, 4, (240, 320))
    photo = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGBA")
    ImageDraw.Draw(photo).line([(100, 40), (160, 30), (120, 200), (200, 200)], fill=(40, 40, 40, 255), width=9)
    out["photo 2"] = photo
    light = "/usr/share/fonts/truetype/dejavu/DejaVuSans-ExtraLight.ttf"
    out["thin light 1"] = on_paper("1", 50, (300, 300), (150, 120), (225, 225, 225), (120, 120, 120), 6, 60, light)
    out["small 3"] = on_paper("3", 30, (300, 300), (255, 250), (210, 200, 180), (90, 80, 70), 4, 70)
    out["blank noisy paper"] = on_paper(" ", 30, (300, 300), noise=6, jpeg=60)
    for name in ("thin light 1", "small 3", "blank noisy paper"):
        out[name] = out[name].convert("RGBA")  # what a canvas hands preprocess.js
    for i in range(3):
        out[f"mnist {i}"] = Image.fromarray(mnist.test_images[i].numpy()).convert("RGBA")
    return out


@pytest.mark.skipif(not shutil.which("node"), reason="no node to run preprocess.js outside the browser")
def test_preprocess_js_gives_the_servers_bytes(mnist):
    images = drawings(mnist)
    payload = [{"w": im.width, "h": im.height, "rgba": base64.b64encode(np.asarray(im).tobytes()).decode()}
               for im in images.values()]
    run = subprocess.run(["node", "-e", HARNESS, PREPROCESS_JS], input=json.dumps(payload), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for (name, im), got in zip(images.items(), json.loads(run.stdout), strict=True):
        if name.startswith("blank"):
            assert got.startswith("error: no ink found"), got
            continue
        js = np.frombuffer(base64.b64decode(got), np.uint8).reshape(28, 28)
        assert np.array_equal(js, to_mnist(im)), name


@pytest.fixture()
def static_server(exported):
    """`python -m http.server` on the exported folder: a plain static file server, no app code."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d",
                             exported["web"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                get(base + "/model.json", timeout=2)
                break
            except OSError:
                time.sleep(0.1)  # readiness polling, not a timing assertion
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_export_writes_only_the_needed_files(exported):
    files = sorted(str(p.relative_to(exported["web"])) for p in exported["web"].rglob("*") if p.is_file())
    assert files == sorted(["index.html", "page.js", "preprocess.js", "draw.js", "model.onnx", "model.json",
                            *(f"ort/{name}" for name in ORT_FILES)])
    html = (exported["web"] / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    assert (exported["web"] / "model.onnx").read_bytes() == exported["int8"].read_bytes()  # --quantize: int8


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")
def test_static_page_reads_a_drawn_seven_offline(exported, static_server, browser):
    from test_web_browser import draw_seven

    page = browser.new_page()
    problems, outside = [], []
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))

    def only_local(route):  # the network is blocked: anything not from the static server is aborted
        if route.request.url.startswith(static_server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(static_server + "/")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=120_000)
    draw_seven(page)
    page.wait_for_function("document.getElementById('digit').textContent !== '?'")
    page.wait_for_timeout(300)  # let the last stroke's prediction land
    assert page.locator("#digit").inner_text() == "7"
    latency = page.evaluate("measureLatency(30)")
    print(f"\nin-page warm latency per digit (median of {latency['runs']}): {latency['inference_ms']:.2f} ms "
          f"inference, {latency['total_ms']:.2f} ms with preprocessing")
    assert latency["runs"] == 30 and latency["inference_ms"] > 0
    assert not problems, problems
    assert not outside, f"the page asked for something outside its folder: {outside}"
