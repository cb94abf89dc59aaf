"""The fused conv1 + max-pool + ReLU kernel (fused.py, fused.c) against the eager layers it replaces."""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mnist_cnn.errors import ConfigError
from mnist_cnn.model import ModelConfig, Net
from mnist_cnn.perf import fused

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler here")


def eager(x, conv):
    return F.relu(F.max_pool2d(conv(x), 2))


def grads(out, conv, g):
    return torch.autograd.grad(out, [conv.weight, conv.bias], g)


@pytest.mark.parametrize("cfg, batch", [(ModelConfig(), 5), (ModelConfig(channels=(16, 32), kernel_size=5), 3),
                                        (ModelConfig(kernel_size=2), 1)])
def test_forward_and_gradients_match_eager_fp32(cfg, batch):
    torch.manual_seed(0)
    net = Net(cfg)
    x = torch.randn(batch, 1, 28, 28)
    assert net.fused and fused.fits(x, net.conv1, 28)
    out, ref = fused.conv1_pool_relu(x, net.conv1), eager(x, net.conv1)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(grads(out, net.conv1, g), grads(ref, net.conv1, g), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ties_pick_the_same_window_position_as_max_pool2d():
    # A one-tap kernel on a 0/1 image: conv values are exact integers and most 2x2 windows hold ties, so the
    # weight gradient depends on which tied position gets it. max_pool2d gives it to the first, row-major.
    net = Net()
    with torch.no_grad():
        net.conv1.weight.zero_()
        net.conv1.weight[:, 0, 0, 0] = 1.0
        net.conv1.bias.fill_(0.5)
    x = torch.randint(0, 2, (4, 1, 28, 28)).float()
    out, ref = fused.conv1_pool_relu(x, net.conv1), eager(x, net.conv1)
    assert torch.equal(out, ref)
    g = torch.randint(-3, 4, ref.shape).float()
    for a, b in zip(grads(out, net.conv1, g), grads(ref, net.conv1, g), strict=True):
        assert torch.equal(a, b)


def test_bf16_autocast_output_is_bf16_and_close():
    torch.manual_seed(1)
    net = Net()
    x = torch.randn(8, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused.conv1_pool_relu(x, net.conv1)
        approx = eager(x, net.conv1)  # bf16 inputs and weights: further from fp32 than ours
    assert out.dtype == torch.bfloat16
    exact = eager(x, net.conv1)
    torch.testing.assert_close(out.float(), exact, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(approx.float(), exact, atol=5e-2, rtol=3e-2)


def test_backward_is_deterministic_and_thread_count_changes_only_rounding():
    torch.manual_seed(2)
    net = Net()
    x = torch.randn(64, 1, 28, 28)
    g = torch.randn(64, 32, 13, 13)
    before = torch.get_num_threads()
    try:
        runs = {}
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            runs.setdefault(threads, []).append(grads(fused.conv1_pool_relu(x, net.conv1), net.conv1, g))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*runs[2], strict=True))
    for a, b in zip(runs[1][0], runs[2][0], strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


def runs_fused(net, x) -> bool:
    """Whether the autograd graph of net(x) holds fused.c's node (weights need a gradient, the input does not)."""
    todo, seen = [net(x).grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__.startswith("_Conv1PoolReLU"):
            return True
        todo += [f for f, _ in fn.next_functions]
    return False


def test_the_model_decides_once_and_checks_each_call():
    net = Net()
    x = torch.randn(2, 1, 28, 28)
    assert net.fused and net.fused_reason is None and runs_fused(net, x)
    xg = x.clone().requires_grad_()
    assert not runs_fused(net, xg)  # saliency needs d/dx: eager, for this call only
    (net(xg)[:, 3].sum()).backward()  # the eager path gives the input gradient
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert not fused.fits(x.double(), net.conv1, 28) and runs_fused(net, x)
    small = Net(ModelConfig(channels=(8, 16)))
    assert not small.fused and "multiple of 16" in small.fused_reason and not runs_fused(small, x)
    wide = Net(ModelConfig(pool_kernel=3, pool_stride=2))
    assert not wide.fused and "pool" in wide.fused_reason
    off = Net(fused=False)
    assert off.fused_reason == "off (fused=False)" and not runs_fused(off, x)
    with pytest.raises(ConfigError, match="multiple of 16"):
        Net(ModelConfig(channels=(8, 16)), fused=True)
    assert Net(fused=True).fused


def test_off_switch_and_a_missing_compiler_fall_back_to_the_same_numbers(monkeypatch, tmp_path):
    torch.manual_seed(3)
    net = Net()
    x = torch.randn(3, 1, 28, 28)
    with_kernel = net(x)
    try:
        monkeypatch.setenv("MNIST_CNN_FUSED", "0")  # read when a Net is built, never per call
        off = Net()
        off.load_state_dict(net.state_dict())
        assert not off.fused and off.fused_reason == "off (MNIST_CNN_FUSED=0)"
        torch.testing.assert_close(off(x), with_kernel, atol=1e-5, rtol=1e-5)

        monkeypatch.delenv("MNIST_CNN_FUSED")
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
        monkeypatch.setenv("MNIST_CNN_CACHE", str(tmp_path / "cache"))  # an empty cache: it must compile
        fused._load.cache_clear()
        none = Net()
        none.load_state_dict(net.state_dict())
        assert none.fused_reason.startswith("unavailable (") and "no-such-cc" in none.fused_reason
        torch.testing.assert_close(none(x), with_kernel, atol=1e-5, rtol=1e-5)
    finally:
        monkeypatch.undo()
        fused._load.cache_clear()
    # each model keeps its own decision: building others since changed none of them
    assert net.fused and runs_fused(net, x) and off.fused_reason == "off (MNIST_CNN_FUSED=0)"
    assert none.fused_reason.startswith("unavailable (")


# -----------------------------------------------------------------------------
# the compiled library's cache on a shared machine

FOREIGN_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) { FILE *f = fopen(MARKER, "w"); if (f) fclose(f); }
void conv1_pool_relu_forward(void) {}
void conv1_pool_relu_backward(void) {}
"""


@pytest.fixture(scope="module")
def logged_cc(tmp_path_factory):
    """The real compiler behind a script that logs each call (so a test sees whether anything compiled)."""
    folder = tmp_path_factory.mktemp("cc")
    log, cc = folder / "cc.log", folder / "cc"
    log.write_text("")
    cc.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {shutil.which("cc") or shutil.which("gcc")} "$@"\n')
    cc.chmod(0o755)
    return cc, log


@pytest.fixture
def compiler(logged_cc, monkeypatch):
    """CC set to the logging compiler for one test; returns its log."""
    monkeypatch.setenv("CC", str(logged_cc[0]))
    fused._load.cache_clear()
    yield logged_cc[1]
    monkeypatch.undo()
    fused._load.cache_clear()


def build(monkeypatch, cache):
    monkeypatch.setenv("MNIST_CNN_CACHE", str(cache))
    fused._load.cache_clear()
    return Net()


def plant(folder, name, tmp_path):
    """A library another user could leave in `folder` under our kernel's name, with a matching sha256 beside it;
    loading it (running its constructor) creates the returned marker file."""
    marker = tmp_path / f"loaded-{folder.name}-{len(list(tmp_path.iterdir()))}"
    src = tmp_path / "foreign.c"
    src.write_text(FOREIGN_C)
    so = folder / name
    subprocess.run([shutil.which("cc") or "gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', str(src), "-o", str(so)],
                   check=True)
    so.with_suffix(".sha256").write_text(hashlib.sha256(so.read_bytes()).hexdigest() + "\n")
    return marker


@pytest.fixture(scope="module")
def learnt(logged_cc, tmp_path_factory):
    """(a private cache, the file name our kernel for Net() gets there), from one build with the logging compiler."""
    cache = tmp_path_factory.mktemp("learn")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CC", str(logged_cc[0]))
        assert build(mp, cache).fused
    fused._load.cache_clear()
    (so,) = (cache / "kernels").glob("*.so")
    return cache, so.name


@pytest.fixture
def kernel_name(learnt):
    return learnt[1]


@pytest.mark.parametrize("unsafe", ["group-writable", "other-owned", "symlink"])
def test_a_library_planted_in_an_unsafe_cache_is_never_loaded(unsafe, tmp_path, monkeypatch, compiler, kernel_name):
    cache, folder = tmp_path / unsafe, tmp_path / unsafe / "kernels"
    if unsafe == "symlink":  # a link to a private folder of ours: someone else could re-point it
        real = tmp_path / "elsewhere"
        real.mkdir(mode=0o700)
        cache.mkdir()
        folder.symlink_to(real)
    else:
        folder.mkdir(parents=True, mode=0o700)
    marker = plant(folder, kernel_name, tmp_path)
    if unsafe == "group-writable":
        folder.chmod(0o770)
    elif unsafe == "other-owned":
        if os.geteuid() != 0:
            pytest.skip("making a folder another user owns needs root")
        os.chown(folder, 65534, 65534)
    calls = len(compiler.read_text().splitlines())
    torch.manual_seed(4)
    net = build(monkeypatch, cache)
    x = torch.randn(3, 1, 28, 28)
    assert net.fused and runs_fused(net, x)  # compiled afresh into a private temp folder ...
    compiled = compiler.read_text().splitlines()[calls:]
    assert compiled and all("/mnist-cnn-kernel-" in line for line in compiled)
    assert not marker.exists()  # ... and the planted file never ran
    ref = Net(fused=False)
    ref.load_state_dict(net.state_dict())
    torch.testing.assert_close(net(x), ref(x), atol=1e-5, rtol=1e-5)
    assert not marker.exists()


def test_the_private_cache_loads_only_what_it_recorded(tmp_path, monkeypatch, compiler, learnt):
    cache, kernel_name = learnt  # compiled into it: the .so and its .sha256
    calls = len(compiler.read_text().splitlines())
    assert build(monkeypatch, cache).fused
    assert len(compiler.read_text().splitlines()) == calls  # loaded from the cache, nothing compiled
    recorded = (cache / "kernels" / kernel_name).with_suffix(".sha256").read_text()
    marker = plant(cache / "kernels", kernel_name, tmp_path)
    (cache / "kernels" / kernel_name).with_suffix(".sha256").write_text(recorded)  # swapped .so, old hash
    assert build(monkeypatch, cache).fused
    assert len(compiler.read_text().splitlines()) > calls and not marker.exists()  # compiled over, never loaded


def test_an_unwritable_cache_compiles_into_a_private_temp_folder(monkeypatch, tmp_path, compiler):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    calls = len(compiler.read_text().splitlines())
    net = build(monkeypatch, blocker / "cache")  # mkdir fails: its parent is a file; nothing cached anywhere
    assert net.fused and runs_fused(net, torch.zeros(2, 1, 28, 28))
    assert len(compiler.read_text().splitlines()) > calls  # an empty cache: it compiled, here and now
    out = compiler.read_text().split(" -o ")[-1].split()[0]  # where the compiler wrote the library
    folder = Path(out).parent
    assert folder.name.startswith("mnist-cnn-kernel-") and str(folder.parent) == tempfile.gettempdir()
    assert not folder.exists()  # removed once the library was loaded
