"""The page's trust behaviours in a real browser (issue 13): a cleared pad shows no answer and asks nothing, a
non-digit shows "not a digit" with the best guess small, number mode reads digit by digit with boxes.

Playwright drives Debian's headless Chromium against a real `mnist-cnn serve` of webutil.tiny_model(trust=True) (a small
model trained with non-digits and calibrated, as `train --augment` makes them).
"""

from pathlib import Path

import pytest
from test_web_browser import CHROMIUM, draw_seven, open_page
from webutil import serve, tiny_model

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, mnist, mnist_dir):
    model = tiny_model(tmp_path_factory.getbasetemp(), mnist, trust=True)
    with serve(Path(model), mnist_dir, tmp_path_factory.mktemp("serve") / "serve.log", startup_s=180) as base:
        yield base


@pytest.fixture(scope="module")
def page(server, chromium):
    """One page in the session's Chromium for the whole module: the tests go on from where the last one left it."""
    page, problems, outside = open_page(chromium, server, 1100, 1000)
    try:
        yield page
    finally:
        page.context.close()
    assert problems == [] and outside == [], (problems, outside)


def answered(page, before: int):
    """Wait for the answer to the finished drawing: a new answer, and none still coming."""
    page.wait_for_function(f"+(document.body.dataset.updates || 0) > {before} && document.body.dataset.busy === '0'",
                           timeout=60000)


def updates(page) -> int:
    return int(page.evaluate("+(document.body.dataset.updates || 0)"))


def test_cleared_pad_shows_nothing_and_sends_nothing(page):
    predicts = []
    page.on("request", lambda r: "/api/predict" in r.url and predicts.append(r.url))
    n = updates(page)
    draw_seven(page)
    answered(page, n)
    assert page.locator("#digit").inner_text() != "?"
    # draw again and clear at once: the answer to the cleared drawing, if one is in flight, is dropped
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 150, box["y"] + 200, steps=4)
    page.mouse.up()
    page.click("#clear")
    sent = len(predicts)
    page.wait_for_timeout(800)  # several debounce periods (120 ms) and a forward pass: anything pending lands
    assert page.locator("#digit").inner_text() == "?" and page.locator("#confidence").inner_text() == \
        "no prediction yet"
    assert page.evaluate("document.body.dataset.prediction") == ""
    assert len(predicts) == sent, "a cleared pad sends no request"
    assert page.locator("#p3").inner_text() == "–"


def test_non_digit_shows_not_a_digit_with_the_best_guess_small(page):
    page.click("#clear")
    n = updates(page)
    box = page.locator("#pad").bounding_box()
    x, y = box["x"], box["y"]
    page.eval_on_selector("#width", "e => { e.value = 40; e.dispatchEvent(new Event('input')); }")
    page.mouse.move(x + 70, y + 70)
    page.mouse.down()
    for k in range(8):  # a solid block, row by row with the widest pen: a blotch, not a digit
        page.mouse.move(x + 210, y + 70 + 20 * k, steps=6)
        page.mouse.move(x + 70, y + 70 + 20 * k, steps=6)
    page.mouse.up()
    answered(page, n)
    page.wait_for_function("document.body.dataset.isDigit !== ''")
    assert page.evaluate("document.body.dataset.isDigit") == "false"
    assert page.locator("#confidence").inner_text() == "not a digit"
    guess = page.locator("#best-guess").inner_text()
    assert guess.startswith("best guess ") and "%" in guess
    assert page.locator("#digit").inner_text() not in "0123456789"
    size = page.eval_on_selector("#best-guess", "e => parseFloat(getComputedStyle(e).fontSize)")
    big = page.eval_on_selector("#digit", "e => parseFloat(getComputedStyle(e).fontSize)")
    assert size < big / 2, "the best guess is small"


def test_number_mode_reads_digit_by_digit_with_boxes(page):
    page.check("#number-mode")
    assert page.eval_on_selector("#pad", "e => e.width") == 840
    n = updates(page)
    box = page.locator("#pad").bounding_box()
    s = box["width"] / 840
    for left in (120, 400, 680):  # three 1s, well apart
        page.mouse.move(box["x"] + left * s, box["y"] + 50 * s)
        page.mouse.down()
        page.mouse.move(box["x"] + (left - 10) * s, box["y"] + 230 * s, steps=10)
        page.mouse.up()
    answered(page, n)
    page.wait_for_function("document.querySelectorAll('#digit-list li').length === 3", timeout=20000)
    assert len(page.locator("#digit").inner_text()) == 3
    inked = page.evaluate("""() => { const c = document.getElementById('boxes');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
    assert inked > 300, "a box is drawn around each digit"
    page.uncheck("#number-mode")
    assert page.eval_on_selector("#pad", "e => e.width") == 280


def test_drawn_digit_is_answered_in_the_page_with_the_servers_numbers(page, server):
    """The page runs the served network itself (forward.js with /api/weights): drawing sends no /api/predict, and
    what it shows is the server's answer for the same 28x28 pixels: probabilities to 1e-4 (float32 both), the
    verdict, every layer's 8-bit maps within 1 of the server's quantization."""
    import base64

    import numpy as np
    from webutil import post_json

    page.click("#clear")
    page.wait_for_function("document.body.dataset.forward === 'page'")
    page.evaluate("document.addEventListener('mnist:result', (e) => { window.__shown = e.detail; })")
    predicts = []
    page.on("request", lambda r: "/api/predict" in r.url and predicts.append(r.url))
    n = updates(page)
    draw_seven(page)
    answered(page, n)
    assert updates(page) > n + 5, "an answer for every change of the pad, not only the stroke's end"
    shown = page.evaluate("""() => { const s = window.__shown, maps = {};
        for (const [k, a] of Object.entries(s.activations)) maps[k] = {shape: a.shape, max: a.max, data: [...a.data]};
        return {...s, activations: maps,
                bars: [...Array(10).keys()].map(d => +document.getElementById('p' + d).dataset.p)}; }""")
    assert predicts == [], "drawing a digit asks the server nothing"
    status, want = post_json(server + "/api/predict", {"pixels": shown["input_28x28"], "activations": True})
    assert status == 200
    assert np.allclose(shown["probabilities"], want["probabilities"], atol=1e-4)
    assert shown["bars"] == shown["probabilities"]  # the bars show this answer
    for key in ("prediction", "best_guess", "label", "is_digit", "number", "trust"):
        assert shown[key] == want[key], key
    assert shown["is_digit"] is not None, "a calibrated model: the page says digit or not"
    for name, maps in want["activations"].items():
        mine = shown["activations"][name]
        server_bytes = np.frombuffer(base64.b64decode(maps["data"]), np.uint8).astype(int)
        assert mine["shape"] == maps["shape"] and np.allclose(mine["max"], maps["max"], atol=2e-4), name
        assert np.abs(np.array(mine["data"]) - server_bytes).max() <= 1, name
