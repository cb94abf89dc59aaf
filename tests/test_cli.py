import json

import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_cli


@pytest.mark.parametrize("args, says", [
    (["train", "--optimizer", "rmsprop"], "invalid choice"),
    (["train", "--epochs", "x"], "invalid int value"),
    (["train", "--lr", "0", "--data-dir", "{mnist}"], "--lr must be a positive number"),
    (["train", "--epochs", "0", "--data-dir", "{mnist}"], "--epochs must be at least 1"),
    (["train", "--kernel-size", "20", "--data-dir", "{mnist}"], "larger than its"),
    (["train", "--batch-size", "70000", "--data-dir", "{mnist}"], "larger than the training set"),
    (["train", "--device", "cuda", "--data-dir", "{mnist}"], "cuda"),
    (["evaluate", "--model", "{tmp}/none.pth"], "no such checkpoint"),
    (["evaluate", "--model", "{tmp}/junk.pth"], "not a readable PyTorch checkpoint"),
    (["data", "--data-dir", "{tmp}/afile/sub"], "cannot create data folder"),
    (["nosuchcommand"], "invalid choice"),
])
def test_user_errors_are_one_line(args, says, tmp_path, mnist_dir):
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("CUDA is present here")
    (tmp_path / "junk.pth").write_text("junk")
    (tmp_path / "afile").write_text("a file, not a folder")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{mnist}", str(mnist_dir)) for a in args]
    line = assert_one_line_error(run_cli(*args, cwd=tmp_path))
    assert says in line


def test_data_command_json(mnist_dir):
    proc = run_cli("data", "--data-dir", mnist_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out["files"]) == {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}
    assert all(f["status"] == "ok" for f in out["files"].values())


@pytest.mark.slow
def test_end_to_end_one_epoch_on_real_mnist(tmp_path, mnist_dir):
    """`python mnist_classifier.py` for one epoch on the real MNIST, then evaluate, then the tutorial's Net loads it."""
    import subprocess
    import sys

    out = tmp_path / "m.pth"
    proc = subprocess.run([sys.executable, str(ROOT / "mnist_classifier.py"), "--epochs", "1", "--seed", "0",
                           "--data-dir", str(mnist_dir), "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    history = json.loads(proc.stdout)["history"]
    assert len(history) == 1 and history[0]["test_accuracy"] >= 0.97
    assert set(json.loads(out.with_suffix(".json").read_text())["history"][0]) >= {
        "train_loss", "test_loss", "test_accuracy", "seconds"}

    ev = run_cli("evaluate", "--model", out, "--data-dir", mnist_dir, "--json")
    assert ev.returncode == 0, ev.stderr
    ev = json.loads(ev.stdout)
    assert abs(ev["accuracy"] - history[0]["test_accuracy"]) < 2e-3  # fp32 eval vs training-time eval
    assert sum(map(sum, ev["confusion"])) == 10_000 and len(ev["per_class_accuracy"]) == 10

    from mnist_cnn.data import load_mnist, normalize
    from mnist_cnn.perf import reference

    seed_net = reference.Net()
    seed_net.load_state_dict(torch.load(out, weights_only=True))
    seed_net.eval()
    test = load_mnist(mnist_dir, fetch=False)
    with torch.no_grad():
        acc = (seed_net(normalize(test.test_images)).argmax(1) == test.test_labels).float().mean().item()
    assert acc >= 0.97
