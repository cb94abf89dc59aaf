"""The page in a real browser: Playwright drives Debian's headless Chromium against a real `mnist-cnn serve`.

It draws a 7 with the mouse, waits for the bars, and checks what a person would see. Skipped (with the reason)
only when /usr/bin/chromium or the playwright package is missing; .ci/run installs both.

The screenshot in README.md and docs/web.md is this test run on the real model:
    MNIST_CNN_WEB_MODEL=mnist_cnn_model.pth MNIST_CNN_WEB_SHOT=docs/web.png pytest tests/test_web_browser.py
"""

import os
import time
from pathlib import Path

import pytest
from conftest import CHROMIUM, ROOT, run_cli
from webutil import serve

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, mnist_dir):
    """A server with a model trained here as a user would (`train --recipe fast` on 12k digits: a few seconds,
    ~97% test accuracy), so that a drawn 7 must read as 7; or the model in MNIST_CNN_WEB_MODEL."""
    model = os.environ.get("MNIST_CNN_WEB_MODEL")
    if not model:
        model = tmp_path_factory.mktemp("model") / "fast.pth"
        proc = run_cli("train", "--recipe", "fast", "--train-subset", "12000", "--threads", "1", "--seed", "0",
                       "--quiet", "--out", model, "--data-dir", mnist_dir)
        assert proc.returncode == 0, proc.stderr
    with serve(Path(model), mnist_dir, tmp_path_factory.mktemp("serve") / "serve.log") as base:
        yield base


def open_page(browser, base, width, height, slow_script=None):
    """The page at this size, loaded; slow_script: a static file held back 0.3 s, as on a slow network."""
    page = browser.new_page(viewport={"width": width, "height": height})
    if slow_script:
        page.route(f"**/static/{slow_script}", lambda route: (time.sleep(0.3), route.continue_()))
    problems, outside = [], []
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.request.method} {r.url}: "
                                                                      f"{r.text()[:200]}"))
    page.on("request", lambda r: r.url.startswith(base) or outside.append(r.url))
    page.goto(base + "/")
    page.wait_for_function("document.getElementById('model-line').textContent.includes('parameters')")
    return page, problems, outside


def draw_seven(page):
    """A 7 as a person draws it: the top bar left to right, then down to the lower left, in small mouse steps."""
    box = page.locator("#pad").bounding_box()
    x0, y0, s = box["x"], box["y"], box["width"] / 280
    page.mouse.move(x0 + 70 * s, y0 + 60 * s)
    page.mouse.down()
    page.mouse.move(x0 + 205 * s, y0 + 58 * s, steps=12)
    page.mouse.move(x0 + 120 * s, y0 + 235 * s, steps=16)
    page.mouse.up()


def shown(page) -> tuple[str, list[float], list[str]]:
    """The predicted digit, the 10 probabilities behind the bars, and the bars' widths as drawn."""
    # one read of the whole page: answers keep landing after a stroke, and ten separate reads could mix two of them
    digit, probs, widths = page.evaluate("""() => [document.getElementById('digit').innerText,
        [...Array(10).keys()].map(d => parseFloat(document.getElementById('p' + d).dataset.p)),
        [...document.querySelectorAll('.bar-fill')].map(e => e.style.width)]""")
    return digit, probs, widths


def test_draw_a_digit_and_see_the_prediction(browser, server, tmp_path):
    page, problems, outside = open_page(browser, server, 1100, 1000)
    assert page.locator("#digit").inner_text() == "?"
    draw_seven(page)
    page.wait_for_function("document.body.dataset.prediction !== undefined && document.body.dataset.prediction "
                           "!== '' && document.querySelectorAll('#layer-conv2 canvas').length === 64")
    digit, probs, widths = shown(page)
    assert digit in "0123456789" and len(digit) == 1
    assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-3 and probs.index(max(probs)) == int(digit)
    assert widths[int(digit)] != "0px" and len(widths) == 10
    labels = page.locator(".bar-label").all_inner_texts()
    assert labels == [str(d) for d in range(10)]
    # the 28x28 the network saw has ink, and every layer's feature maps are drawn
    ink = page.evaluate("(() => { const d = document.getElementById('seen').getContext('2d')"
                        ".getImageData(0, 0, 28, 28).data; let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i];"
                        " return s; })()")
    assert ink > 255 * 20
    counts = {name: page.locator(f"#layer-{name} canvas").count() for name in ("conv1", "pool1", "conv2", "pool2")}
    assert counts == {"conv1": 32, "pool1": 32, "conv2": 64, "pool2": 64}
    assert digit == "7", probs  # a trained model reads the drawn 7 as a 7
    page.screenshot(path=tmp_path / "drawn.png", full_page=True)
    assert (tmp_path / "drawn.png").stat().st_size > 10_000
    if shot := os.environ.get("MNIST_CNN_WEB_SHOT"):
        page.screenshot(path=shot, full_page=True)

    # clear resets; a random test digit shows its true label
    page.click("#clear")
    assert page.locator("#digit").inner_text() == "?"
    page.click("#sample")
    page.wait_for_function("document.getElementById('truth').textContent.includes('true label')")
    assert page.locator("#digit").inner_text() in "0123456789"
    assert not problems, problems
    assert not outside, f"the page fetched from outside the server: {outside}"


def test_phone_width(browser, server, tmp_path):
    """375 px wide (an iPhone SE): one column, no sideways scrolling, and drawing still works."""
    page, problems, _ = open_page(browser, server, 375, 800)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    draw_seven(page)
    page.wait_for_function("document.body.dataset.prediction !== undefined && document.body.dataset.prediction "
                           "!== ''")
    assert abs(sum(shown(page)[1]) - 1) < 1e-3
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=tmp_path / "phone.png", full_page=True)
    assert not problems, problems


def test_without_weights_a_drawing_is_asked_of_the_server(browser, server):
    """A page that gets no weights (as from an ONNX server: /api/weights is 404) answers drawn digits through
    /api/predict, as before the page ran the network itself."""
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    page.route("**/api/weights", lambda route: route.fulfill(status=404, content_type="application/json",
                                                              body='{"detail": "no weights here"}'))
    predicts = []
    page.on("request", lambda r: "/api/predict" in r.url and predicts.append(r.url))
    page.goto(server + "/")
    page.wait_for_function("document.body.dataset.forward === 'server'")
    draw_seven(page)
    page.wait_for_function("document.body.dataset.prediction !== undefined && document.body.dataset.prediction "
                           "!== '' && document.body.dataset.busy === '0'")
    assert predicts and page.locator("#digit").inner_text() == "7"


def test_upload_an_image(browser, server, tmp_path, mnist):
    import numpy as np
    from PIL import Image

    digit = 255 - np.kron(mnist.test_images[1].numpy(), np.ones((5, 5), np.uint8))  # dark on light, 140x140
    Image.fromarray(digit).save(tmp_path / "two.png")
    page, problems, _ = open_page(browser, server, 1100, 1000)
    page.set_input_files("#upload", str(tmp_path / "two.png"))
    page.wait_for_function("document.getElementById('truth').textContent.includes('two.png')")
    assert page.locator("#digit").inner_text() == str(int(mnist.test_labels[1]))
    assert not problems, problems


def fashion_model(path: Path) -> Path:
    """A Fashion-MNIST checkpoint: one pass over 1,200 training images with one torch thread (~1 s alone; a
    few seconds on the shared machine), recording the dataset and its class names as `train --dataset` does."""
    import torch
    import torch.nn.functional as F

    from mnist_cnn import checkpoint
    from mnist_cnn.data import load_dataset, normalize
    from mnist_cnn.model import Net

    fashion = load_dataset("fashion-mnist", ROOT / "data", quiet=True, fetch=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for i in range(0, 1200, 100):
        loss = F.cross_entropy(model(normalize(fashion.train_images[i:i + 100])), fashion.train_labels[i:i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    checkpoint.save(path, model.eval(), {"epochs": 1, "subset": 1200}, [{"epoch": 1, "note": "tests' Fashion model"}],
                    dataset=fashion.describe())
    return path


def test_a_fashion_model_names_its_classes_and_offers_test_images(browser, tmp_path):
    """A model trained on Fashion-MNIST: the page names the classes, hides the drawing (a drawn sneaker is not
    what the model saw: its test images are), and a clicked test image is classified with its name."""
    from mnist_cnn.data import SOURCES

    if not (ROOT / "data" / "FashionMNIST").is_dir():
        pytest.skip("no Fashion-MNIST in ./data (`mnist-cnn data --dataset fashion-mnist`)")
    names = list(SOURCES["fashion-mnist"].classes)
    with serve(fashion_model(tmp_path / "fashion.pth"), ROOT / "data", tmp_path / "serve.log") as base:
        # a phone, too; learn.js arrives after /api/model has answered, and still names the classes
        page, problems, outside = open_page(browser, base, 390, 900, slow_script="learn.js")
        page.wait_for_selector("#gallery canvas")
        assert page.locator(".bar-label").all_inner_texts() == names
        assert not page.locator("#number-mode").is_visible() and not page.locator("#width").is_visible()
        assert page.locator("#gallery canvas").count() == 24
        thumb = page.locator("#gallery canvas").nth(2)
        index, title = int(thumb.get_attribute("data-index")), thumb.get_attribute("title")
        thumb.click()
        page.wait_for_function("document.getElementById('truth').textContent.includes('true label')")
        _, probs, _ = shown(page)
        assert page.locator("#digit").inner_text() == names[probs.index(max(probs))]
        truth = page.locator("#truth").inner_text()
        assert f"#{index}" in truth and title.split(": ")[1] in truth  # the true class, by name
        assert page.locator("#teach-label option").all_text_contents() == names
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert not problems, problems
        assert not outside, outside
