"""Fuzzing the parsers a user's file reaches, with hypothesis: each gives its result or its one error type, never
anything else. Example counts are bounded so the file runs in well under a minute; docs/reliability.md has the
larger counts run once while developing and what they found.
"""

import io
import os
import shutil
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mnist_cnn import checkpoint, resume
from mnist_cnn.data import DataError, parse_idx
from mnist_cnn.errors import CheckpointError
from mnist_cnn.model import Net

SCALE = int(os.environ.get("MNIST_CNN_FUZZ_SCALE", "1"))  # e.g. 20 for a long run; the suite uses 1
FAST = settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# -----------------------------------------------------------------------------
# IDX parser


def parses_or_refuses(raw):
    try:
        a = parse_idx(raw)
    except DataError:
        return None
    assert isinstance(a, np.ndarray) and a.dtype == np.uint8
    assert 4 + 4 * a.ndim + a.size == len(raw)
    return a


@FAST
@given(st.binary(max_size=200))
def test_idx_parser_on_arbitrary_bytes(raw):
    parses_or_refuses(raw)


@FAST
@given(dtype=st.sampled_from([0x08, 0x09, 0x0B, 0x0D, 0xFF]), dims=st.lists(st.integers(0, 2**32 - 1), max_size=5),
       payload=st.binary(max_size=64), cut=st.integers(-8, 8))
@example(dtype=0x08, dims=[65536] * 4, payload=b"", cut=0)  # found here: 65536**4 wrapped to 0 in int64
@example(dtype=0x08, dims=[0, 3_036_988_439, 3_037_012_561], payload=b"", cut=0)  # found here: numpy ValueError
@example(dtype=0x08, dims=[2, 3], payload=bytes(6), cut=0)
def test_idx_parser_on_plausible_headers(dtype, dims, payload, cut):
    raw = struct.pack(">HBB", 0, dtype, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload
    raw = raw[:len(raw) + cut] if cut < 0 else raw + bytes(cut)
    a = parses_or_refuses(raw)
    if a is not None:
        assert list(a.shape) == dims


# -----------------------------------------------------------------------------
# checkpoint and training-state loaders


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real checkpoint (.pth + .json) and a real training state, as bytes."""
    d = tmp_path_factory.mktemp("good")
    model = Net()
    opt = torch.optim.Adam(model.parameters())
    model(torch.zeros(2, 1, 28, 28)).sum().backward()
    opt.step()
    checkpoint.save(d / "m.pth", model)
    resume.save_state(d / "m.state.pt", {
        "model": model.state_dict(), "model_config": model.cfg.to_dict(), "train_args": {"epochs": 2},
        "optimizer": opt.state_dict(), "scheduler": None, "epoch": 1, "step": 0,
        "generator": torch.Generator().get_state(), "torch_rng": [torch.get_rng_state()], "history": [],
        "partial": {}})
    resume.load_state(d / "m.state.pt")  # the unmutated file is accepted
    return d


def mutate(raw: bytes, data) -> bytes:
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    b = bytearray(raw)
    if kind == "truncate":
        return bytes(b[:data.draw(st.integers(0, len(b) - 1))])
    if kind == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=16)):
            b[pos] ^= data.draw(st.integers(1, 255))
        return bytes(b)
    pos = data.draw(st.integers(0, len(b)))
    b[pos:pos + data.draw(st.integers(0, 300))] = data.draw(st.binary(max_size=300))
    return bytes(b)


def loads_or_refuses(load, path):
    """The loaded result, or None after one CheckpointError line. The files are a valid checkpoint with a few
    hundred bytes changed: the work is bounded by their size, not by a clock."""
    try:
        result = load(path)
    except CheckpointError as e:
        assert "\n" not in str(e)
        result = None
    return result


@SLOW
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@given(raw=st.binary(max_size=2000))
def test_checkpoint_loaders_on_arbitrary_bytes(raw, tmp_path):
    (tmp_path / "x.pth").write_bytes(raw)
    assert loads_or_refuses(checkpoint.load, tmp_path / "x.pth") is None
    assert loads_or_refuses(resume.load_state, tmp_path / "x.pth") is None


@SLOW
@given(data=st.data())
def test_checkpoint_loader_on_damaged_checkpoints(data, good, tmp_path):
    raw = (good / "m.pth").read_bytes()
    damaged = mutate(raw, data)
    (tmp_path / "x.pth").write_bytes(damaged)
    shutil.copy(good / "m.json", tmp_path / "x.json")
    result = loads_or_refuses(checkpoint.load, tmp_path / "x.pth")
    assert (result is not None) == (damaged == raw)  # the recorded sha256 catches every change


@SLOW
@given(data=st.data())
def test_state_loader_on_damaged_states(data, good, tmp_path):
    damaged = mutate((good / "m.state.pt").read_bytes(), data)
    (tmp_path / "x.state.pt").write_bytes(damaged)
    state = loads_or_refuses(resume.load_state, tmp_path / "x.state.pt")
    if state is not None:  # bytes torch does not check (tensor payloads) may change; the structure held
        assert state["format"] == resume.FORMAT and isinstance(state["model"], dict)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint that would run code on load is refused, and the code never runs."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    buf = io.BytesIO()
    torch.save({"w": Evil()}, buf, pickle_module=pickle)
    for name in ("evil.pth", "evil.state.pt"):
        (tmp_path / name).write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError):
        resume.load_state(tmp_path / "evil.state.pt")
    assert (tmp_path / "victim").is_dir()
