"""The tutorial's CNN, built from a ModelConfig.

    input        (B, 1, 28, 28)
    conv1 3x3    (B, 32, 26, 26)   28 - 3 + 1 = 26           320 params
    relu, pool   (B, 32, 13, 13)   floor((26 - 2) / 2) + 1     0 params
    conv2 3x3    (B, 64, 11, 11)   13 - 3 + 1 = 11        18,496 params
    relu, pool   (B, 64, 5, 5)     floor((11 - 2) / 2) + 1 = 5 (floor of 5.5)
    flatten      (B, 1600)
    fc1, relu    (B, 128)                                204,928 params
    fc2          (B, 10)   logits; softmax is in the loss  1,290 params
                                                   total 225,034

The flatten size (1600 above) is never written down: a dummy 28x28 tensor goes through the conv part once
and its size is read off, the trick the tutorial's Q&A describes. For the default config the state_dict keys are
exactly the tutorial's (conv1.*, conv2.*, fc1.*, fc2.*), so the tutorial's own `Net` loads our weights.

Beyond the tutorial (all off by default): `padding` keeps each conv's side ("same" at padding 1 for kernel 3),
`batch_norm` puts a BatchNorm2d (bn1, bn2) between each conv and its pool, `dropout` acts before fc1 and fc2;
`--recipe best` uses them (config.RECIPES). `cfg.mean`/`cfg.std` are the input normalisation the model was
trained with: the model's input contract, read by every command that feeds it images.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from mnist_cnn.config import ModelConfig
from mnist_cnn.errors import ConfigError
from mnist_cnn.perf import fused as fused_c


class Net(nn.Module):
    """The tutorial's CNN. `fused`: run conv1 + pool + ReLU as fused.c's one C loop on the CPU (perf/fused.py).
    None (auto): where these layers allow it and a C compiler is here, unless MNIST_CNN_FUSED=0; False: never;
    True: always on the CPU, or ConfigError. Decided once, here: `self.fused` says whether, `self.fused_reason`
    why not (None when on). Per call the eager layers still run for a GPU input or one that needs a gradient."""

    def __init__(self, cfg: ModelConfig = ModelConfig(), fused: bool | None = None):
        super().__init__()
        self.cfg = cfg
        c1, c2 = cfg.channels
        self.conv1 = nn.Conv2d(1, c1, cfg.kernel_size, padding=cfg.padding)
        self.conv2 = nn.Conv2d(c1, c2, cfg.kernel_size, padding=cfg.padding)
        if cfg.batch_norm:  # only then: the default state_dict keys stay exactly the tutorial's
            self.bn1, self.bn2 = nn.BatchNorm2d(c1), nn.BatchNorm2d(c2)
        self.pool = nn.MaxPool2d(cfg.pool_kernel, cfg.pool_stride)
        self.dropout = nn.Dropout(cfg.dropout)
        if fused is False or (fused is None and os.environ.get("MNIST_CNN_FUSED") == "0"):
            self.fused_reason = "off (fused=False)" if fused is False else "off (MNIST_CNN_FUSED=0)"
        elif cfg.batch_norm:
            self.fused_reason = "not for batch norm (it sits between conv1 and its pool)"
            if fused:
                raise ConfigError(f"fused=True, but the fused conv1 kernel is {self.fused_reason}")
        else:
            self.fused_reason = fused_c.unsupported(self.conv1, self.pool, cfg.image_size)
            if fused and self.fused_reason:
                raise ConfigError(f"fused=True, but the fused conv1 kernel is {self.fused_reason}")
        self.fused = self.fused_reason is None
        with torch.no_grad():  # the tutorial's trick: let a dummy image tell us the flatten size
            self.flat_features = self.features(torch.zeros(1, 1, cfg.image_size, cfg.image_size)).numel()
        self.fc1 = nn.Linear(self.flat_features, cfg.fc_units)
        self.fc2 = nn.Linear(cfg.fc_units, cfg.num_classes)

    def features(self, x, trace: dict | None = None):  # (B, 1, 28, 28) -> (B, C2, 5, 5)
        # Pool, then ReLU: the tutorial writes relu-then-pool, and it is the same function with the same gradients
        # (ReLU is monotonic, so max and ReLU commute; tests/test_bench.py checks it against the tutorial's Net),
        # but ReLU and its backward then touch 4x fewer values. Forward + backward at batch 64, bf16,
        # channels_last, 1 thread, best of 90 steps: 19.3 ms relu-then-pool, 10.1 ms pool-then-relu.
        # On the CPU the first block runs as one hand-written C loop (fused.py: the same function; forward +
        # backward at batch 64, bf16, 2 threads: 1.60 ms eager, 0.50 ms fused). A trace needs conv1's own output,
        # which the C loop never makes, so tracing runs the eager path.
        t = {} if trace is None else trace
        if trace is None and self.fused and fused_c.fits(x, self.conv1, self.cfg.image_size):
            x = fused_c.conv1_pool_relu(x, self.conv1)  # (B, 1, 28, 28) -> (B, C1, 13, 13)
        else:
            t["conv1"] = x = self._norm(1, self.conv1(x))  # (B, C1, 26, 26), before its ReLU
            x = F.relu(self.pool(x))
        t["pool1"] = x  # (B, C1, 13, 13)
        t["conv2"] = x = self._norm(2, self.conv2(x))  # (B, C2, 11, 11), before its ReLU
        t["pool2"] = x = F.relu(self.pool(x))  # (B, C2, 5, 5)
        return x

    def _norm(self, k: int, x):  # batch norm k (1 or 2) where the config has it, else x unchanged
        return getattr(self, f"bn{k}")(x) if self.cfg.batch_norm else x

    def forward(self, x, trace: dict | None = None):  # (B, 1, 28, 28) normalized -> (B, 10) logits
        """trace: a dict that receives every intermediate tensor by layer name, in order (explain's layer view):
        conv1 and conv2 before their ReLU, pool1, pool2, fc1 (after its ReLU) and logits."""
        t = {} if trace is None else trace
        x = torch.flatten(self.features(x, trace), 1)  # (B, 1600)
        t["fc1"] = x = F.relu(self.fc1(self.dropout(x)))  # (B, 128)
        t["logits"] = x = self.fc2(self.dropout(x))  # (B, 10)
        return x


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes of Net(cfg), built on PyTorch's "meta" device (shapes, no memory): a checkpoint's
    tensors are compared with these before a real model is built."""
    with torch.device("meta"):
        net = Net(cfg, fused=False)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
