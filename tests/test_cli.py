import dataclasses
import json
import subprocess
import sys

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


# -----------------------------------------------------------------------------
# the train flags are generated from TrainConfig and ModelConfig (config.py)


def parse_train(*flags):
    from mnist_cnn.cli import build_parser, train_config

    return train_config(build_parser().parse_args(["train", *flags]))


def test_defaults_come_from_the_dataclasses():
    from mnist_cnn.config import ModelConfig, TrainConfig

    cfg = parse_train()
    assert cfg == dataclasses.replace(TrainConfig(), save=True) and cfg.model == ModelConfig()
    assert cfg.given == frozenset()  # nothing given: the recipe may set anything
    cfg = parse_train("--lr", "0.001", "--channels", "8", "16", "--quiet")
    assert cfg.given == {"lr", "model.channels", "quiet"} and cfg.model.channels == (8, 16) and cfg.quiet


def test_help_lists_every_field_and_loads_no_torch():
    from mnist_cnn.config import ModelConfig, TrainConfig

    code = ("import sys\nfrom mnist_cnn.cli import main\ntry:\n    main(['train', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch loaded:', 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("torch loaded: False")
    flags = {f.name for cls in (TrainConfig, ModelConfig) for f in dataclasses.fields(cls)
             if f.metadata.get("flag", True) and f.name != "model"}
    assert {"epochs", "lr", "recipe", "channels", "dropout"} <= flags
    for name in flags:
        assert f"--{name.replace('_', '-')}" in proc.stdout, name
    assert "(default: 0.001)" in proc.stdout and "(default: 32 64)" in proc.stdout  # the dataclass defaults


def test_a_flag_given_at_its_default_beats_the_recipe():
    from mnist_cnn.config import RECIPES, apply_recipe

    cfg = apply_recipe(parse_train("--recipe", "fast", "--lr", "0.001"))  # 0.001 is TrainConfig's default lr
    assert cfg.lr == 0.001
    assert all(getattr(cfg, k) == v for k, v in RECIPES["fast"].items() if k != "lr")
    assert apply_recipe(parse_train("--augment", "--schedule", "constant")).schedule == "constant"
    assert apply_recipe(parse_train("--augment")).schedule == "onecycle"
    assert apply_recipe(parse_train("--augment")).epochs == 20
    assert apply_recipe(parse_train("--augment")).label_smoothing == 0.1
    assert apply_recipe(parse_train("--augment", "--label-smoothing", "0")).label_smoothing == 0.0
    assert apply_recipe(parse_train("--augment", "--epochs", "5")).epochs == 5


@pytest.mark.slow
def test_recipe_fast_with_default_lr_trains_at_that_lr(tmp_path, mnist_dir):
    proc = run_cli("train", "--recipe", "fast", "--lr", "0.001", "--train-subset", "640", "--device", "cpu",
                   "--data-dir", mnist_dir, "--out", tmp_path / "m.pth", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    args = json.loads((tmp_path / "m.json").read_text())["train_args"]
    assert args["lr"] == 0.001 and args["schedule"] == "onecycle" and args["recipe"] == "fast"
    assert "given" not in args


def test_resume_refuses_a_flag_given_at_its_default(mnist, tmp_path):
    from mnist_cnn.data import MNIST
    from mnist_cnn.errors import ConfigError
    from mnist_cnn.train import train

    small = MNIST(mnist.train_images[:128], mnist.train_labels[:128], mnist.test_images[:128],
                  mnist.test_labels[:128])
    out = str(tmp_path / "m.pth")
    train(dataclasses.replace(parse_train("--lr", "0.002", "--epochs", "2", "--device", "cpu", "--out", out,
                                          "--seed", "0", "--quiet"), epochs=1), data=small, log=lambda *a: None)
    with pytest.raises(ConfigError, match="--lr 0.001 differs"):  # before: 0.001 == default, taken as no flag
        train(parse_train("--resume", "--lr", "0.001", "--out", out, "--quiet"), data=small, log=lambda *a: None)
