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
`--recipe best` uses them (train.py). `mean`/`std` are the input normalisation the model was trained with
(the tutorial's 0.5/0.5 unless the dataset's own statistics were used): part of the model's input contract,
so every command that feeds it images reads them from the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from mnist_cnn.errors import ConfigError
from mnist_cnn.perf import fused


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
    padding: int = 0  # the tutorial's convs have none (26x26 after conv1); 1 keeps 28x28 for kernel 3
    batch_norm: bool = False  # the tutorial has none; BatchNorm2d after conv1 and conv2 (before pool and ReLU)
    mean: float = 0.5  # input normalisation, (x/255 - mean) / std: the tutorial's Normalize((0.5,), (0.5,))
    std: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) != 2:
            raise ConfigError(f"channels needs two numbers (conv1 conv2), got {list(self.channels)}")
        for name in ("kernel_size", "pool_kernel", "pool_stride", "fc_units", "num_classes", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if min(self.channels) < 1:
            raise ConfigError(f"channels must be at least 1, got {list(self.channels)}")
        if self.padding < 0 or not self.std > 0:
            raise ConfigError(f"padding must be >= 0 and std > 0, got {self.padding} and {self.std}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        feature_sizes(self)  # refuses a config whose feature map shrinks below 1x1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output side of a conv or pool layer: floor((W - K + 2P) / S) + 1."""
    return (size - kernel + 2 * padding) // stride + 1


def feature_sizes(cfg: ModelConfig) -> list[tuple[str, int]]:
    """Side length after each layer, by the formula; raises ConfigError if any side drops below 1."""
    sizes, side = [], cfg.image_size
    for layer, k, s, p in (("conv1", cfg.kernel_size, 1, cfg.padding), ("pool1", cfg.pool_kernel, cfg.pool_stride, 0),
                           ("conv2", cfg.kernel_size, 1, cfg.padding), ("pool2", cfg.pool_kernel, cfg.pool_stride, 0)):
        if side + 2 * p < k:
            raise ConfigError(f"{layer}: kernel {k} is larger than its {side}x{side} input "
                              f"(the feature map would shrink below 1x1); use a smaller kernel or pool")
        side = conv_out(side, k, s, p)
        sizes.append((layer, side))
    return sizes


class Net(nn.Module):
    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        c1, c2 = cfg.channels
        self.conv1 = nn.Conv2d(1, c1, cfg.kernel_size, padding=cfg.padding)
        self.conv2 = nn.Conv2d(c1, c2, cfg.kernel_size, padding=cfg.padding)
        if cfg.batch_norm:  # only then: the default state_dict keys stay exactly the tutorial's
            self.bn1, self.bn2 = nn.BatchNorm2d(c1), nn.BatchNorm2d(c2)
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
        if self.cfg.batch_norm:
            x = F.relu(self.pool(self.bn1(self.conv1(x))))
            return F.relu(self.pool(self.bn2(self.conv2(x))))
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
