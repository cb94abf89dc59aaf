"""The fused conv1 + max-pool + ReLU kernel (fused.py, fused.c) against the eager layers it replaces."""

import shutil

import pytest
import torch
import torch.nn.functional as F

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
    assert fused.applies(x, net.conv1, net.pool)
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


def test_the_model_uses_it_except_where_it_cannot():
    net = Net()
    x = torch.randn(2, 1, 28, 28)
    assert fused.applies(x, net.conv1, net.pool)
    assert not fused.applies(x.clone().requires_grad_(), net.conv1, net.pool)  # saliency needs d/dx: eager
    assert not fused.applies(x.double(), net.conv1, net.pool)
    small = Net(ModelConfig(channels=(8, 16)))  # 8 channels: not a multiple of 16
    assert not fused.applies(x, small.conv1, small.pool)
    wide = Net(ModelConfig(pool_kernel=3, pool_stride=2))
    assert not fused.applies(x, wide.conv1, wide.pool)
    xg = x.clone().requires_grad_()
    (net(xg)[:, 3].sum()).backward()  # the eager path gives the input gradient
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_off_switch_and_a_missing_compiler_fall_back_to_the_same_numbers(monkeypatch, tmp_path):
    torch.manual_seed(3)
    net = Net()
    x = torch.randn(3, 1, 28, 28)
    with_kernel = net(x)
    try:
        monkeypatch.setenv("MNIST_CNN_FUSED", "0")
        fused._load.cache_clear()
        assert not fused.applies(x, net.conv1, net.pool) and fused.why_not() == "off (MNIST_CNN_FUSED=0)"
        torch.testing.assert_close(net(x), with_kernel, atol=1e-5, rtol=1e-5)

        monkeypatch.delenv("MNIST_CNN_FUSED")
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
        monkeypatch.setenv("MNIST_CNN_CACHE", str(tmp_path / "cache"))  # an empty cache: it must compile
        fused._load.cache_clear()
        assert not fused.applies(x, net.conv1, net.pool)
        assert fused.why_not().startswith("unavailable (")
        torch.testing.assert_close(net(x), with_kernel, atol=1e-5, rtol=1e-5)
    finally:
        monkeypatch.undo()
        fused._load.cache_clear()
    assert fused.applies(x, net.conv1, net.pool)


def test_an_unwritable_cache_compiles_into_the_temp_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MNIST_CNN_CACHE", str(blocker / "cache"))  # mkdir fails: its parent is a file
    try:
        fused._load.cache_clear()
        net = Net()
        assert fused.applies(torch.zeros(1, 1, 28, 28), net.conv1, net.pool)
    finally:
        monkeypatch.undo()
        fused._load.cache_clear()
