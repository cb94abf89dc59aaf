"""Checkpoints: `model.pth` is a plain state_dict, exactly what the tutorial saves; `model.json` beside it says
what made it (model config, training arguments, per-epoch metrics, the dataset: its name, class names and
checksums, library versions), so any later command can rebuild the right architecture from the file alone, name
its classes, and refuse to score it on another dataset. Both are written atomically.

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
from mnist_cnn.data import DIGITS, FILES, Data, atomic_write
from mnist_cnn.errors import CheckpointError, ConfigError, DataError, cause
from mnist_cnn.model import ModelConfig, Net, param_shapes


def meta_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save(path: str | Path, model: Net, train_args: dict | None = None, history: list | None = None,
         dataset: dict | None = None, **extra) -> None:
    """`dataset`: Data.describe() of the training data (default: MNIST)."""
    path = Path(path)
    dataset = dataset or dataset_of({})
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buf)
    meta = {
        "format": "mnist-cnn checkpoint 1",
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),  # load() refuses weights that were damaged since
        "model": model.cfg.to_dict(),
        "train_args": train_args or {},
        "history": history or [],
        "dataset": {k: v for k, v in dataset.items() if k != "md5"},
        "data_md5": dataset["md5"],
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
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({cause(e)})") from None
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
# -----------------------------------------------------------------------------
# the dataset a checkpoint was trained on


def dataset_of(meta: dict) -> dict:
    """{"name", "classes", "md5"} of the training data; MNIST for a bare .pth or one written before datasets."""
    mnist = {"classes": list(DIGITS), "md5": {name: md5s[0] for name, md5s in FILES.items()}}
    recorded = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    md5 = meta.get("data_md5") if isinstance(meta.get("data_md5"), dict) else mnist["md5"]
    return {"name": str(recorded.get("name", "mnist")), "classes": list(recorded.get("classes", mnist["classes"])),
            "md5": md5}


def class_names(meta: dict, num_classes: int) -> list[str]:
    """Class k's name as the checkpoint records it (MNIST's digits "0".."9" where it records none)."""
    names = dataset_of(meta)["classes"]
    return [str(n) for n in names] if len(names) == num_classes else [str(k) for k in range(num_classes)]


def check_dataset(meta: dict, data: Data, path: str | Path) -> None:
    """One clear line if `data`'s test set is not the one the checkpoint was trained against."""
    mine = dataset_of(meta)
    test = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if any(mine["md5"].get(name) != data.md5.get(name) for name in test):
        raise DataError(f"{path} was trained on {mine['name']}, not on {data.name}; drop --dataset or pass "
                        f"--dataset {mine['name']}")


def load_data(meta: dict, path: str | Path, dataset: str | None = None, data_dir: str | Path = "data",
              quiet: bool = False) -> Data:
    """The dataset to score the checkpoint on: `dataset` if given (refused if it is not the one it was trained on),
    else the one it records (MNIST for older checkpoints)."""
    from mnist_cnn.data import load_dataset

    data = load_dataset(dataset or dataset_of(meta)["name"], data_dir, quiet)
    check_dataset(meta, data, path)
    return data
