"""CUDA-only checks (pytest -m cuda; skipped where no GPU is present; bench/device_check.sh runs them)."""

from dataclasses import replace

import pytest
import torch

from mnist_cnn.data import MNIST
from mnist_cnn.evaluate import evaluate
from mnist_cnn.train import TrainConfig, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BASE = TrainConfig(epochs=1, batch_size=64, seed=0, device="cuda", quiet=True)


@pytest.fixture(scope="module")
def small(mnist):
    return MNIST(mnist.train_images[:4096], mnist.train_labels[:4096], mnist.test_images[:2000],
                 mnist.test_labels[:2000])


def test_cuda_training_keeps_the_data_on_the_device(small):
    """The dataset goes to the GPU once: far fewer host-to-device copies than the 64 training steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        model, history = train(BASE, data=small, log=lambda *a, **k: None)
    copies = sum(e.count for e in prof.key_averages() if "HtoD" in e.key)
    assert 1 <= copies < 32, copies
    assert next(model.parameters()).is_cuda and history[-1]["test_accuracy"] > 0.85


def test_cuda_deterministic_runs_are_bit_identical(small):
    cfg = replace(BASE, deterministic=True)
    a, _ = train(cfg, data=small, log=lambda *a, **k: None)
    b, _ = train(cfg, data=small, log=lambda *a, **k: None)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_cuda_and_cpu_agree_on_the_test_set(small):
    model, _ = train(BASE, data=small, log=lambda *a, **k: None)
    on_gpu = evaluate(model, small.test_images, small.test_labels, dtype=torch.float32)
    on_cpu = evaluate(model.cpu(), small.test_images, small.test_labels, dtype=torch.float32)
    assert abs(on_gpu["accuracy"] - on_cpu["accuracy"]) <= 0.002
