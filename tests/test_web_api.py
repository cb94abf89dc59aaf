"""The web API through FastAPI's TestClient: right answers for good input, 4xx with a message for bad input,
413 past 2 MB however the body arrives, never a 5xx for anything a client can send."""

import base64
import io
import json
import logging
import shutil
import subprocess
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from webutil import tiny_model

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from mnist_cnn.data import normalize  # noqa: E402
from mnist_cnn.serve.app import STATIC, create_app  # noqa: E402
from mnist_cnn.serve.limits import Limits  # noqa: E402

MAX_BODY = Limits().max_body


@pytest.fixture(scope="module")
def app(tmp_path_factory, mnist, mnist_dir):
    return create_app(tiny_model(tmp_path_factory.getbasetemp(), mnist), mnist_dir)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, raise_server_exceptions=False)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_health_page_and_static_files(client):
    assert client.get("/healthz").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and 'id="pad"' in page.text and "text/html" in page.headers["content-type"]
    for name in ("app.js", "style.css", "index.html"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.content == (STATIC / name).read_bytes()
        assert "http://" not in r.text and "https://" not in r.text, f"{name} fetches from outside the server"


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                                  "/static/%2e%2e%2f%2e%2e%2f__init__.py", "/static//etc/passwd",
                                  "/static/..%5capp.py", "/static/%00"])
def test_no_path_traversal(client, path):
    r = client.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert "create_app" not in r.text and "root:" not in r.text


def test_predict_json_pixels_matches_the_model(client, app, mnist):
    model = app.state.engine.model
    for i in range(5):
        pixels = mnist.test_images[i]
        r = client.post("/api/predict", json={"pixels": pixels.tolist()})
        assert r.status_code == 200, r.text
        out = r.json()
        with torch.no_grad():
            want = torch.softmax(model(normalize(pixels[None])), 1)[0]
        assert len(out["probabilities"]) == 10 and abs(sum(out["probabilities"]) - 1) < 1e-5
        assert np.allclose(out["probabilities"], want.numpy(), atol=1e-5)  # batched: rounding may differ
        assert out["prediction"] == int(want.argmax()) and "activations" not in out
        assert out["input_28x28"] == pixels.tolist()  # JSON pixels are the network's input as they are
        flat = client.post("/api/predict", json={"pixels": pixels.flatten().tolist()}).json()
        assert flat["probabilities"] == out["probabilities"]


def test_predict_with_activations(client):
    seven = np.zeros((28, 28), np.uint8)
    seven[6:8, 7:22] = 255
    for r in range(8, 23):
        seven[r, 20 - (r - 8) * 9 // 14:22 - (r - 8) * 9 // 14] = 255
    for how in ({"params": {"activations": "true"}, "json": {"pixels": seven.tolist()}},
                {"json": {"pixels": seven.tolist(), "activations": True}}):
        out = client.post("/api/predict", **how).json()
        shapes = {k: v["shape"] for k, v in out["activations"].items()}
        assert shapes == {"conv1": [32, 26, 26], "pool1": [32, 13, 13], "conv2": [64, 11, 11],
                          "pool2": [64, 5, 5], "fc1": [128]}
        for layer in out["activations"].values():
            data = np.frombuffer(base64.b64decode(layer["data"]), np.uint8)
            assert data.size == np.prod(layer["shape"]) and len(layer["max"]) == (layer["shape"][0] if
                                                                                  len(layer["shape"]) == 3 else 1)
            assert data.max() == 255  # every layer has some active unit for a drawn 7, scaled to its maximum


def test_feature_maps_are_the_models_own_scaled_to_8_bits(client, app, mnist):
    """Each map as sent is the model's activation (after ReLU) / the map's maximum * 255, rounded half to even:
    recomputed here with torch from the model's own layers, byte for byte."""
    model = app.state.engine.model
    for i in range(3):
        pixels = mnist.test_images[i]
        out = client.post("/api/predict?activations=true", json={"pixels": pixels.tolist()}).json()["activations"]
        with torch.no_grad():
            trace = {}
            model(normalize(pixels[None]), trace)
        for name, act in (("conv1", trace["conv1"].relu()), ("pool1", trace["pool1"]),
                          ("conv2", trace["conv2"].relu()), ("pool2", trace["pool2"]), ("fc1", trace["fc1"])):
            flat = act[0].float().clamp_min(0).reshape(len(act[0]) if act.dim() == 4 else 1, -1)
            peak = flat.amax(dim=1, keepdim=True)
            want = (flat / peak.clamp_min(1e-12) * 255).round().to(torch.uint8).numpy().tobytes()
            assert base64.b64decode(out[name]["data"]) == want, name
            assert out[name]["max"] == [round(v, 4) for v in peak.flatten().tolist()], name


def test_binary_answer_is_the_json_answer_with_raw_maps(client, mnist):
    """?binary=true (the page's form): a uint32 length, the JSON answer without the maps' base64, then each layer's
    bytes; decoded, it is the JSON answer to the same request, maps byte for byte. Errors stay JSON."""
    for i in range(2):
        pixels = mnist.test_images[i].tolist()
        want = client.post("/api/predict?activations=true", json={"pixels": pixels}).json()
        r = client.post("/api/predict?activations=true&binary=true", json={"pixels": pixels})
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        n = int.from_bytes(r.content[:4], "little")
        got, rest = json.loads(r.content[4:4 + n]), r.content[4 + n:]
        maps = got.pop("activations")
        assert got == {k: v for k, v in want.items() if k != "activations"}
        assert list(maps) == list(want["activations"])  # the order the bytes follow
        for name, layer in maps.items():
            size = int(np.prod(layer["shape"]))
            data, rest = rest[:size], rest[size:]
            assert data == base64.b64decode(want["activations"][name]["data"]), name
            assert layer == {k: v for k, v in want["activations"][name].items() if k != "data"}
        assert rest == b""
    bare = client.post("/api/predict?binary=true", json={"pixels": pixels})  # no maps asked: the JSON head alone
    assert "activations" not in json.loads(bare.content[4:]) and len(bare.content) == 4 + int.from_bytes(
        bare.content[:4], "little")
    bad = client.post("/api/predict?binary=true", json={"pixels": [1, 2]})
    assert bad.status_code == 422 and "pixels" in bad.json()["detail"]


def test_predict_upload_like_a_photo(client, mnist):
    """A test digit as a user would photograph it: dark ink on white, 4x larger, off-centre, as PNG."""
    digit = mnist.test_images[0].numpy()  # a 7
    big = np.full((160, 140), 255, np.uint8)
    big[10:122, 20:132] = 255 - np.kron(digit, np.ones((4, 4), np.uint8))
    for how in ({"files": {"file": ("seven.png", png(big), "image/png")}},
                {"content": png(big), "headers": {"Content-Type": "image/png"}}):
        r = client.post("/api/predict", **how)
        assert r.status_code == 200, r.text
        seen = np.array(r.json()["input_28x28"])
        assert seen.shape == (28, 28) and seen.max() > 200 and seen[0].max() == 0  # white on black, centred
        assert r.json()["prediction"] == int(mnist.test_labels[0])


def test_sample_and_model(client, mnist):
    s = client.get("/api/sample", params={"index": 3}).json()
    assert s["label"] == int(mnist.test_labels[3]) and s["pixels"] == mnist.test_images[3].tolist()
    assert s["count"] == 10_000
    assert 0 <= client.get("/api/sample").json()["index"] < 10_000
    for bad in ("10000", "-1", "x", "1e3", ""):
        r = client.get("/api/sample", params={"index": bad})
        assert r.status_code == 422 and r.json()["detail"], bad
    m = client.get("/api/model").json()
    assert m["params"] == 225_034 and m["checkpoint"] == "web-tiny.pth"
    assert [layer["name"] for layer in m["summary"]["layers"]] == ["input", "conv1", "pool1", "conv2", "pool2",
                                                                   "flatten", "fc1", "fc2"]
    assert 0.5 < m["test_accuracy"] <= 1


def test_openapi_documents_both_bodies(client):
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert {"/api/model", "/api/sample", "/healthz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def read_weights(body: bytes) -> tuple[dict, dict]:
    """GET /api/weights' body -> (its JSON header, {name: float32 array}), laid out as app.page_weights says."""
    n = int.from_bytes(body[:4], "little")
    head, base = json.loads(body[4:4 + n]), 4 + n
    assert base % 4 == 0, "the arrays start at a multiple of 4 (a Float32Array view needs it)"
    arrays = {t["name"]: np.frombuffer(body, "<f4", int(np.prod(t["shape"])), base + t["offset"]).reshape(t["shape"])
              for t in head["tensors"]}
    assert base + sum(a.nbytes for a in arrays.values()) == len(body)
    return head, arrays


def test_weights_are_the_served_models_own(client, app):
    """/api/weights: the served model's float32 weights, its config, classes and trust, as the page's forward pass
    (static/forward.js) reads them; /api/model says the page may run it; documented in the OpenAPI schema."""
    from mnist_cnn.predict.classifier import trust_of

    r = client.get("/api/weights")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    head, arrays = read_weights(r.content)
    model = app.state.engine.model
    state = model.state_dict()
    assert list(arrays) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
                            "fc2.weight", "fc2.bias"]
    for name, a in arrays.items():
        assert np.array_equal(a, state[name].float().numpy()), name  # no batch norm: the weights as they are
    cfg = model.cfg.to_dict()
    assert head["config"] == {k: cfg[k] for k in head["config"]} and head["config"]["channels"] == [32, 64]
    assert head["classes"] == [str(d) for d in range(10)] and head["batch_norm_folded"] is False
    assert head["trust"] == trust_of(app.state.engine.backend.meta)
    assert client.get("/api/model").json()["page_forward"] is True
    spec = client.get("/openapi.json").json()["paths"]["/api/weights"]["get"]
    assert "application/octet-stream" in spec["responses"]["200"]["content"] and "404" in spec["responses"]


def small_bn_model(path, mnist_dir, channels=(4, 8)):
    """A small Net with batch norm, its running statistics and affine parameters made up (not 0/1: folding
    them must matter), saved as a checkpoint; -> (the app serving it, the model)."""
    from mnist_cnn import checkpoint
    from mnist_cnn.config import ModelConfig
    from mnist_cnn.model import Net

    torch.manual_seed(0)
    model = Net(ModelConfig(channels=channels, batch_norm=True, padding=1, fc_units=16), fused=False)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
    checkpoint.save(path, model.eval(), {"epochs": 0}, [])
    return create_app(path, mnist_dir), model.eval()


def test_weights_fold_batch_norm_into_the_convs(tmp_path, mnist_dir, mnist):
    """With batch norm, /api/weights' conv1 and conv2 compute the model's conv1 and conv2 after BN (what the page
    shows as maps), and the whole forward pass with them gives PyTorch's logits to float32 rounding."""
    import torch.nn.functional as F

    app, model = small_bn_model(tmp_path / "bn.pth", mnist_dir)
    head, w = read_weights(TestClient(app).get("/api/weights").content)
    assert head["batch_norm_folded"] is True and head["config"]["padding"] == 1
    w = {k: torch.from_numpy(a.copy()) for k, a in w.items()}
    x = normalize(mnist.test_images[:4])  # (4, 1, 28, 28)
    trace = {}
    with torch.no_grad():
        logits = model(x, trace)
        conv1 = F.conv2d(x, w["conv1.weight"], w["conv1.bias"], padding=1)  # (4, 4, 28, 28), after BN
        pool1 = F.relu(F.max_pool2d(conv1, 2, 2))
        conv2 = F.conv2d(pool1, w["conv2.weight"], w["conv2.bias"], padding=1)  # (4, 8, 14, 14)
        fc1 = F.relu(F.linear(torch.flatten(F.relu(F.max_pool2d(conv2, 2, 2)), 1), w["fc1.weight"], w["fc1.bias"]))
        folded = F.linear(fc1, w["fc2.weight"], w["fc2.bias"])
    assert not torch.allclose(w["conv1.weight"], model.conv1.weight, atol=1e-3), "BN changed nothing: a weak test"
    assert torch.allclose(conv1, trace["conv1"], atol=1e-5) and torch.allclose(conv2, trace["conv2"], atol=1e-5)
    assert torch.allclose(folded, logits, atol=1e-5)


FORWARD_JS = STATIC / "forward.js"
NODE_FORWARD = """
const fs = require('fs');
require(process.argv[1]);
const b = fs.readFileSync(process.argv[2]);
const net = mnistForward.load(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
const out = JSON.parse(fs.readFileSync(0, 'utf8')).map((p) => {
  const a = mnistForward.answer(net, Uint8Array.from(p));
  for (const m of Object.values(a.activations)) m.data = Array.from(m.data);
  return a;
});
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(not shutil.which("node"), reason="no node to run forward.js outside the browser")
def test_forward_js_runs_a_padded_batch_norm_network_as_the_server(tmp_path, mnist_dir, mnist):
    """static/forward.js (in node) on /api/weights of a padded BatchNorm network (the page's browser test covers the
    tutorial's): the server's probabilities to 1e-5, its verdict fields, every layer's 8-bit maps within 1."""
    app, _ = small_bn_model(tmp_path / "bn.pth", mnist_dir)
    client = TestClient(app)
    (tmp_path / "w.bin").write_bytes(client.get("/api/weights").content)
    pixels = [mnist.test_images[i].flatten().tolist() for i in range(3)]
    run = subprocess.run(["node", "-e", NODE_FORWARD, str(FORWARD_JS), str(tmp_path / "w.bin")],
                         input=json.dumps(pixels), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for p, mine in zip(pixels, json.loads(run.stdout), strict=True):
        want = client.post("/api/predict", json={"pixels": p, "activations": True}).json()
        assert np.allclose(mine["probabilities"], want["probabilities"], atol=1e-5)
        assert all(mine[k] == want[k] for k in ("prediction", "best_guess", "label", "is_digit", "number", "trust"))
        for name, maps in want["activations"].items():
            server = np.frombuffer(base64.b64decode(maps["data"]), np.uint8).astype(int)
            assert mine["activations"][name]["shape"] == maps["shape"], name
            assert np.abs(np.array(mine["activations"][name]["data"]) - server).max() <= 1, name


def test_weights_refused_for_a_network_too_big_for_a_frame(tmp_path, mnist_dir):
    app, _ = small_bn_model(tmp_path / "big.pth", mnist_dir, channels=(32, 160))  # conv2 alone: 14 M MACs
    client = TestClient(app)
    r = client.get("/api/weights")
    assert r.status_code == 404 and "multiply-adds" in r.json()["detail"] and "/api/predict" in r.json()["detail"]
    assert client.get("/api/model").json()["page_forward"] is False


J = "application/json"
BAD = [  # (content type, body, expected status, words the message must contain)
    (J, b"{not json", 400, "not valid JSON"),
    (J, b"\xff\xfe", 400, "not valid JSON"),
    (J, b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    (J, b"[1, 2, 3]", 422, "pixels"),
    (J, b'{"pix": []}', 422, "pixels"),
    (J, json.dumps({"pixels": [[0] * 28] * 27}).encode(), 422, "shape [27, 28]"),
    (J, json.dumps({"pixels": [0] * 785}).encode(), 422, "shape [785]"),
    (J, json.dumps({"pixels": [[0] * 28] * 27 + [[0] * 27]}).encode(), 422, "28x28"),
    (J, json.dumps({"pixels": [256] + [0] * 783}).encode(), 422, "0..255"),
    (J, json.dumps({"pixels": [-1] + [0] * 783}).encode(), 422, "0..255"),
    (J, b'{"pixels": [NaN' + b", 0" * 783 + b"]}", 422, "NaN"),
    (J, b'{"pixels": [Infinity' + b", 0" * 783 + b"]}", 422, "NaN or infinity"),
    (J, b'{"pixels": [1e400' + b", 0" * 783 + b"]}", 422, "NaN or infinity"),
    (J, b'{"pixels": [' + b"9" * 400 + b", 0" * 783 + b"]}", 422, "pixels"),
    (J, json.dumps({"pixels": ["1"] * 784}).encode(), 422, "numbers"),
    (J, json.dumps({"pixels": [True] * 784}).encode(), 422, "numbers"),
    (J, json.dumps({"pixels": [None] * 784}).encode(), 422, "numbers"),
    (J, json.dumps({"pixels": 7}).encode(), 422, "shape []"),
    (J, json.dumps({"pixels": [0] * 784, "activations": "maybe"}).encode(), 422, "activations"),
    ("text/plain", b"hello", 415, "JSON"),
    ("", b"hello", 415, "JSON"),
    ("image/png", b"", 400, "empty"),
    ("image/png", b"GIF89a not really", 400, "image"),
    ("image/png", png(np.zeros((50, 50), np.uint8)), 400, "blank"),
    ("image/png", png(np.zeros((50, 50), np.uint8))[:60], 400, "image"),
    ("multipart/form-data; boundary=xyz", b"--xyz\r\nbroken", 400, "multipart"),
    ("multipart/form-data", b"no boundary", 400, ""),
]


@pytest.mark.parametrize("kind, body, status, says", BAD, ids=[f"{i}:{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_is_4xx_with_a_message(client, kind, body, status, says):
    r = client.post("/api/predict", content=body, headers={"Content-Type": kind} if kind else {})
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert says in r.json()["detail"]


def test_bad_uploads(client):
    cases = [({"file": ("x.png", b"not an image", "image/png")}, None, "image"),
             ({"file": ("x.png", b"", "image/png")}, None, "empty"),
             ({"other": ("x.png", png(np.zeros((9, 9), np.uint8)), "image/png")}, None, "'file'"),
             ({"other": ("x.png", b"", "image/png")}, {"file": "a string, not a file"}, "'file'")]
    for files, data, says in cases:
        r = client.post("/api/predict", files=files, data=data)
        assert r.status_code == 400 and says in r.json()["detail"], r.text


def test_decompression_bomb_is_refused(client):
    bomb = png(np.zeros((8000, 8000), np.uint8))  # 64 Mpx of black: ~60 kB of PNG
    assert len(bomb) < MAX_BODY
    r = client.post("/api/predict", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 400 and "pixel" in r.json()["detail"]


def test_bodies_over_2mb_are_413_however_sent(client):
    big = b"0" * (MAX_BODY + 1)
    r = client.post("/api/predict", content=big, headers={"Content-Type": J})  # with Content-Length
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks():  # no Content-Length: Transfer-Encoding chunked, 64 kB at a time
        for _ in range(40):
            yield b"0" * 65536

    r = client.post("/api/predict", content=chunks(), headers={"Content-Type": J})
    assert r.status_code == 413
    r = client.post("/api/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413
    r = client.post("/api/predict", content=b"{}", headers={"Content-Type": J, "Content-Length": "99999999999"})
    assert r.status_code == 413
    just_under = json.dumps({"pixels": [0] * 784}).encode().ljust(MAX_BODY, b" ")
    assert client.post("/api/predict", content=just_under, headers={"Content-Type": J}).status_code == 200


def test_concurrent_requests_get_their_own_answers(client, mnist):
    """16 threads, each posting different digits (batched together by the server): every answer is the one the
    digit gets alone."""
    alone = {i: client.post("/api/predict", json={"pixels": mnist.test_images[i].tolist()}).json()["probabilities"]
             for i in range(16)}
    wrong = []

    def worker(i):
        for _ in range(8):
            got = client.post("/api/predict", json={"pixels": mnist.test_images[i].tolist(),
                                                    "activations": i % 2 == 0}).json()["probabilities"]
            if not np.allclose(got, alone[i], atol=1e-5):
                wrong.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_a_bug_is_a_logged_500_not_a_crash(app, caplog, monkeypatch):
    """The catch-all: an exception that is nobody's input error (simulated) -> 500 JSON, logged with traceback."""
    def broken(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(app.state.engine.backend.model, "forward", broken)  # fails inside the forward thread
    with caplog.at_level(logging.ERROR, logger="mnist_cnn.serve"):
        r = TestClient(app, raise_server_exceptions=False).post("/api/predict", json={"pixels": [0] * 784})
    assert r.status_code == 500 and "internal" in r.json()["detail"]
    assert "simulated bug" in caplog.text
    monkeypatch.undo()  # the forward thread survived the bug and serves the next request
    assert TestClient(app).post("/api/predict", json={"pixels": [0] * 784}).status_code == 200


def test_one_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="mnist_cnn.serve"):
        client.get("/healthz")
        client.post("/api/predict", json={"pixels": [0] * 784})
        client.get("/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "mnist_cnn.serve"]
    assert len(lines) == 3
    assert "GET /healthz 200" in lines[0] and "POST /api/predict 200" in lines[1] and "GET /nope 404" in lines[2]


# -----------------------------------------------------------------------------
# fuzzing: whatever a client sends, the answer is never a 5xx

json_values = st.recursive(st.none() | st.booleans() | st.integers(-300, 300) | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=30) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4),
                           max_leaves=60)
kinds = st.sampled_from(["application/json", "multipart/form-data", "multipart/form-data; boundary=b",
                         "image/png", "image/jpeg", "text/plain", "", "application/json; charset=latin-1"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=kinds, body=st.binary(max_size=3000))
def test_fuzzed_bytes_never_5xx(client, kind, body):
    r = client.post("/api/predict", content=body, headers={"Content-Type": kind} if kind else {})
    assert r.status_code < 500, (kind, body[:100], r.text[:200])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pixels=json_values | st.lists(st.lists(st.integers(-5, 260) | st.floats(), min_size=28, max_size=28),
                                     min_size=27, max_size=29),
       extra=st.dictionaries(st.sampled_from(["activations", "x"]), json_values, max_size=2),
       query=st.text(max_size=20))
def test_fuzzed_json_never_5xx(client, pixels, extra, query):
    body = json.dumps({"pixels": pixels, **extra})  # NaN and Infinity included, as Python's json writes them
    r = client.post("/api/predict", params={"activations": query} if query else None, content=body,
                    headers={"Content-Type": J})
    assert r.status_code < 500, (pixels, extra, query, r.text[:200])
    if r.status_code == 200:
        assert abs(sum(r.json()["probabilities"]) - 1) < 1e-4


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=st.integers(1, 300), h=st.integers(1, 300), mode=st.sampled_from(["L", "RGB", "RGBA", "1", "P", "I;16"]),
       fmt=st.sampled_from(["PNG", "BMP", "GIF", "TIFF", "WEBP", "JPEG"]), seed=st.integers(0, 2**16),
       cut=st.integers(0, 400))
def test_fuzzed_images_never_5xx(client, w, h, mode, fmt, seed, cut):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # this Pillow cannot write that mode in that format: nothing to send
    raw = buf.getvalue()
    raw = raw[:-cut] if cut else raw  # sometimes truncated
    r = client.post("/api/predict", files={"file": ("x", raw, "application/octet-stream")})
    assert r.status_code in (200, 400), (w, h, mode, fmt, cut, r.text[:200])
