"""Scale and reliability: torchrun DDP, crash-safe resumable runs, guards, determinism (issue 7).

Real processes, real signals, real MNIST (small training subsets so the file stays well under a minute and a half
on 2 cores). Synchronisation is by polling files and reading output lines, never by sleeping for a guess.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, run_cli

from mnist_cnn import checkpoint, distributed, resume
from mnist_cnn.data import MNIST
from mnist_cnn.errors import ConfigError, MnistCnnError
from mnist_cnn.model import Net
from mnist_cnn.train import TrainConfig, train


def quiet(*a, **k):
    pass


def no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def wait_for(predicate, proc, timeout=300):
    """Poll until predicate() holds; fail if the process ends first or it takes too long."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"training ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def small(mnist):
    """600 training and 500 test images: 12 steps an epoch at batch 50, enough to learn something."""
    return MNIST(mnist.train_images[:600], mnist.train_labels[:600], mnist.test_images[:500],
                 mnist.test_labels[:500])


BASE = TrainConfig(epochs=2, batch_size=50, seed=3, deterministic=True, device="cpu", quiet=True)


@pytest.fixture(scope="module")
def reference(small):
    model, history = train(BASE, data=small, log=quiet)
    return {k: v.clone() for k, v in model.state_dict().items()}, history


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -----------------------------------------------------------------------------
# determinism


def test_deterministic_runs_are_bit_identical(small, reference):
    model, history = train(BASE, data=small, log=quiet)
    assert same_weights(model.state_dict(), reference[0])
    assert history == [{**h, "seconds": h2["seconds"], "train_seconds": h2["train_seconds"]}
                       for h, h2 in zip(reference[1], history, strict=True)]
    assert history[-1]["test_accuracy"] > 0.5


# -----------------------------------------------------------------------------
# resuming


def counting(then):
    """A criterion (the plain cross-entropy) that calls then(n, loss) at its n-th call (training steps only:
    evaluation has its own loss) and returns what that gives."""
    calls = [0]

    def criterion(logits, y):
        calls[0] += 1
        return then(calls[0], F.cross_entropy(logits, y))
    return criterion


def test_sigint_mid_epoch_saves_and_resume_is_bit_identical(small, reference, tmp_path):
    """A real SIGINT during epoch 2 (step 6 of 12): clean stop, state saved at the step, resume ends identical."""
    def signal_at_step_18(n, loss):  # 12 steps an epoch: step 6 of epoch 2 (counted from 0)
        if n == 18:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag; the loop sees it before step 7
        return loss

    cfg = replace(BASE, out=str(tmp_path / "m.pth"), save=True)
    with pytest.raises(resume.Interrupted) as stopped:
        train(cfg, data=small, log=quiet, criterion=counting(signal_at_step_18))
    assert stopped.value.exit_code == 130
    assert "SIGINT" in stopped.value.message and "--resume" in stopped.value.message
    state = resume.load_state(tmp_path / "m.state.pt")
    assert (state["epoch"], len(state["history"]), state["step"]) == (1, 1, 6)
    assert json.loads((tmp_path / "m.json").read_text())["history"] == state["history"]

    model, history = train(replace(cfg, resume=True), data=small, log=quiet)
    assert [h["epoch"] for h in history] == [1, 2]
    assert same_weights(model.state_dict(), reference[0])
    assert resume.load_state(tmp_path / "m.state.pt")["epoch"] == 2
    loaded, meta = checkpoint.load(tmp_path / "m.pth")
    assert same_weights(loaded.state_dict(), reference[0]) and len(meta["history"]) == 2
    assert no_temp_files(tmp_path)


def test_resume_with_a_schedule_is_bit_identical(small, tmp_path):
    """One-cycle: the resumed run's first step uses the saved learning rate, not the schedule's starting one."""
    cfg = replace(BASE, epochs=1, schedule="onecycle", lr=3e-3, out=str(tmp_path / "m.pth"), save=True)
    whole, _ = train(replace(cfg, save=False), data=small, log=quiet)

    def signal_after_step_3(n, loss):
        if n == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    with pytest.raises(resume.Interrupted):
        train(cfg, data=small, log=quiet, criterion=counting(signal_after_step_3))
    assert resume.load_state(tmp_path / "m.state.pt")["step"] == 3
    resumed, _ = train(replace(cfg, resume=True), data=small, log=quiet)
    assert same_weights(resumed.state_dict(), whole.state_dict())


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(small, tmp_path):
    before = {}

    def nan_from_epoch_two(n, loss):
        if n == 13 and not before:  # first step of epoch 2: epoch 1's files are on disk
            before.update({p.name: p.read_bytes() for p in tmp_path.iterdir()})
        return loss * (float("nan") if n >= 13 else 1.0)

    with pytest.raises(MnistCnnError, match="lower --lr.*last good checkpoint \\(epoch 1\\)"):
        train(replace(BASE, out=str(tmp_path / "m.pth"), save=True), data=small, log=quiet,
              criterion=counting(nan_from_epoch_two))
    assert set(before) == {"m.pth", "m.json", "m.state.pt"}
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # untouched, nothing new
    checkpoint.load(tmp_path / "m.pth")


def paused(args, env, pause_at):
    """Start `args` with MNIST_CNN_PAUSE_AT=EPOCH:STEP:MARKER; return the process once it waits before that step
    (it wrote MARKER)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "MNIST_CNN_PAUSE_AT": pause_at})
    marker = pause_at.split(":", 2)[2]
    wait_for(lambda: os.path.exists(marker), proc)
    return proc


def test_sigkill_then_resume_then_sigint_then_resume(tmp_path, mnist_dir):
    """The issue's check, through the CLI: SIGKILL mid-epoch, resume, Ctrl-C, resume; 2 epochs, sound files. Each
    signal lands while the run waits at a known step (MNIST_CNN_PAUSE_AT), never wherever the loop happens to be."""
    out = tmp_path / "m.pth"
    args = [sys.executable, "-m", "mnist_cnn", "train", "--data-dir", str(mnist_dir), "--train-subset", "1000",
            "--batch-size", "50", "--epochs", "2", "--seed", "0", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    state = resume.state_path(out)

    first = paused(args, env, f"2:5:{tmp_path / 'first'}")  # epoch 1 finished and saved; waiting before step 5
    first.kill()
    first.communicate()
    assert resume.load_state(state)["epoch"] == 1 and checkpoint.load(out)[1]["history"][0]["epoch"] == 1

    second = paused([*args, "--resume"], env, f"2:7:{tmp_path / 'second'}")  # epoch 2 again, waiting before step 7
    assert "resuming at epoch 2 step 0" in second.stdout.readline()
    second.send_signal(signal.SIGINT)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 130, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "interrupted by SIGINT in epoch 2/2 at step 7/20" in err and "mnist-cnn train --resume --out" in err
    assert (resume.load_state(state)["epoch"], resume.load_state(state)["step"]) == (1, 7)

    third = run_cli("train", "--data-dir", mnist_dir, "--out", out, "--resume", "--json")
    assert third.returncode == 0, third.stderr
    history = json.loads(third.stdout)["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["test_accuracy"] > 0.8
    model, meta = checkpoint.load(out)
    assert meta["history"] == history and meta["train_args"]["train_subset"] == 1000
    assert resume.load_state(state)["epoch"] == 2
    assert no_temp_files(tmp_path)
    assert_one_line_error(run_cli("train", "--data-dir", mnist_dir, "--out", out, "--resume"))  # already done


# -----------------------------------------------------------------------------
# distributed


def test_shards_are_disjoint_and_cover_the_epoch():
    perm = torch.randperm(963, generator=torch.Generator().manual_seed(0))
    pieces = [distributed.shard_batches(perm, 64, distributed.World(r, 4, r)) for r in range(4)]
    assert len({len(p) for p in pieces}) == 1  # same number of steps on every rank
    seen = torch.cat([torch.cat(p) for p in pieces])
    assert seen.numel() == seen.unique().numel() == 963 - 3  # disjoint; the 3-image tail < 4 ranks is dropped
    assert [p[0].numel() for p in pieces] == [16] * 4  # per-rank batch = global / world
    with pytest.raises(ConfigError, match="global batch"):
        distributed.per_rank_batch(65, distributed.World(0, 2, 0))


def test_torchrun_two_processes(tmp_path, mnist_dir):
    """`torchrun --nproc_per_node=2` on loopback with gloo: one checkpoint, rank 0 alone speaks, disjoint shards."""
    idx = tmp_path / "indices"
    idx.mkdir()
    out = tmp_path / "ddp" / "m.pth"
    env = {**os.environ, "MNIST_CNN_DEBUG_INDICES": str(idx), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--standalone", "-m", "mnist_cnn", "train",
                           "--data-dir", str(mnist_dir), "--train-subset", "2000", "--epochs", "1", "--seed", "0",
                           "--out", str(out), "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # only rank 0 printed: stdout is exactly one JSON document
    assert result["history"][0]["test_accuracy"] >= 0.80
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.json", "m.pth", "m.state.pt"]
    model, meta = checkpoint.load(out)
    assert meta["history"] == result["history"]
    ranks = [set(map(int, (idx / f"rank{r}.txt").read_text().split())) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 1000 and not ranks[0] & ranks[1]
    assert ranks[0] | ranks[1] == set(range(2000))


# -----------------------------------------------------------------------------
# guards: one line each


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, mnist_dir):
    d = tmp_path_factory.mktemp("bad")
    checkpoint.save(d / "good.pth", Net())
    raw = (d / "good.pth").read_bytes()
    (d / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    (d / "notckpt.pth").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    checkpoint.save(d / "other.pth", Net())
    meta = json.loads((d / "other.json").read_text())
    meta["model"]["channels"] = [16, 32]
    (d / "other.json").write_text(json.dumps(meta))
    (d / "trunc.state.pt").write_bytes(raw[:1000])
    torch.save({"a": torch.zeros(1)}, d / "foreign.state.pt")
    data = d / "data" / "MNIST" / "raw"  # the real files, one of them cut short
    data.mkdir(parents=True)
    for f in (mnist_dir / "MNIST" / "raw").iterdir():
        if not f.name.endswith(".gz"):
            (data / f.name).symlink_to(f.resolve())
    (data / "train-labels-idx1-ubyte").unlink()
    (data / "train-labels-idx1-ubyte").write_bytes((mnist_dir / "MNIST/raw/train-labels-idx1-ubyte").read_bytes()[:999])
    return d


@pytest.mark.parametrize("args, says", [
    (["train", "--data-dir", "{d}/data", "--epochs", "1"], "corrupt or truncated"),
    (["train", "--resume", "--out", "{d}/trunc.pth"], "not a readable training state"),
    (["evaluate", "--model", "{d}/truncated.pth"], "not a readable PyTorch checkpoint"),
])
def test_guards_one_line_through_the_cli(args, says, bad_files):
    args = [a.replace("{d}", str(bad_files)) for a in args]
    assert says in assert_one_line_error(run_cli(*args))


def test_guards(bad_files, small):
    """The same guards in-process (the CLI turns every MnistCnnError into one line, see test_cli.py)."""
    from mnist_cnn.data import load_mnist
    from mnist_cnn.errors import CheckpointError, DataError
    from mnist_cnn.model import ModelConfig

    d = bad_files
    for name, says in [("truncated.pth", "not a readable PyTorch checkpoint"),
                       ("notckpt.pth", "not a readable PyTorch checkpoint"),
                       ("other.pth", "do not fit the architecture"), ("none.pth", "no such checkpoint")]:
        with pytest.raises(CheckpointError, match=says):
            checkpoint.load(d / name)
    for name, says in [("trunc.state.pt", "not a readable training state"),
                       ("foreign.state.pt", "not an mnist-cnn training state"), ("none.state.pt", "no training state"),
                       ("good.pth", "not an mnist-cnn training state")]:
        with pytest.raises(CheckpointError, match=says):
            resume.load_state(d / name)
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_mnist(d / "data")
    with pytest.raises(ConfigError, match="--train-subset must be at least 1"):
        train(replace(BASE, train_subset=-5), data=small)
    with pytest.raises(ConfigError, match="fc_units must be a whole number in 1.."):
        ModelConfig(fc_units=-1)
    with pytest.raises(ConfigError, match="larger than its"):
        ModelConfig(kernel_size=15)
    with pytest.raises(ConfigError, match="--lr must be a positive number"):
        train(replace(BASE, lr=0.0), data=small)
    with pytest.raises(ConfigError, match="larger than the training set"):
        train(replace(BASE, train_subset=100, batch_size=200), data=small)
    with pytest.raises(MnistCnnError, match="diverged.*try a lower --lr"):  # a real divergence, no injection
        train(replace(BASE, optimizer="sgd", lr=1e6, epochs=1, out=str(d / "nan.pth"), save=True), data=small)
    assert not (d / "nan.pth").exists()  # a run that diverges in its first epoch writes nothing


def test_resume_refuses_contradicting_flags(small, tmp_path):
    cfg = replace(BASE, epochs=1, out=str(tmp_path / "m.pth"), save=True)
    train(cfg, data=small, log=quiet)
    with pytest.raises(ConfigError, match="--lr 0.5 differs"):
        train(replace(cfg, resume=True, lr=0.5, epochs=5), data=small, log=quiet)
    with pytest.raises(MnistCnnError, match="already finished"):
        train(replace(cfg, resume=True), data=small, log=quiet)
