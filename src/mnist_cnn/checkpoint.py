"""Checkpoints: `model.pth` is a plain state_dict, exactly what the tutorial saves; `model.json` beside it says
what made it (model config, training arguments, per-epoch metrics, data checksums, library versions, the
sha256 of the weights), so any later command can rebuild the right architecture from the file alone. Both
are written atomically.

Loading trusts neither file: the description's values must be whole numbers within bounds (ModelConfig),
the weights must match its sha256 (a description without one is refused unless the caller allows unverified
weights: `allow_unverified=True`, or MNIST_CNN_ALLOW_UNVERIFIED=1 for the CLI), are read with
weights_only=True, and their shapes are checked against the config before any model is built. A bare .pth
with no description at all (the tutorial's own file) is the tutorial's architecture.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import time
from pathlib import Path

import torch

from mnist_cnn import __version__
from mnist_cnn.data import FILES, atomic_write
from mnist_cnn.errors import CheckpointError, ConfigError
from mnist_cnn.model import ModelConfig, Net, param_shapes


def meta_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save(path: str | Path, model: Net, train_args: dict | None = None, history: list | None = None,
         **extra) -> None:
    path = Path(path)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buf)
    meta = {
        "format": "mnist-cnn checkpoint 1",
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),  # load() refuses weights that were damaged since
        "model": model.cfg.to_dict(),
        "train_args": train_args or {},
        "history": history or [],
        "data_md5": {name: md5s[0] for name, md5s in FILES.items()},
        "versions": {"mnist_cnn": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    atomic_write(path, buf.getvalue())
    atomic_write(meta_path(path), (json.dumps(meta, indent=2) + "\n").encode())


def read_meta(path: str | Path) -> dict:
    """The JSON beside a checkpoint; {} if there is none (a bare tutorial-style .pth: default architecture)."""
    mp = meta_path(path)
    if not mp.exists():
        return {}
    try:
        meta = json.loads(mp.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{mp}: not a readable checkpoint description ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{mp}: not a checkpoint description")
    return meta


def load(path: str | Path, device: str | torch.device = "cpu", allow_unverified: bool | None = None
         ) -> tuple[Net, dict]:
    """Rebuild the model a checkpoint describes and load its weights (weights_only=True). (model in eval, meta)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (train one with `python mnist_classifier.py`)")
    meta = read_meta(path)
    try:
        cfg = ModelConfig.from_dict(meta.get("model", {}))
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path(path)}: invalid model description ({e})") from None
    verify(path, meta, allow_unverified)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file: pickle, zip, EOF, runtime errors
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a model state_dict")
    want = param_shapes(cfg)  # from the config's formulas: nothing is allocated for a description that lies
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:2]
        raise CheckpointError(f"{path}: weights do not fit the architecture {cfg.to_dict()} "
                              f"(first differences: {diff})")
    model = Net(cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def verify(path: Path, meta: dict, allow_unverified: bool | None) -> None:
    """The weights' sha256 against the description's; a description (if any) must have one, unless allowed."""
    want_sha = meta.get("sha256")
    if allow_unverified is None:
        allow_unverified = os.environ.get("MNIST_CNN_ALLOW_UNVERIFIED", "") == "1"
    if meta and not isinstance(want_sha, str) and not allow_unverified:
        raise CheckpointError(f"{meta_path(path)}: has no sha256 of the weights, so they cannot be verified "
                              f"(an edited description?); set MNIST_CNN_ALLOW_UNVERIFIED=1 to load it anyway")
    if isinstance(want_sha, str) and hashlib.sha256(path.read_bytes()).hexdigest() != want_sha:
        raise CheckpointError(f"{path}: does not match the checksum in {meta_path(path).name} (corrupted, or "
                              f"replaced by another file; a killed run is repaired by `train --resume`)")
