"""`mnist-cnn export` and the onnxruntime backend: parity with PyTorch and int8 accuracy on real MNIST, predict and
serve without torch (in a subprocess, and in a fresh venv that has no torch at all), and bad models as one line."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_cli
from PIL import Image, ImageDraw

from mnist_cnn import checkpoint
from mnist_cnn.cli import main
from mnist_cnn.data import normalize
from mnist_cnn.predict import Classifier


def ort_logits(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": images})[0]


def test_export_matches_pytorch_on_all_test_images(exported, mnist):
    path = exported["onnx"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 18
    (inp,) = model.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8  # raw pixels: normalization is in the graph
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [28, 28]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["classes"]) == [str(d) for d in range(10)] and "centre of mass" in props["preprocessing"]
    assert props["source_sha256"] == hashlib.sha256(exported["model"].read_bytes()).hexdigest()

    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()  # all 10,000
    net, _ = checkpoint.load(exported["model"])
    with torch.inference_mode():
        ref = torch.cat([net(normalize(mnist.test_images[i:i + 2000])) for i in range(0, 10000, 2000)]).numpy()
    got = ort_logits(path, images)
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert np.abs(got - ref).max() <= 1e-4
    assert float(props["test_accuracy"]) == pytest.approx((got.argmax(1) == labels).mean(), abs=1e-4)
    # the batch dimension is dynamic: one image and three give the same rows
    assert np.allclose(ort_logits(path, images[:1]), got[:1], atol=1e-5)
    assert np.allclose(ort_logits(path, images[5:8]), got[5:8], atol=1e-5)


def test_int8_is_small_and_as_accurate(exported, mnist):
    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()
    fp32 = (ort_logits(exported["onnx"], images).argmax(1) == labels).mean()
    int8 = (ort_logits(exported["int8"], images).argmax(1) == labels).mean()
    assert exported["int8"].stat().st_size <= 300_000 < exported["onnx"].stat().st_size
    assert abs(int8 - fp32) <= 0.001, (int8, fp32)  # within 0.1 point
    ops = {n.op_type for n in onnx.load(str(exported["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    report = exported["report"]["int8"]
    assert report["test_accuracy"] == pytest.approx(int8) and report["bytes"] == exported["int8"].stat().st_size


def digit_images(folder, mnist) -> list:
    """A drawn 7 on paper and three MNIST test digits, as PNG files."""
    img = Image.new("RGB", (120, 160), (250, 240, 200))
    ImageDraw.Draw(img).line([(20, 20), (100, 20), (50, 140)], fill=(30, 30, 90), width=10)
    paths = [folder / "seven.png"]
    img.save(paths[0])
    for i in range(3):
        paths.append(folder / f"test{i}.png")
        Image.fromarray(mnist.test_images[i].numpy()).save(paths[-1])
    return paths


NO_TORCH_PREDICT = """
import contextlib, io, json, sys
from mnist_cnn.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["predict", *sys.argv[2:], "--model", sys.argv[1], "--json"])
print(json.dumps({"rc": rc, "results": json.loads(out.getvalue()), "torch": "torch" in sys.modules}))
"""


def test_predict_with_onnxruntime_imports_no_torch(exported, mnist, tmp_path):
    files = digit_images(tmp_path, mnist)
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_PREDICT, exported["onnx"], *files], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["rc"] == 0 and got["torch"] is False
    want = Classifier.load(exported["model"]).predict_batch(files)  # the same images through PyTorch
    for r, w in zip(got["results"], want, strict=True):
        assert r["prediction"] == w.digit and np.allclose(r["probabilities"], w.probabilities, atol=1e-5)


NO_TORCH_SERVE = """
import io, json, sys
from fastapi.testclient import TestClient
from mnist_cnn.predict.backend import OnnxBackend
from mnist_cnn.serve.app import create_app
client = TestClient(create_app(sys.argv[1], sys.argv[2], backend=OnnxBackend.load(sys.argv[1])))
pixels = json.loads(sys.argv[3])
out = {"json": [client.post("/api/predict", json={"pixels": p, "activations": True}).json() for p in pixels]}
out["png"] = client.post("/api/predict", content=open(sys.argv[4], "rb").read(),
                         headers={"Content-Type": "image/png"}).json()
out["model"] = client.get("/api/model").json()
out["sample"] = client.get("/api/sample?index=3").json()
weights = client.get("/api/weights")
out["weights"] = [weights.status_code, weights.json()["detail"]]
out["torch"] = "torch" in sys.modules
print(json.dumps(out))
"""


def test_serve_with_onnxruntime_imports_no_torch(exported, mnist, tmp_path):
    """The server's app on the onnxruntime backend: predictions as PyTorch makes them, and torch never loaded."""
    seven = digit_images(tmp_path, mnist)[0]
    pixels = [mnist.test_images[i].tolist() for i in range(4)]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_SERVE, exported["onnx"], ROOT / "data", json.dumps(pixels),
                           seven], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["torch"] is False
    clf = Classifier.load(exported["model"])
    want = clf.probabilities(np.array(pixels, np.uint8))  # JSON pixels are the 28x28 input as it is
    png = clf.predict(seven)  # an uploaded image is preprocessed first
    for r, w in zip([*got["json"], got["png"]], [*want, png.probabilities], strict=True):
        assert r["prediction"] == int(np.argmax(w)) and np.allclose(r["probabilities"], w, atol=1e-5)
        assert "activations" not in r or r["activations"] is None  # feature maps need the PyTorch model
    assert got["model"]["params"] == 225_034 and got["sample"]["label"] == int(mnist.test_labels[3])
    # no weights for the page's own forward pass: it asks /api/predict (docs/web.md)
    assert got["weights"][0] == 404 and "onnxruntime" in got["weights"][1] and got["model"]["page_forward"] is False


def bad_models(folder, good):
    """A file of each kind the issue names, with what its error must say."""
    text = folder / "notes.onnx"
    text.write_text("not a model\n")
    cut = folder / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    wrong = folder / "wrong.onnx"  # a valid ONNX model that takes normalized floats (1, 1, 28, 28)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 28, 28])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 28, 28])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), wrong)
    return {folder / "missing.onnx": "no such ONNX model", text: "not a readable ONNX model",
            cut: "not a readable ONNX model", wrong: "want one uint8 input (batch, 28, 28)"}


def test_bad_models_are_one_line(exported, mnist, tmp_path, capsys):
    image = digit_images(tmp_path, mnist)[1]
    for path, says in bad_models(tmp_path, exported["onnx"]).items():
        assert main(["predict", str(image), "--model", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and str(path) in err[0], err
    assert main(["predict", str(image), "--model", str(exported["onnx"]), "--backend", "torch"]) == 2
    assert "--backend onnxruntime" in capsys.readouterr().err
    assert main(["predict", str(image), "--model", str(exported["model"]), "--backend", "onnxruntime"]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
    # the server refuses a truncated model before it listens, in one line
    line = assert_one_line_error(run_cli("serve", "--model", tmp_path / "cut.onnx", "--port", 0))
    assert "not a readable ONNX model" in line


# -----------------------------------------------------------------------------
# a fresh venv with no torch: the serve-lite install recipe of docs/deploy.md


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def test_fresh_venv_without_torch_predicts_and_serves(exported, mnist, tmp_path):
    if not pypi_reachable():
        pytest.skip("pypi.org is not reachable: the fresh-venv install needs pip's index")
    venv, bin_ = tmp_path / "venv", tmp_path / "venv" / "bin"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    # this interpreter's pip installs into the new venv (no ensurepip); no .pyc compiling of what it installs
    pip = [sys.executable, "-m", "pip", "--python", bin_ / "python", "install", "-q", "--no-compile",
           "--disable-pip-version-check"]
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    lite = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve-lite"]
    for args in (["--no-deps", str(source)], lite):  # the two commands docs/deploy.md gives
        run = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    assert subprocess.run([bin_ / "python", "-c", "import torch"], capture_output=True).returncode != 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed copy, not the checkout's src
    files = digit_images(tmp_path, mnist)
    proc = subprocess.run([bin_ / "mnist-cnn", "predict", *files, "--model", exported["onnx"], "--json"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    want = Classifier.load(exported["model"]).predict_batch(files)
    assert [r["prediction"] for r in json.loads(proc.stdout)] == [w.digit for w in want]
    server = subprocess.Popen([bin_ / "mnist-cnn", "serve", "--model", exported["onnx"], "--port", "0",
                               "--data-dir", ROOT / "data"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tmp_path, env=env)
    try:
        line = server.stdout.readline()  # "serving ... on http://127.0.0.1:PORT/ ..."
        assert "serving" in line, line + server.stdout.read()
        url = line.split(" on ")[1].split()[0]
        from webutil import post_json

        status, body = None, None
        for _ in range(100):  # the socket is bound before the line is printed; uvicorn starts accepting soon after
            try:
                status, body = post_json(url + "api/predict", {"pixels": mnist.test_images[0].tolist()})
                break
            except OSError:
                time.sleep(0.1)  # readiness polling, not a timing assertion
        assert status == 200 and body["prediction"] == want[1].digit
    finally:
        server.send_signal(2)
        server.wait(timeout=30)
