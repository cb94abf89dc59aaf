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
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from mnist_cnn.errors import ConfigError
from mnist_cnn.perf import fused

# Upper bounds on a config, far above anything useful on 28x28 digits; they stop a checkpoint description (or a
# flag) from asking for gigabytes before anything else is checked. Lower bounds are 1 (dropout: [0, 1)).
MAX_CHANNELS, MAX_FC_UNITS, MAX_CLASSES, MAX_IMAGE_SIZE = 4096, 65536, 10000, 1024
INT_FIELDS = ("kernel_size", "pool_kernel", "pool_stride", "fc_units", "num_classes", "image_size")


@dataclass(frozen=True)
class ModelConfig:
    channels: tuple[int, int] = (32, 64)
    kernel_size: int = 3
    pool_kernel: int = 2
    pool_stride: int = 2
    fc_units: int = 128
    dropout: float = 0.0  # the tutorial has none; applied before fc1 and fc2 when > 0
    num_classes: int = 10
    image_size: int = 28

    def __post_init__(self):
        if not isinstance(self.channels, (list, tuple)) or len(self.channels) != 2:
            raise ConfigError(f"channels needs two numbers (conv1 conv2), got {self.channels!r}"[:200])
        object.__setattr__(self, "channels", tuple(_whole("channels", c, MAX_CHANNELS) for c in self.channels))
        caps = {"fc_units": MAX_FC_UNITS, "num_classes": MAX_CLASSES, "image_size": MAX_IMAGE_SIZE}
        for name in INT_FIELDS:
            _whole(name, getattr(self, name), caps.get(name, MAX_IMAGE_SIZE))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}"[:200])
        feature_sizes(self)  # refuses a config whose feature map shrinks below 1x1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _whole(name: str, value, cap: int) -> int:
    """A config value that must be a whole number in 1..cap (JSON's 1e11 or "32" or true are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= cap:
        raise ConfigError(f"{name} must be a whole number in 1..{cap:,}, got {value!r}"[:200])
    return int(value)


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes Net(cfg) has, from the formulas alone (nothing allocated): a checkpoint's tensors
    are compared with these before any model is built."""
    c1, c2 = cfg.channels
    k, side = cfg.kernel_size, feature_sizes(cfg)[-1][1]
    return {"conv1.weight": (c1, 1, k, k), "conv1.bias": (c1,), "conv2.weight": (c2, c1, k, k), "conv2.bias": (c2,),
            "fc1.weight": (cfg.fc_units, c2 * side * side), "fc1.bias": (cfg.fc_units,),
            "fc2.weight": (cfg.num_classes, cfg.fc_units), "fc2.bias": (cfg.num_classes,)}


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output side of a conv or pool layer: floor((W - K + 2P) / S) + 1."""
    return (size - kernel + 2 * padding) // stride + 1


def feature_sizes(cfg: ModelConfig) -> list[tuple[str, int]]:
    """Side length after each layer, by the formula; raises ConfigError if any side drops below 1."""
    sizes, side = [], cfg.image_size
    for layer, k, s in (("conv1", cfg.kernel_size, 1), ("pool1", cfg.pool_kernel, cfg.pool_stride),
                        ("conv2", cfg.kernel_size, 1), ("pool2", cfg.pool_kernel, cfg.pool_stride)):
        if side < k:
            raise ConfigError(f"{layer}: kernel {k} is larger than its {side}x{side} input "
                              f"(the feature map would shrink below 1x1); use a smaller kernel or pool")
        side = conv_out(side, k, s)
        sizes.append((layer, side))
    return sizes


class Net(nn.Module):
    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        c1, c2 = cfg.channels
        self.conv1 = nn.Conv2d(1, c1, cfg.kernel_size)
        self.conv2 = nn.Conv2d(c1, c2, cfg.kernel_size)
        self.pool = nn.MaxPool2d(cfg.pool_kernel, cfg.pool_stride)
        self.dropout = nn.Dropout(cfg.dropout)
        with torch.no_grad():  # the tutorial's trick: let a dummy image tell us the flatten size
            self.flat_features = self.features(torch.zeros(1, 1, cfg.image_size, cfg.image_size)).numel()
        self.fc1 = nn.Linear(self.flat_features, cfg.fc_units)
        self.fc2 = nn.Linear(cfg.fc_units, cfg.num_classes)

    def features(self, x):  # (B, 1, 28, 28) -> (B, C2, 5, 5)
        # Pool, then ReLU: the tutorial writes relu-then-pool, and it is the same function with the same gradients
        # (ReLU is monotonic, so max and ReLU commute; tests/test_bench.py checks it against the tutorial's Net),
        # but ReLU and its backward then touch 4x fewer values. Forward + backward at batch 64, bf16,
        # channels_last, 1 thread, best of 90 steps: 19.3 ms relu-then-pool, 10.1 ms pool-then-relu.
        # On the CPU the first block runs as one hand-written C loop (fused.py: the same function; forward +
        # backward at batch 64, bf16, 2 threads: 1.60 ms eager, 0.50 ms fused).
        if fused.applies(x, self.conv1, self.pool):
            x = fused.conv1_pool_relu(x, self.conv1)  # (B, 1, 28, 28) -> (B, C1, 13, 13)
        else:
            x = F.relu(self.pool(self.conv1(x)))  # (B, C1, 26, 26) -> (B, C1, 13, 13)
        return F.relu(self.pool(self.conv2(x)))  # (B, C2, 11, 11) -> (B, C2, 5, 5)

    def forward(self, x):  # (B, 1, 28, 28) normalized -> (B, 10) logits
        x = torch.flatten(self.features(x), 1)  # (B, 1600)
        x = F.relu(self.fc1(self.dropout(x)))  # (B, 128)
        return self.fc2(self.dropout(x))  # (B, 10)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
