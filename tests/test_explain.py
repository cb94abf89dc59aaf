"""summary's arithmetic against hand-computed numbers and real tensors; activations; saliency; the figures."""

import json

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from PIL import Image

from mnist_cnn import checkpoint
from mnist_cnn.cli import main
from mnist_cnn.errors import ConfigError
from mnist_cnn.insight.explain import activations, saliency, summary
from mnist_cnn.model import ModelConfig, Net, count_params

# by hand: side after conv1, pool1, conv2, pool2; params of conv1, conv2, fc1, fc2
EXPECTED = {
    # seed: 28-3+1=26, floor(24/2)+1=13, 13-3+1=11, floor(9/2)+1=5 -> 64*5*5=1600
    "seed": (ModelConfig(), [26, 13, 11, 5], [320, 18_496, 1600 * 128 + 128, 1_290], 225_034),
    # kernel 5: 24, 12, 8, 4 -> 1024; conv1 32*25+32=832, conv2 64*32*25+64=51,264, fc1 1024*128+128=131,200
    "kernel5": (ModelConfig(kernel_size=5), [24, 12, 8, 4], [832, 51_264, 131_200, 1_290], 184_586),
    # pool 3/2: 26, floor(23/2)+1=12, 10, floor(7/2)+1=4 -> 1024
    "pool3s2": (ModelConfig(pool_kernel=3, pool_stride=2), [26, 12, 10, 4], [320, 18_496, 131_200, 1_290], 151_306),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_summary_numbers_by_hand(name):
    cfg, sides, params, total = EXPECTED[name]
    s = summary(cfg)
    by = {layer["name"]: layer for layer in s["layers"]}
    assert [by[n]["output_shape"][1] for n in ("conv1", "pool1", "conv2", "pool2")] == sides
    assert [by[n]["params"] for n in ("conv1", "conv2", "fc1", "fc2")] == params
    assert by["pool1"]["params"] == by["pool2"]["params"] == 0
    assert s["params"] == total == count_params(Net(cfg))
    assert s["flatten_formula"] == s["flatten_dummy"] == 64 * sides[3] ** 2


def test_summary_seed_formulas_and_macs():
    by = {layer["name"]: layer for layer in summary()["layers"]}
    assert by["conv1"]["formula"] == "(28 - 3 + 2*0)/1 + 1 = 26"
    assert by["pool2"]["formula"].startswith("floor((11 - 2 + 2*0)/2) + 1 = 5") and "5.5" in by["pool2"]["formula"]
    assert by["conv1"]["macs"] == 32 * 26 * 26 * 9 and by["conv2"]["macs"] == 64 * 11 * 11 * 32 * 9
    assert by["fc1"]["macs"] == 1600 * 128 and by["pool1"]["macs"] == 0
    assert [by[n]["receptive_field"] for n in ("conv1", "pool1", "conv2", "pool2")] == [3, 4, 8, 10]


@pytest.mark.parametrize("kernel", [2, 3, 5, 6])
@pytest.mark.parametrize("pool", [(2, 2), (3, 2), (4, 4)])
def test_summary_matches_real_tensors(kernel, pool):
    try:
        cfg = ModelConfig(kernel_size=kernel, pool_kernel=pool[0], pool_stride=pool[1])
    except ConfigError:
        # by hand: kernel 5: 24 -> 6 -> 2, too small for pool 4; kernel 6: 23 -> 5, too small for conv 6
        assert (kernel, pool) in {(5, (4, 4)), (6, (4, 4))}
        return
    s = summary(cfg)
    model = Net(cfg)
    acts = activations(model, torch.randn(2, 1, 28, 28))
    for layer in s["layers"]:
        if layer["name"] in acts:
            assert list(acts[layer["name"]].shape[1:]) == layer["output_shape"], layer
    assert s["params"] == count_params(model)


def test_unseen_border_is_real():
    """The floor in pool2 drops input rows/cols 26-27: the logits' gradient there is exactly 0."""
    s = summary()
    assert s["unseen_border"] == 2 and s["layers"][-1]["receptive_field"] == 26
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 1, 28, 28, requires_grad=True)
    model(x).sum().backward()
    g = x.grad[0, 0].abs()
    assert g[26:, :].sum() == 0 and g[:, 26:].sum() == 0
    assert g[25, :26].sum() > 0 and g[:26, 25].sum() > 0


def test_too_small_maps_are_refused():
    with pytest.raises(ConfigError, match="shrink below 1x1"):
        ModelConfig(kernel_size=6, pool_kernel=4, pool_stride=4)
    line = assert_one_line_error(run_cli("summary", "--kernel-size", "6", "--pool-kernel", "4", "--pool-stride", "4"))
    assert line.startswith("mnist-cnn summary: error:") and "shrink below 1x1" in line


def test_activations_and_saliency():
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(3, 1, 28, 28)
    a = activations(model, x)
    assert list(a) == ["input", "conv1", "pool1", "conv2", "pool2", "fc1", "logits", "probs"]
    assert a["conv1"].shape == (3, 32, 26, 26) and a["pool2"].shape == (3, 64, 5, 5) and a["fc1"].shape == (3, 128)
    assert torch.allclose(a["logits"], model.eval()(x), atol=1e-5)
    assert torch.allclose(a["probs"].sum(1), torch.ones(3)) and (a["conv1"] >= 0).all()
    assert torch.equal(a["pool1"], model.pool(a["conv1"]))  # shown relu-then-pool == Net's pool-then-relu
    s = saliency(model, x[:1])
    assert s["target"] == int(a["logits"][0].argmax()) and s["gradient"].shape == (28, 28)
    # integrated gradients' completeness: attributions sum to logit(x) - logit(blank), up to the Riemann error
    assert abs(s["ig_check"]["sum"] - s["ig_check"]["logit_gap"]) < 0.05 * abs(s["ig_check"]["logit_gap"]) + 0.05


def cli(capsys, *args):
    """`mnist-cnn ARGS` in this process (the one-line-error tests spawn a real process instead)."""
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_summary_cli_text_and_json(capsys):
    stdout = cli(capsys, "summary")
    for text in ("32x26x26", "32x13x13", "64x11x11", "64x5x5", "320", "18,496", "204,928", "1,290", "225,034",
                 "floor of 5.5", "dummy tensor through Net.features 1,600 (agree)"):
        assert text in stdout, text
    out = json.loads(cli(capsys, "summary", "--kernel-size", "5", "--json"))
    assert out["params"] == 184_586 and out["flatten_dummy"] == 1024


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, mnist):
    """A real checkpoint: 2 epochs on 1,000 real MNIST images (seconds), with its JSON history."""
    from mnist_cnn.data import MNIST
    from mnist_cnn.train import TrainConfig, train, train_args

    data = MNIST(mnist.train_images[:1000], mnist.train_labels[:1000], mnist.test_images[:500],
                 mnist.test_labels[:500])
    cfg = TrainConfig(epochs=2, seed=0, quiet=True, device="cpu")
    model, history = train(cfg, data, log=lambda *a: None)
    path = tmp_path_factory.mktemp("m") / "small.pth"
    checkpoint.save(path, model, train_args(cfg), history)
    return path


def assert_png(path, min_size=(600, 300)):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
        return im.size


def test_explain_cli_writes_figures(small_model, mnist_dir, tmp_path, capsys):
    out = tmp_path / "fig.png"
    r = json.loads(cli(capsys, "explain", "--test-index", "0", "--model", small_model, "--data-dir", mnist_dir,
                       "--out", out, "--filters", "--json"))
    assert r["label"] == 7 and abs(sum(r["probabilities"]) - 1) < 1e-5
    assert r["prediction"] == max(range(10), key=lambda c: r["probabilities"][c])
    assert assert_png(out) == (1360, 1080)
    assert_png(tmp_path / "fig_filters.png")
    assert main(["explain", "--model", str(small_model), "--data-dir", str(mnist_dir)]) == 2
    assert "exactly one of IMAGE or --test-index" in capsys.readouterr().err


def test_report_cli_writes_figures(small_model, mnist_dir, tmp_path, capsys):
    r = json.loads(cli(capsys, "report", "--model", small_model, "--data-dir", mnist_dir, "--out", tmp_path / "rep",
                       "--json"))
    cm = torch.tensor(r["confusion"])
    assert cm.sum() == 10_000 and cm.diag().sum() == 10_000 - r["errors"] == round(r["accuracy"] * 10_000)
    assert len(r["misclassified"]) == r["errors"] and r["most_confused"][0]["count"] == max(
        cm[t, p] for t in range(10) for p in range(10) if t != p)
    probs = [m["probability"] for m in r["misclassified"]]
    assert probs == sorted(probs, reverse=True)
    assert len(r["history"]) == 2
    for name in ("confusion", "misclassified", "curves"):
        assert_png(tmp_path / "rep" / f"{name}.png")
    assert "per-class accuracy" in (tmp_path / "rep" / "report.txt").read_text()
