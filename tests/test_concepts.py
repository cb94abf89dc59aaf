"""The tutorial's worked examples, as `mnist-cnn concepts` computes them."""

import json

import pytest

from mnist_cnn.cli import CONCEPT_TOPICS, main
from mnist_cnn.insight.concepts import TOPICS, Context, run


def test_topic_list_matches_cli():
    assert tuple(TOPICS) == CONCEPT_TOPICS


def test_softmax_true_values_and_seed_error():
    (c,) = run("softmax")
    assert c["result"]["softmax"] == [0.6285, 0.2312, 0.1402]
    assert c["result"]["argmax"] == 0 and c["result"]["n_outputs"] == 10
    assert "[0.65, 0.24, 0.11]; that is wrong" in c["notes"][0]


def test_backprop_by_hand_equals_autograd_equals_seed():
    (c,) = run("backprop")
    for way in ("by_hand", "autograd"):
        r = c["result"][way]
        assert r["Z"] == pytest.approx(1.3) and r["A"] == pytest.approx(1.3) and r["loss"] == pytest.approx(0.25)
        assert r["dL/dw"] == pytest.approx([1.0, 2.0]) and r["dL/db"] == pytest.approx(1.0)
        assert r["new w"] == pytest.approx([0.09, 0.48]) and r["new b"] == pytest.approx(0.19)


def test_zero_grad_train_eval_conv_pool_batches():
    zg, te, conv, pool, batches = run("zero_grad") + run("train_eval") + run("conv") + run("pool") + run("batches")
    r = zg["result"]
    assert r["grad_twice_without_zero_grad"] == pytest.approx([2 * g for g in r["grad_once"]])
    assert r["grad_after_zero_grad"] == pytest.approx(r["grad_once"])
    assert te["result"]["train"][0] != te["result"]["train"][1] and te["result"]["eval"][0] == [1.0] * 8
    assert conv["result"]["feature_map"] == [[4, 5, 3], [-3, -2, -1], [1, 0, 1]]
    assert pool["result"]["pooled"] == [[4, 2], [2, 7]] and pool["result"]["params"] == 0
    assert batches["result"] == {"batches_per_epoch": 938, "last_batch": 32}


def test_transforms_on_real_digit(mnist_dir):
    (c,) = run("transforms", Context(data_dir=str(mnist_dir)))
    assert [round((p / 255 - 0.5) / 0.5, 4) for p in c["result"]["pixels"]] == c["result"]["normalized"]
    assert c["result"]["normalized"][-1] == -1.0  # background pixel 0 -> -1


def test_output_size_untrained_fallback(tmp_path):
    (c,) = run("output_size", Context(model=str(tmp_path / "none.pth")))
    assert c["result"]["flatten"] == 1600 and "untrained" in c["inputs"]["model"]
    assert all(s["formula"] == s["real"] for s in c["result"]["shapes"])


def test_concepts_cli(mnist_dir, tmp_path, capsys):
    assert main(["concepts", "--data-dir", str(mnist_dir), "--model", str(tmp_path / "none.pth")]) == 0
    stdout = capsys.readouterr().out
    for text in ("softmax = exp / sum = [0.6285, 0.2312, 0.1402]", "Z = w1*x1 + w2*x2 + b", "= 1.3000",
                 "w = [0.0900, 0.4800], b = 0.1900", "== train_eval =="):
        assert text in stdout, text
    assert main(["concepts", "loss", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["result"]["loss_if_true_0"] == pytest.approx(0.4644, abs=1e-4)
