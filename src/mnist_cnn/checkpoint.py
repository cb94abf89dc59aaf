"""Checkpoints: `model.pth` is a plain state_dict, exactly what the tutorial saves; `model.json` beside it says
what made it (model config, training arguments, per-epoch metrics, data checksums, library versions), so any
later command can rebuild the right architecture from the file alone. Both are written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import time
from pathlib import Path

import torch

from mnist_cnn import __version__
from mnist_cnn.data import FILES, atomic_write
from mnist_cnn.errors import CheckpointError, ConfigError, cause
from mnist_cnn.model import ModelConfig, Net


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


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[Net, dict]:
    """Rebuild the model a checkpoint describes and load its weights (weights_only=True). (model in eval, meta)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (train one with `python mnist_classifier.py`)")
    meta = read_meta(path)
    try:
        cfg = ModelConfig.from_dict(meta.get("model", {}))
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path(path)}: invalid model description ({e})") from None
    want_sha = meta.get("sha256")
    if isinstance(want_sha, str) and hashlib.sha256(path.read_bytes()).hexdigest() != want_sha:
        raise CheckpointError(f"{path}: does not match the checksum in {meta_path(path).name} (corrupted, or "
                              f"replaced by another file; a killed run is repaired by `train --resume`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file: pickle, zip, EOF, runtime errors
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({cause(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a model state_dict")
    model = Net(cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:2]
        raise CheckpointError(f"{path}: weights do not fit the architecture {cfg.to_dict()} "
                              f"(first differences: {diff})")
    model.load_state_dict(state)
    return model.to(device).eval(), meta
