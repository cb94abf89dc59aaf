"""bench and the speed recipes on a tiny budget: the plumbing and the numbers' shapes, never timings."""

import json
import math
import shutil

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from mnist_cnn.data import MNIST
from mnist_cnn.train import DEFAULT_THREADS, RECIPES, TrainConfig, apply_recipe, pick_threads, train


def small(mnist, n_train=1024, n_test=512) -> MNIST:
    return MNIST(mnist.train_images[:n_train], mnist.train_labels[:n_train],
                 mnist.test_images[:n_test], mnist.test_labels[:n_test])


def test_bench_quick_reports_well_formed_numbers(mnist_dir, monkeypatch, tmp_path):
    # one thread per child: on a busy 2-core machine OpenMP's spinning threads make the tutorial's loop crawl
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    proc = run_cli("bench", "--quick", "--epochs", "1", "--device", "cpu", "--data-dir", mnist_dir, "--json",
                   "--results", tmp_path, "--log-dir", tmp_path / "tb")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["dataset"] == "mnist"
    read_back_event_files(tmp_path / "tb", res)
    [written] = tmp_path.glob("bench-*.json")  # --results: the same figures, wrapped with where and how
    doc = json.loads(written.read_text())
    assert doc["results"] == res and doc["kind"] == "bench" and doc["n"] == 1
    assert doc["command"].startswith("python -m mnist_cnn bench --quick") and doc["machine"]["cores"] >= 1
    assert doc["versions"]["torch"] == torch.__version__ and doc["machine"]["cpu"]
    assert set(res["sides"]) == {"tutorial", "ours", "fast"} and res["target"] == 99.0
    for name, s in res["sides"].items():
        assert s["device"] == "cpu" and s["epochs"] == 1 == len(s["seconds_per_epoch"]) == len(s["test_accuracy"])
        for key in ("total_seconds", "cpu_seconds", "train_images_per_second", "inference_images_per_second",
                    "latency_ms", "latency_plain_ms", "peak_memory_mib"):
            assert isinstance(s[key], float) and math.isfinite(s[key]) and s[key] > 0, (name, key, s[key])
        assert 0.0 <= s["final_accuracy_fp32"] <= 1.0 and 0.0 <= s["final_accuracy"] <= 1.0
        assert s["seconds_to_target"] is None or s["seconds_to_target"] <= s["total_seconds"]
        assert s["final_accuracy"] > 0.3, (name, s["final_accuracy"])  # 20 batches of Adam learn something
    assert res["sides"]["ours"]["precision"] in ("float32", "bfloat16")
    assert res["sides"]["ours"]["latency_path"] == "Classifier.predict"
    assert res["sides"]["tutorial"]["fused_conv1"] is None
    if shutil.which("cc") or shutil.which("gcc"):
        assert res["sides"]["ours"]["fused_conv1"] == res["sides"]["fast"]["fused_conv1"] == "on"
    for side in ("ours", "fast"):
        r = res["ratios_ours_over_tutorial"][side]
        assert r["total_seconds"] == pytest.approx(res["sides"][side]["total_seconds"]
                                                   / res["sides"]["tutorial"]["total_seconds"])


def read_back_event_files(tb, res):
    """--log-dir: one TensorBoard run per side, read with tensorboard's own reader, holding the JSON's figures."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert sorted(p.name for p in tb.iterdir()) == sorted(res["sides"])
    for side, s in res["sides"].items():
        ea = EventAccumulator(str(tb / side))
        ea.Reload()
        assert [(e.step, e.value) for e in ea.Scalars("accuracy/test")] == [
            (i + 1, pytest.approx(a)) for i, a in enumerate(s["test_accuracy"])]
        assert ea.Scalars("bench/total_seconds")[0].value == pytest.approx(s["total_seconds"])
        assert ea.Scalars("images_per_s")[0].value == pytest.approx(s["train_images_per_second"])


def test_bench_table_and_errors(mnist_dir):
    from mnist_cnn.perf.bench import format_table, median_of

    runs = [{"side": "ours", "total_seconds": t, "test_accuracy": [a], "latency_ms": None, "threads": 2}
            for t, a in ((3.0, 0.9), (1.0, 0.8), (2.0, 0.7))]
    med = median_of(runs)
    assert med["total_seconds"] == 2.0 and med["test_accuracy"] == [0.8] and med["repeats"] == 3
    assert med["threads"] == 2 and type(med["threads"]) is int
    assert med["per_run"]["total_seconds"] == [3.0, 1.0, 2.0]
    reached = [{"seconds_to_target": t} for t in (5.0, None, 7.0)]
    assert median_of(reached)["seconds_to_target"] == 7.0  # never reached = infinitely late
    assert median_of(reached[:2] + [{"seconds_to_target": None}])["seconds_to_target"] is None
    assert med["latency_ms"] is None

    fake = {"device": "cpu", "precision": "float32", "threads": 2, "epochs": 1, "seconds_per_epoch": [10.0],
            "total_seconds": 10.0, "test_accuracy": [0.99], "final_accuracy_fp32": 0.99, "seconds_to_target": 10.0,
            "train_images_per_second": 6000.0, "inference_batch": 1024, "inference_images_per_second": 1e4,
            "latency_ms": 1.0, "peak_memory_mib": 900.0, "peak_memory_kind": "RSS"}
    res = {"target": 99.0, "sides": {"tutorial": fake, "ours": {**fake, "total_seconds": 2.5}},
           "ratios_ours_over_tutorial": {"ours": {"total_seconds": 0.25}}}
    table = format_table(res)
    assert "ours/tutorial" in table and "0.25" in table and "99.00" in table
    res["sides"]["ours"]["fused_conv1"] = "unavailable (no C compiler found (install gcc, or set CC))"
    assert "off: unavailable (no C compiler found" in format_table(res)

    line = assert_one_line_error(run_cli("bench", "--repeats", "0", "--data-dir", mnist_dir))
    assert "--repeats" in line
    from argparse import Namespace

    from mnist_cnn.errors import ConfigError
    from mnist_cnn.perf.bench import check_data

    with pytest.raises(ConfigError, match="the tutorial side reads with torchvision, which knows mnist and fashion-"):
        check_data(Namespace(dataset="kmnist", sides=["tutorial", "ours"], data_dir=mnist_dir))
    if not torch.cuda.is_available():
        assert "cuda" in assert_one_line_error(run_cli("bench", "--device", "cuda", "--data-dir", mnist_dir))


def test_recipe_fast_sets_defaults_but_explicit_flags_win():
    cfg = apply_recipe(TrainConfig(recipe="fast"))
    for k, v in RECIPES["fast"].items():
        assert getattr(cfg, k) == v
    cfg = apply_recipe(TrainConfig(recipe="fast", batch_size=32, target_accuracy=98.0))
    assert cfg.batch_size == 32 and cfg.target_accuracy == 98.0 and cfg.schedule == "onecycle"
    assert apply_recipe(TrainConfig()) == TrainConfig()  # the tutorial recipe changes nothing


@pytest.mark.parametrize("field, value, says", [
    ("recipe", "turbo", "--recipe"), ("target_accuracy", 150.0, "--target-accuracy"),
    ("label_smoothing", 1.0, "--label-smoothing"), ("schedule", "cosine", "--schedule"),
    ("eval_every", -1, "must not be negative"), ("weight_decay", -0.1, "--weight-decay")])
def test_bad_speed_settings_are_config_errors(field, value, says):
    from mnist_cnn.errors import ConfigError

    with pytest.raises(ConfigError, match=says):
        TrainConfig(**{field: value}).validate()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_shrinks_weights_that_get_no_gradient(optimizer):
    from mnist_cnn.model import Net
    from mnist_cnn.train import make_optimizer

    for wd, factor in ((0.0, 1.0), (0.5, 1 - 0.1 * 0.5)):  # AdamW: w -= lr * wd * w; SGD's first step: the same
        net = Net(fused=False)
        before = net.fc1.weight.detach().clone()
        opt = make_optimizer(TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=wd), net)
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        torch.testing.assert_close(net.fc1.weight.detach(), before * factor)


def test_target_accuracy_stops_mid_epoch_and_counts_the_checks(mnist):
    # 1,024 images at batch 32 = 32 steps; a target of 10% is reached at the first check (step 16 of 32)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, seed=0, quiet=True, device="cpu", target_accuracy=10.0,
                      eval_every=4)
    _, history = train(cfg, small(mnist), log=lambda *a: None)
    h = history[-1]
    assert h["target_checks"] == 1 and h["images"] == 16 * 32 and h["test_accuracy"] >= 0.10


def test_unreachable_target_runs_every_epoch_with_a_schedule(mnist):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=0, quiet=True, device="cpu", target_accuracy=100.0,
                      eval_every=4, schedule="onecycle", label_smoothing=0.1)
    _, history = train(cfg, small(mnist), log=lambda *a: None)
    assert [h["epoch"] for h in history] == [1, 2] and all(h["images"] == 1024 for h in history)
    # 16 steps per epoch; checks every 4 steps from the middle of the run (step 16) on: 16 | 20 24 28 32
    assert history[0]["target_checks"] == 1 and history[1]["target_checks"] == 4
    assert history[-1]["test_accuracy"] > 0.7  # 2 x 16 steps of one-cycle Adam on 1,024 digits
    assert all(math.isfinite(h["train_loss"]) for h in history)


@pytest.mark.slow
def test_fast_recipe_cli_prints_accuracy_beside_time(mnist_dir, tmp_path):
    proc = run_cli("train", "--recipe", "fast", "--target-accuracy", "50", "--eval-every", "100", "--device", "cpu",
                   "--data-dir", mnist_dir, "--out", tmp_path / "m.pth", "--seed", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "recipe fast" in proc.stdout and "stop at 50%" in proc.stdout
    assert "reached the target 50%" in proc.stdout and "stopped after" in proc.stdout
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["train_args"]["schedule"] == "onecycle" and meta["train_args"]["lr"] == 6e-3
    assert meta["history"][-1]["images"] < 60_000


def test_threads_auto_is_torchs_default_shared_among_local_ranks(monkeypatch):
    assert pick_threads(3) == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert pick_threads(0) == DEFAULT_THREADS
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * DEFAULT_THREADS))
    assert pick_threads(0) == 1


def test_pool_then_relu_is_the_seeds_function_and_gradients(mnist):
    """model.Net pools before its ReLUs (faster); the tutorial's Net does the opposite. Same outputs, same grads.
    The eager layers on both sides: fused.c hands conv2 a channels_last tensor, and conv2 in channels_last
    rounds differently, enough to flip which of two near-equal values a max-pool window picks (conv2.weight's
    gradient then differs by up to 2%, as it does for the tutorial's Net itself in channels_last)."""
    from mnist_cnn.data import normalize
    from mnist_cnn.model import Net
    from mnist_cnn.perf import reference

    torch.manual_seed(0)
    ours, seed = Net(fused=False), reference.Net()
    seed.load_state_dict(ours.state_dict())
    x, y = normalize(mnist.train_images[:64]), mnist.train_labels[:64]
    for net in (ours, seed):
        torch.nn.functional.cross_entropy(net(x), y).backward()
    assert torch.equal(ours(x), seed(x))
    for (name, a), (_, b) in zip(ours.named_parameters(), seed.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_bench_alternates_the_order_of_the_sides(mnist_dir, monkeypatch):
    """ABBA: this VM slows down under sustained load, so the side that goes first must change every repeat."""
    import argparse

    from mnist_cnn.perf import bench

    order = []

    def fake_child(side, args):
        order.append(side)
        return {"side": side, **{k: 1.0 for k in bench.RATIO_KEYS}}

    monkeypatch.setattr(bench, "run_child", fake_child)
    args = argparse.Namespace(data_dir=mnist_dir, repeats=3, sides=["tutorial", "ours", "fast"], epochs=1,
                              target=99.0, quick=True, dataset="mnist")
    res = bench.bench(args, log=lambda *a: None)
    assert order == ["tutorial", "ours", "fast", "fast", "ours", "tutorial", "tutorial", "ours", "fast"]
    assert res["sides"]["ours"]["repeats"] == 3
