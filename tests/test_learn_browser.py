"""The learning views in a real browser (Playwright + Debian's Chromium, a real `mnist-cnn serve`): click a conv1
pixel and check the panel's sum against the model run in Python; teach one step and see the loss fall; another
browser's copy is its own; all of it at phone width. Skipped only without /usr/bin/chromium or playwright."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_web_browser import CHROMIUM, draw_seven, open_page
from webutil import serve, tiny_model

from mnist_cnn import checkpoint
from mnist_cnn.data import normalize

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")

ANSWERED = "document.body.dataset.prediction !== undefined && document.body.dataset.prediction !== ''"
MAPS = ANSWERED + " && document.querySelectorAll('#layer-conv1 canvas').length === 32"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, mnist):
    return tiny_model(tmp_path_factory.getbasetemp(), mnist)


@pytest.fixture(scope="module")
def server(model_path, mnist_dir, tmp_path_factory):
    with serve(Path(model_path), mnist_dir, tmp_path_factory.mktemp("learn") / "serve.log") as base:
        yield base


def explain_requests(page) -> list:
    sent = []
    page.on("request", lambda r: r.url.endswith("/api/explain") and sent.append(r.post_data_json))
    return sent


def test_click_a_conv1_pixel_and_read_its_arithmetic(browser, server, model_path):
    page, problems, outside = open_page(browser, server, 1100, 1000)
    sent = explain_requests(page)
    draw_seven(page)
    page.wait_for_function(MAPS)
    canvas = page.locator("#layer-conv1 canvas").nth(5)  # map 5, drawn at 2 css px per map pixel
    box = canvas.bounding_box()
    canvas.click(position={"x": 14 * box["width"] / 26 + 0.5, "y": 12 * box["height"] / 26 + 0.5})
    page.wait_for_function("document.getElementById('unit-panel').dataset.layer === 'conv1'")
    shown_sum = float(page.locator("#unit-panel").get_attribute("data-sum"))
    body = sent[-1]
    assert body["unit"] == {"layer": "conv1", "channel": 5, "y": 12, "x": 14}
    model, _ = checkpoint.load(model_path)
    x = normalize(torch.tensor(body["pixels"], dtype=torch.uint8)[None])  # (1, 1, 28, 28)
    with torch.no_grad():
        want = float(F.conv2d(x, model.conv1.weight, model.conv1.bias)[0, 5, 12, 14])
    assert shown_sum == pytest.approx(want, abs=1e-4)
    text = page.locator("#unit-panel").inner_text()
    assert f"{want:.4g}" in text or f"{want:.4}" in text or f"{want:#.4g}" in text, text
    # a probability bar opens fc2's unit with the softmax written out
    page.locator('.bar-label[data-digit="7"]').click()
    page.wait_for_function("document.getElementById('unit-panel').dataset.layer === 'fc2'")
    assert "softmax" in page.locator("#unit-panel").inner_text()
    assert not problems, problems
    assert not outside, outside


def teach(page, label: str) -> tuple[float, float]:
    page.locator("#teach-panel summary").click()
    page.select_option("#teach-label", label)
    before = page.locator("#teach-out").get_attribute("data-loss-after")
    page.click("#teach-step")
    page.wait_for_function(f"document.getElementById('teach-out').dataset.lossAfter !== {before!r}"
                           if before else "document.getElementById('teach-out').dataset.lossAfter !== undefined")
    out = page.locator("#teach-out")
    return float(out.get_attribute("data-loss-before")), float(out.get_attribute("data-loss-after"))


def test_teach_one_step_in_one_browser_only(browser, server):
    alice = browser.new_context(viewport={"width": 1100, "height": 1000})
    bob = browser.new_context(viewport={"width": 1100, "height": 1000})
    pages = []
    for ctx in (alice, bob):
        page = ctx.new_page()
        page.goto(server + "/")
        page.wait_for_function("document.getElementById('model-line').textContent.includes('parameters')")
        draw_seven(page)
        page.wait_for_function(ANSWERED)
        pages.append(page)
    a_before, a_after = teach(pages[0], "3")
    assert a_after < a_before  # one step lowers the loss on that drawing
    pages[0].click("#teach-step")  # a second step on alice's copy starts where the first ended
    pages[0].wait_for_function(f"+document.getElementById('teach-out').dataset.lossBefore < {a_before}")
    b_before, _ = teach(pages[1], "3")  # bob's copy is the served model: alice's steps are not in it
    assert b_before == pytest.approx(a_before, rel=1e-6)
    for ctx in (alice, bob):
        ctx.close()


def test_learning_views_fit_a_phone(browser, server):
    page, problems, _ = open_page(browser, server, 375, 800)
    draw_seven(page)
    page.wait_for_function(MAPS)
    page.locator("#guide button").first.click()  # softmax: fc2's unit for the predicted digit
    page.wait_for_function("document.getElementById('unit-panel').dataset.layer === 'fc2'")
    teach(page, "7")
    page.locator("#shapes-panel summary").click()
    page.fill("#s-kernel_size", "12")
    page.locator("#s-kernel_size").dispatch_event("change")
    page.wait_for_function("document.getElementById('shapes-out').textContent.includes('larger than')")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert [p for p in problems if "422" not in p] == [], problems  # the refused kernel is a 422, shown as text
