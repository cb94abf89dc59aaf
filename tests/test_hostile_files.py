"""Hostile files and folders (issue #18), with real files: image formats outside the allow-list, phone JPEGs
rotated by EXIF, NaN pixels, checkpoint descriptions that lie, outputs through symlinks and under a strict
umask, downloads that never end."""

import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from PIL import Image

from mnist_cnn import checkpoint, data
from mnist_cnn.errors import CheckpointError
from mnist_cnn.model import Net
from mnist_cnn.predict.preprocess import PreprocessError, load_image, to_mnist


def saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def paper_digit(mnist, i: int, side: int = 140) -> Image.Image:
    return Image.fromarray(255 - mnist.test_images[i].numpy()).resize((side, side))


# -----------------------------------------------------------------------------
# images


def test_formats_outside_the_allow_list_are_refused_before_decoding():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    for raw in (eps, saved(Image.new("L", (8, 8)), "PPM"), saved(Image.new("L", (8, 8)), "ICO")):
        with pytest.raises(PreprocessError, match="PNG, JPEG, GIF, BMP, WebP or TIFF"):
            load_image(raw)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):  # the allowed ones still open
        assert load_image(saved(Image.new("L", (8, 8), 200), fmt)).size == (8, 8)


def test_exif_orientation_is_applied(mnist):
    """A phone stores the sensor's pixels and says "rotate 90 degrees clockwise to show" (Orientation 6)."""
    agree = 0
    for i in range(10):
        upright = paper_digit(mnist, i)
        exif = Image.Exif()
        exif[0x0112] = 6
        raw = saved(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)
        got = to_mnist(load_image(raw)).astype(int)
        want = to_mnist(upright).astype(int)
        agree += np.abs(got - want).mean() < 8
    assert agree == 10


def test_non_finite_pixels_in_a_float_tiff_are_refused():
    a = np.zeros((20, 20), np.float32)
    a[5:15, 9:11] = 1.0
    a[0, 0] = np.nan
    with pytest.raises(PreprocessError, match="NaN or infinite"):
        load_image(saved(Image.fromarray(a, mode="F"), "TIFF"))
    a[0, 0] = np.inf
    with pytest.raises(PreprocessError, match="NaN or infinite"):
        load_image(saved(Image.fromarray(a, mode="F"), "TIFF"))


# -----------------------------------------------------------------------------
# checkpoint descriptions


@pytest.fixture
def ckpt(tmp_path):
    checkpoint.save(tmp_path / "m.pth", Net())
    return tmp_path / "m.pth"


def edit_meta(path, **changes):
    meta_file = checkpoint.meta_path(path)
    meta = json.loads(meta_file.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    meta_file.write_text(json.dumps(meta))


@pytest.mark.parametrize("fc_units, says", [(500000, "1..65,536"), (1e11, "whole number"), ("128", "whole number"),
                                            (True, "whole number"), (-1, "whole number")])
def test_model_description_values_are_typed_and_bounded(ckpt, fc_units, says):
    edit_meta(ckpt, model={**Net().cfg.to_dict(), "fc_units": fc_units})
    with pytest.raises(CheckpointError, match=says):
        checkpoint.load(ckpt)
    if fc_units == 1e11:  # once through the CLI: this one used to end in a traceback
        assert says in assert_one_line_error(run_cli("evaluate", "--model", ckpt))


def test_weights_are_checked_against_the_description_before_a_model_is_built(ckpt, tmp_path):
    """fc_units 65536 is within bounds, but the weights say 128: refused from the shapes alone. Building the
    described model first (the old order) takes 420 MB, which the child's peak memory would show."""
    edit_meta(ckpt, model={**Net().cfg.to_dict(), "fc_units": 65536})
    probe = ("import resource, sys; from mnist_cnn import checkpoint\n"
             "try: checkpoint.load(sys.argv[1])\nexcept Exception as e: print(type(e).__name__, e)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    good = tmp_path / "good.pth"
    checkpoint.save(good, Net())
    runs = [subprocess.run([sys.executable, "-c", probe, str(p)], capture_output=True, text=True, timeout=300)
            for p in (ckpt, good)]
    lied, normal = (r.stdout.strip().splitlines() for r in runs)
    assert lied[0].startswith("CheckpointError") and "do not fit" in lied[0], runs[0]
    assert int(lied[-1]) < int(normal[-1]) + 200_000, "the lying description's model was built (kB of peak RSS)"


def test_a_description_without_sha256_is_refused_unless_allowed(ckpt):
    edit_meta(ckpt, sha256=None)
    with pytest.raises(CheckpointError, match="no sha256"):
        checkpoint.load(ckpt)
    assert "MNIST_CNN_ALLOW_UNVERIFIED" in assert_one_line_error(run_cli("evaluate", "--model", ckpt))
    model, _ = checkpoint.load(ckpt, allow_unverified=True)
    assert model.cfg == Net().cfg


def test_a_bare_tutorial_state_dict_still_loads(tmp_path):
    torch.save(Net().state_dict(), tmp_path / "tutorial.pth")  # what the tutorial's script saves: no JSON
    assert checkpoint.load(tmp_path / "tutorial.pth")[0].cfg == Net().cfg


# -----------------------------------------------------------------------------
# outputs


def test_save_input_replaces_a_symlink_and_keeps_the_umask(tmp_path, mnist):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "seen"
    out.mkdir()
    (out / "digit.png").symlink_to(victim)
    Image.fromarray(255 - mnist.test_images[0].numpy()).save(tmp_path / "digit.png")
    ckpt = tmp_path / "m.pth"
    checkpoint.save(ckpt, Net())
    proc = subprocess.run([sys.executable, "-m", "mnist_cnn", "predict", str(tmp_path / "digit.png"), "--model",
                           str(ckpt), "--save-input", str(out)], capture_output=True, text=True,
                          preexec_fn=lambda: os.umask(0o077))
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious", "--save-input wrote through the symlink"
    written = out / "digit.png"
    assert not written.is_symlink() and Image.open(written).size == (28, 28)
    assert written.stat().st_mode & 0o777 == 0o600  # umask 077, not a forced 0644
    assert ckpt.stat().st_mode & 0o777 == 0o666 & ~_umask_here()


def _umask_here() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -----------------------------------------------------------------------------
# downloads


class Endless(http.server.BaseHTTPRequestHandler):
    """/big: says 5 MB and sends them; /slow: a byte every 0.2 s, forever."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(5_000_000))
        self.end_headers()
        try:
            if self.path == "/big":
                self.wfile.write(bytes(5_000_000))
            for _ in range(10_000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_downloads_have_a_size_cap_and_a_total_deadline():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(OSError, match="byte cap"):
            data._download(url + "/big", "big", True, timeout=5, deadline_s=60, max_bytes=1_000_000)
        # each byte arrives well within the 5 s per-read timeout, so only the total deadline can stop it
        with pytest.raises(OSError, match="not done within 1 s"):
            data._download(url + "/slow", "slow", True, timeout=5, deadline_s=1, max_bytes=10_000_000)
    finally:
        server.shutdown()
