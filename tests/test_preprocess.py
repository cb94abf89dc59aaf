"""Preprocessing, step by step on constructed images, then the whole pipeline on every awkward format."""

import io

import numpy as np
import pytest
import torch
from fontdigits import awkward, fonts, render
from PIL import Image, ImageDraw

from mnist_cnn.data import normalize
from mnist_cnn.predict import preprocess as pp
from mnist_cnn.predict.preprocess import PreprocessError, load_image, preprocess, to_mnist


def stroke_image(size=(200, 160), paper=235, ink=20, box=(60, 40, 120, 130), width=12):
    """A thick dark ring (a '0') on light paper, grayscale."""
    img = Image.new("L", size, paper)
    ImageDraw.Draw(img).ellipse(box, outline=ink, width=width)
    return img


def center_of_mass(a):
    a = a.astype(np.float64)
    i = np.arange(a.shape[0])
    return (a.sum(1) * i).sum() / a.sum(), (a.sum(0) * np.arange(a.shape[1])).sum() / a.sum()


def ink_box(a, level=0):
    rows, cols = np.nonzero((a > level).any(1))[0], np.nonzero((a > level).any(0))[0]
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


# -----------------------------------------------------------------------------
# each step


def test_flatten_transparency_puts_dark_strokes_on_white():
    img = Image.new("RGBA", (50, 50), (0, 0, 0, 0))  # canvas export: transparent black
    ImageDraw.Draw(img).line((10, 10, 40, 40), fill=(0, 0, 0, 255), width=5)
    flat = np.asarray(pp.flatten_transparency(img).convert("L"))
    assert flat[0, 0] == 255 and flat[25, 25] == 0  # paper white, ink black: visible, not black on black


def test_flatten_transparency_puts_light_strokes_on_black():
    img = Image.new("RGBA", (50, 50), (255, 255, 255, 0))
    ImageDraw.Draw(img).line((10, 10, 40, 40), fill=(255, 255, 0, 255), width=5)
    flat = np.asarray(pp.flatten_transparency(img).convert("L"))
    assert flat[0, 0] == 0 and flat[25, 25] > 200


def test_flatten_transparency_keeps_opaque_paper_with_holes():
    img = Image.new("RGBA", (50, 50), (240, 240, 240, 255))
    ImageDraw.Draw(img).line((10, 10, 40, 40), fill=(10, 10, 10, 255), width=5)
    img.putpixel((0, 0), (0, 0, 0, 0))  # one transparent hole in the paper is filled with paper, not ink
    flat = np.asarray(pp.flatten_transparency(img).convert("L"))
    assert flat[0, 0] == 255 and flat[25, 25] < 20


def test_grayscale_keeps_16_bit_range():
    a = np.full((20, 20), 60000, np.uint16)
    a[5:15, 8:12] = 1000
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    g = pp.to_grayscale(img)
    assert g.dtype == np.float32 and abs(g[0, 0] - 60000 / 65535) < 1e-6 and abs(g[10, 10] - 1000 / 65535) < 1e-6


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "I", "F", "LA", "RGBA", "CMYK"])
def test_grayscale_any_mode_is_in_unit_range(mode):
    img = stroke_image(size=(40, 40), paper=255, ink=0, box=(8, 8, 32, 32), width=4).convert("RGB").convert(mode)
    g = pp.to_grayscale(pp.flatten_transparency(img))
    assert g.shape == (40, 40) and 0 <= g.min() and g.max() <= 1
    assert g[0, 0] > 0.8 and g[20, 8] < 0.2  # paper light, ring dark, whatever the mode


def test_polarity_from_the_background():
    dark_on_light = np.full((30, 30), 0.9, np.float32)
    dark_on_light[10:20, 14:16] = 0.1
    out = pp.white_on_black(dark_on_light)
    assert out[0, 0] == pytest.approx(0.1) and out[15, 15] == pytest.approx(0.9)
    light_on_dark = 1 - dark_on_light
    assert np.array_equal(pp.white_on_black(light_on_dark), light_on_dark)


def test_remove_background_flattens_uneven_paper():
    h, w = 300, 300
    ramp = np.linspace(0.0, 0.35, w, dtype=np.float32)[None, :].repeat(h, 0)  # shadow across a photo
    x = ramp.copy()
    x[100:200, 140:150] += 0.5  # a stroke
    out = pp.remove_background(x)
    assert out[:, :100].max() == 0 and out[:, 200:].max() == 0  # paper gone on both the dark and bright side
    assert out[150, 145] > 0.9


def test_remove_background_cuts_paper_noise():
    rng = np.random.default_rng(0)
    x = np.clip(0.1 + rng.normal(0, 0.03, (200, 200)), 0, 1).astype(np.float32)
    x[50:150, 95:105] = 0.9
    out = pp.remove_background(x)
    assert (out[:, :80] > 0).mean() < 0.001 and out[100, 100] > 0.95


def test_crop_ignores_a_faint_rim_and_a_speck():
    x = np.zeros((100, 100), np.float32)
    x[10:90, 40:50] = 1.0
    x[9, 40:50] = 0.1  # anti-aliased rim: kept
    x[95, 95] = 1.0  # a dust speck: dropped
    assert pp.crop_to_ink(x).shape == (81, 10)


def test_scale_keeps_aspect_and_fits_20():
    x = np.ones((300, 100), np.float32)
    y = pp.scale_to_box(x)
    assert y.shape == (20, 7) and y.max() == 1.0


def test_center_by_mass_lands_within_half_a_pixel():
    x = np.zeros((20, 12), np.float32)
    x[:, :3] = 1.0  # mass far to the left of the box
    x[0:3, :] = 1.0
    out = pp.center_by_mass(x)
    cy, cx = center_of_mass(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5 and out.sum() == pytest.approx(x.sum())


# -----------------------------------------------------------------------------
# the whole pipeline


def test_off_centre_large_dark_digit_becomes_mnist_like():
    img = stroke_image(size=(600, 400), box=(420, 30, 560, 250), width=25)  # far in a corner
    a = to_mnist(img)
    assert a.dtype == np.uint8 and a.shape == (28, 28)
    cy, cx = center_of_mass(a)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert max(ink_box(a)) == 20 and a[0].max() == 0 and a.max() == 255  # 20 px box, black border, full ink


def test_mnist_digits_pass_through_unchanged_in_effect(mnist):
    x = mnist.test_images[:500].numpy()
    out = np.stack([to_mnist(Image.fromarray(a)) for a in x])
    diff = np.abs(out.astype(int) - x.astype(int))
    assert diff.mean() < 1.0  # grey levels out of 255, on average over all pixels
    assert (diff.max(axis=(1, 2)) == 0).mean() > 0.15  # many are bit-identical
    coms = np.array([center_of_mass(a) for a in out])
    assert np.abs(coms - 14).max() <= 0.51  # whole-pixel shift: <= 0.5, plus rounding to uint8


def test_preprocess_normalizes_exactly_as_training(mnist):
    a = mnist.test_images[0]
    t = preprocess(Image.fromarray(to_mnist(Image.fromarray(a.numpy()))))
    assert t.shape == (1, 28, 28) and t.dtype == torch.float32
    assert torch.equal(t, normalize(torch.from_numpy(to_mnist(Image.fromarray(a.numpy())))[None])[0])
    assert t.min() == -1.0


@pytest.mark.parametrize("size", [(8, 8), (3000, 3000)])
def test_tiny_and_huge(size):
    img = stroke_image().resize(size, Image.Resampling.BOX if size[0] < 200 else Image.Resampling.BILINEAR)
    a = to_mnist(img)
    assert max(ink_box(a)) == 20 and a.max() == 255
    cy, cx = center_of_mass(a)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_blank_image_is_an_error():
    for img in (Image.new("L", (50, 50), 255), Image.new("RGB", (50, 50), (200, 10, 10)),
                Image.new("RGBA", (50, 50), (0, 0, 0, 0))):
        with pytest.raises(PreprocessError, match="no ink"):
            to_mnist(img)


def test_awkward_formats_give_the_same_digit_image():
    font = fonts("DejaVu")[0]
    for digit in (2, 7):
        ref = to_mnist(render(digit, font, __import__("random").Random(digit))).astype(int)
        for name, img in awkward(digit, font).items():
            a = to_mnist(img).astype(int)
            cy, cx = center_of_mass(a)
            assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5, name
            if name not in ("canvas_rgba", "tiny8", "huge3000"):  # same picture in another file format
                assert np.abs(a - ref).mean() < 12, name


# -----------------------------------------------------------------------------
# reading: sources and bad files


def png_bytes(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_load_image_sources(tmp_path):
    img = stroke_image()
    path = tmp_path / "d.png"
    img.save(path)
    arrays = [np.asarray(img), np.asarray(img.convert("RGB")), np.asarray(img.convert("RGBA")),
              np.asarray(img).astype(np.float32) / 255, np.asarray(img).astype(np.uint16) * 257]
    sources = [path, str(path), png_bytes(img), io.BytesIO(png_bytes(img)), img, *arrays]
    ref = to_mnist(img)
    for s in sources:
        assert np.abs(to_mnist(load_image(s)).astype(int) - ref).max() <= 2, type(s)


@pytest.mark.parametrize("raw, match", [
    (b"", "empty file"),
    (b"hello, not an image", "not an image"),
    (png_bytes(stroke_image())[:300], "truncated"),
])
def test_bad_bytes(raw, match):
    with pytest.raises(PreprocessError, match=match):
        load_image(raw)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(PreprocessError, match="cannot read"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(PreprocessError, match="folder"):
        load_image(tmp_path)


def test_pixel_limit_is_deliberate():
    """Our own limit, checked from the header; Pillow's process-wide one (test_global_state.py) is left alone."""
    assert pp.MAX_PIXELS == 40_000_000 < Image.MAX_IMAGE_PIXELS
    raw = png_bytes(Image.new("1", (7000, 7000), 1))  # 49 Mpx that compresses to a few kB
    assert len(raw) < 100_000
    with pytest.raises(PreprocessError, match="pixel limit"):
        load_image(raw)
    with pytest.raises(PreprocessError, match="pixel limit"):
        load_image(np.zeros((7000, 7000), np.uint8))
