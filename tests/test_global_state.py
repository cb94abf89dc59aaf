"""No hidden global state: importing the package, preprocessing an image, drawing a figure and training leave the
process as they found it (environment, Pillow's limits, matplotlib's backend, torch's threads and modes)."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import torch

from mnist_cnn.data import MNIST
from mnist_cnn.train import TrainConfig, train

CHECK = """
import json, os, sys
env = dict(os.environ)
from PIL import Image, ImageFile
pillow = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
import matplotlib
backend = matplotlib.get_backend()
import numpy as np
from mnist_cnn.predict import Classifier  # noqa: F401
from mnist_cnn.predict.preprocess import preprocess
preprocess(np.pad(np.full((12, 4), 255, np.uint8), 8))  # a stroke: decoded, cropped, centred
from mnist_cnn.insight.explain import figure_filters
from mnist_cnn.model import Net
figure_filters(Net(), sys.argv[1])
print(json.dumps({"env": dict(os.environ) == env, "changed": sorted(set(os.environ) ^ set(env)),
                  "pillow": (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == pillow,
                  "backend": [backend, matplotlib.get_backend()], "pyplot": "matplotlib.pyplot" in sys.modules}))
"""


def test_importing_predicting_and_drawing_change_nothing_process_wide(tmp_path):
    """In a fresh interpreter: no GOMP_SPINCOUNT (or anything) added to os.environ, Pillow's limits as they were,
    and a figure drawn without switching matplotlib's backend (svg here, so a switch to Agg would show)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "MPLBACKEND")}
    proc = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "filters.png")], capture_output=True,
                          text=True, env={**env, "MPLBACKEND": "svg"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["env"], seen["changed"]
    assert seen["pillow"]
    assert seen["backend"] == ["svg", "svg"] and not seen["pyplot"]
    assert (tmp_path / "filters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_cli_sets_gomp_spincount_for_its_own_process(tmp_path):
    """The entry point, not the import, sets it: `mnist-cnn` runs with it (its children inherit it)."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    code = ("import os; from mnist_cnn import cli\n"
            "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\nprint(os.environ.get('GOMP_SPINCOUNT'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "3000000"


def test_train_puts_back_threads_and_determinism(mnist):
    small = MNIST(mnist.train_images[:100], mnist.train_labels[:100], mnist.test_images[:100],
                  mnist.test_labels[:100])
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    lines = []
    try:
        torch.set_num_threads(1)
        cfg = TrainConfig(epochs=1, batch_size=50, device="cpu", quiet=True, threads=2, deterministic=True)
        train(replace(cfg), data=small, log=lines.append)
        assert "2 threads" in lines[0]  # it did change them while it ran
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled() == before[1]
        assert (torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")) == before[2:]
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
