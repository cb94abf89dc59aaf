"""Any digit image -> the 1x28x28 tensor the network expects, made the way MNIST's digits were made.

A 99% model fails on a user's own digit because the digit is nothing like MNIST's: dark ink on white paper,
off-centre, large, coloured, transparent. MNIST (LeCun et al.) took NIST's binary scans, scaled each digit so
that it fits a 20x20 box keeping its aspect ratio (anti-aliased, hence the grey edges) and put that box in a
28x28 field with the centre of mass of the pixels at the centre. We redo exactly that, after first undoing
what a photo, a scan or a browser canvas adds:

    source (path, bytes, file, PIL image, numpy array)
      load_image            PIL image: an allowed format (PNG, JPEG, GIF, BMP, WebP, TIFF) within the pixel
                            limit, EXIF orientation applied, finite pixels; every failure -> PreprocessError
      to_grey8              (the server) 8-bit grey (+ alpha), shrunk to a bounded side, before any float work
      flatten_transparency  RGBA canvas strokes -> opaque, on the background that contrasts with the ink
      to_grayscale          any mode (1, L, P, RGB, I;16, I, F) -> float (H, W) in [0, 1]
      white_on_black        polarity from the background (the border): MNIST's ink is bright on black
      remove_background     subtract the (possibly uneven) paper level, cut its noise, stretch ink to 1
      crop_to_ink           bounding box of the ink, ignoring faint specks
      thicken_strokes       a fine pen's hairlines brought up to MNIST's 2-3 px stroke weight
      scale_to_box          longer side -> 20 px, aspect kept, anti-aliased (area average)
      center_by_mass        into 28x28 with the centre of mass at pixel (14, 14)
    uint8 (28, 28) -> normalize exactly as training: (x/255 - 0.5) / 0.5 -> float (1, 28, 28)

Everything up to the uint8 (28, 28) image is numpy and Pillow only (no torch): the onnxruntime backend and
the browser page (`ship/page/preprocess.js`, a port of the same steps) start from that image.

Measured on the MNIST test set (see tests/test_preprocess.py): the pipeline maps MNIST's own digits to
themselves in effect (MNIST's centre of mass in index coordinates is (13.99, 14.01) on average, std 0.29,
and the longer side of every digit's ink box but 3 of 10,000 is exactly 20 px).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_cnn.data import MEAN, STD
from mnist_cnn.errors import MnistCnnError

# A decompression bomb (a small file that decodes to gigapixels) must not take the machine down. 40 Mpx is
# far above any digit photo (a 3000x3000 scan is 9 Mpx) and a 40 Mpx grayscale decode is 40 MB. Checked here,
# from the header, before any pixel is decoded: Pillow's own process-wide limits (Image.MAX_IMAGE_PIXELS, ~89 Mpx
# for its warning, twice that for its error) are left as the application set them.
MAX_PIXELS = 40_000_000
# The formats a digit comes in. Everything else Pillow can open stays closed: EPS, for one, is handed to
# Ghostscript with no timeout. (A phone's JPEG with preview frames opens as JPEG and reports format "MPO".)
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
FORMATS_SAID = "PNG, JPEG, GIF, BMP, WebP or TIFF"

BOX = 20  # MNIST's digits fit a 20x20 box ...
SIDE = 28  # ... centred by mass in a 28x28 field
UPSCALE = Image.Resampling.BILINEAR  # enlarging a tiny image: smooth, no blocks
CENTER = 14.0  # where MNIST's centre of mass sits, in pixel-index coordinates (measured: 13.99, 14.01)


# Ink is what stands out of the paper: over INK_SIGMAS robust standard deviations of the paper's noise (grain,
# texture, JPEG ringing) and over MIN_CONTRAST of the full range, in at least MIN_INK_PIXELS pixels and
# MIN_INK_SHARE of the image. A small or thin digit (a 1 of 0.15% of a photo) is still ink; noise alone is not
# (Gaussian: 7 sigma is 1 pixel in 10^12; JPEG's blocks have heavier tails: a few pixels of a 300x300 image).
INK_SIGMAS = 7.0
MIN_CONTRAST = 0.08
MIN_INK_PIXELS = 4
MIN_INK_SHARE = 2e-4


class PreprocessError(MnistCnnError):
    """An image we cannot turn into a digit: unreadable, truncated, too large, or blank."""


# -----------------------------------------------------------------------------
# reading: anything a user may hand us -> a decoded PIL image


def _from_array(a: np.ndarray) -> Image.Image:
    """numpy (H, W) grayscale or (H, W, 3|4) RGB(A) -> PIL. Floats in [0, 1] are taken as intensities."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise PreprocessError(f"array of shape {a.shape} is not an image (want HxW, HxWx3 or HxWx4)")
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise PreprocessError(f"array of {a.shape[0]}x{a.shape[1]} pixels is over the {MAX_PIXELS:,} pixel limit")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise PreprocessError("array has NaN or infinite pixels")
        a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).round().astype(np.uint8)
    elif a.dtype == np.uint16 and a.ndim == 2:
        return Image.fromarray(a.astype(np.int32))  # 16-bit grayscale: to_grayscale scales it
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def load_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A path, bytes, binary file, PIL image or numpy array -> a fully decoded PIL image (first frame), upright.

    Every way a file can be bad (missing, empty, not an image, a format outside FORMATS, truncated, over the
    pixel limit, NaN or infinite pixels) ends in a PreprocessError that names the problem; nothing from Pillow
    or the OS escapes. A JPEG over `max_pixels` is decoded at a reduced scale (1/2 .. 1/8) that fits, if one does.
    """
    if isinstance(source, Image.Image):
        w, h = source.size
        if w * h > MAX_PIXELS:
            raise PreprocessError(f"image of {w}x{h} pixels is over the {MAX_PIXELS:,} pixel limit")
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if type(source).__module__.startswith("torch") and hasattr(source, "detach"):  # a tensor; torch not imported
        return _from_array(source.detach().cpu().numpy())
    name = "image"
    try:
        if isinstance(source, (str, os.PathLike)):
            name = str(source)
            if Path(source).is_dir():
                raise PreprocessError(f"{name}: is a folder, not an image")
            raw = Path(source).read_bytes()
        elif isinstance(source, (bytes, bytearray, memoryview)):
            raw = bytes(source)
        elif hasattr(source, "read"):
            name = getattr(source, "name", name)
            raw = source.read()
            if not isinstance(raw, bytes):
                raise PreprocessError(f"{name}: file is open in text mode; open it with 'rb'")
        else:
            raise PreprocessError(f"cannot read an image from a {type(source).__name__}")
    except OSError as e:
        raise PreprocessError(f"{name}: cannot read ({e.strerror or e})") from None
    if not raw:
        raise PreprocessError(f"{name}: empty file")
    return _decode(raw, name, max_pixels)


def _decode(raw: bytes, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes -> decoded, upright PIL image. The size is checked from the header before any pixel is decoded."""
    try:
        img = Image.open(io.BytesIO(raw), formats=FORMATS)  # reads the header only
        w, h = img.size
        if w * h > max_pixels and img.format in ("JPEG", "MPO"):  # the decoder can scale by 1/2, 1/4, 1/8
            scale = next((s for s in (2, 4, 8) if -(-w // s) * -(-h // s) <= max_pixels), 8)
            img.draft(img.mode, (-(-w // scale), -(-h // scale)))  # the smallest scale at least this big
            w, h = img.size
        if w * h > max_pixels:
            raise PreprocessError(f"{name}: image of {w}x{h} pixels is over the {max_pixels:,} pixel limit "
                                  f"(scale it down, or a decompression bomb?)")
        img.load()  # decode now, so a truncated file fails here and not later (Pillow's default; we change none)
        img = ImageOps.exif_transpose(img)  # a phone's JPEG says "rotate me" in EXIF rather than in pixels
    except PreprocessError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the warning: under -W error
        raise PreprocessError(f"{name}: image is over the {max_pixels:,} pixel limit (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise PreprocessError(f"{name}: not an image, or not one of the formats read here ({FORMATS_SAID})") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, EOFError... on bad data
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise PreprocessError(f"{name}: truncated or damaged image file ({msg})") from None
        raise PreprocessError(f"{name}: damaged image file ({msg})") from None
    if img.mode == "F" and not np.isfinite(np.asarray(img)).all():  # a float TIFF: one NaN would blank it all
        raise PreprocessError(f"{name}: image has NaN or infinite pixels")
    return img


def to_grey8(img: Image.Image, max_side: int) -> Image.Image:
    """Any decoded image -> 8-bit grey ("L", or "LA" keeping transparency), shrunk by an integer factor (an
    area average) so its longer side is at most `max_side`. The float steps below then cost 4 bytes per
    pixel of this, not of the upload. Wide-range modes (16-bit, int, float) keep their scaling (to_grayscale)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = Image.fromarray(np.round(to_grayscale(img) * 255.0).astype(np.uint8))
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    img = img.convert("RGBA").convert("LA") if has_alpha and img.mode != "LA" else img
    img = img.convert("L") if not has_alpha and img.mode != "L" else img
    factor = -(-max(img.size) // max_side)  # ceil
    return img.reduce(factor) if factor > 1 else img


# -----------------------------------------------------------------------------
# the steps, in order: each takes and returns one image


def flatten_transparency(img: Image.Image) -> Image.Image:
    """Composite transparent pixels onto a background that contrasts with the ink.

    A browser canvas exports strokes on fully transparent pixels whose colour is usually (0, 0, 0, 0):
    dropping alpha would give black ink on black. We put the opaque pixels (the ink) on white if they are
    dark, on black if they are light, so the strokes stay visible whatever colour they were drawn in.
    """
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if not has_alpha:
        return img
    la = np.asarray(img if img.mode == "LA" else img.convert("RGBA").convert("LA"), dtype=np.float32) / 255.0
    luma, alpha = la[..., 0], la[..., 1]  # (H, W) each; Pillow's L is 0.299 R + 0.587 G + 0.114 B
    if alpha.min() >= 1.0:  # an alpha channel that is opaque everywhere changes nothing
        return Image.fromarray(np.round(luma * 255).astype(np.uint8))
    weight = alpha.sum()
    ink_luma = float((luma * alpha).sum() / weight) if weight > 0 else 0.0
    # if most of the canvas is opaque, the opaque part is paper, not ink: keep its own colours and fill the
    # holes with the colour of that paper; else the opaque part is the ink: fill with its opposite
    bg = 1.0 - ink_luma if alpha.mean() < 0.5 else ink_luma
    bg = 1.0 if bg >= 0.5 else 0.0
    grey = luma * alpha + bg * (1.0 - alpha)
    return Image.fromarray(np.round(grey * 255).astype(np.uint8))


def to_grayscale(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 (H, W) in [0, 1], 0 = black.

    16-bit scans (I;16) and 32-bit integer or float images keep their full range: dividing by 255 as for
    8-bit would make almost every pixel white.
    """
    if img.mode.startswith("I;16"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float32)
        top = float(a.max()) if a.size else 0.0
        scale = 1.0 if (img.mode == "F" and top <= 1.0) else 255.0 if top <= 255.0 else 65535.0
        return np.clip(a / scale, 0.0, 1.0)
    if img.mode != "L":
        img = img.convert("RGB").convert("L") if img.mode not in ("1", "RGB") else img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def background_level(gray: np.ndarray) -> float:
    """The paper's grey level, from the image border (digits are drawn away from the edge)."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(np.median(border))


def white_on_black(gray: np.ndarray) -> np.ndarray:
    """MNIST's ink is bright (255) on a black (0) background; dark ink on light paper is inverted.

    The background decides, not the ink: the border is mostly paper. If the border is exactly mid-grey the
    whole image's median (most pixels are paper) breaks the tie.
    """
    bg = background_level(gray)
    if bg == 0.5:
        bg = float(np.median(gray))
    return 1.0 - gray if bg > 0.5 else gray


def _tile_background(x: np.ndarray) -> np.ndarray:
    """A smooth estimate of the paper level at every pixel: a low percentile per tile, interpolated.

    A phone photo of paper is lit unevenly; one global level would either leave a grey shadow (which the
    crop would take for ink) or eat faint strokes in the bright part. The 30th percentile of a tile is paper
    as long as strokes cover less than 70% of it. Tiles are a sixth of the image (one tile under 32 px).
    """
    h, w = x.shape
    ty = tx = int(np.clip(min(h, w) // 16, 1, 6))  # small images (MNIST's 28x28, an 8x8 icon): one level
    ys = np.linspace(0, h, ty + 1).astype(int)
    xs = np.linspace(0, w, tx + 1).astype(int)
    grid = np.array([[np.percentile(x[ys[i]:ys[i + 1], xs[j]:xs[j + 1]], 30) for j in range(tx)]
                     for i in range(ty)], dtype=np.float32)  # (ty, tx)
    if ty == 1:
        return np.full_like(x, grid[0, 0])
    # a tile inside a bold stroke reads as bright paper: its darkest neighbour is the safer guess (in a
    # lighting gradient this errs by at most one tile's step, towards keeping a little haze, cut later)
    pad = np.pad(grid, 1, mode="edge")
    grid = np.min([pad[a:a + ty, b:b + tx] for a in range(3) for b in range(3)], axis=0)

    def interp(n, centres, values):  # piecewise linear through the tile centres, extrapolated to the edges
        first = values[0] - (values[1] - values[0]) * (centres[0] + 1) / (centres[1] - centres[0])
        last = values[-1] + (values[-1] - values[-2]) * (n - centres[-1]) / (centres[-1] - centres[-2])
        return np.interp(np.arange(n), [-1.0, *centres, float(n)], [first, *values, last])

    cy = (ys[:-1] + ys[1:]) / 2 - 0.5
    cx = (xs[:-1] + xs[1:]) / 2 - 0.5
    rows = np.array([interp(h, cy, grid[:, j]) for j in range(tx)]).T  # (h, tx)
    return np.array([interp(w, cx, r) for r in rows], dtype=np.float32)  # (h, w)


def remove_background(x: np.ndarray) -> np.ndarray:
    """Paper -> exactly 0, ink -> up to 1. MNIST's background is pure black and its strokes reach 255.

    Subtract the (possibly uneven) paper level, then cut what is within the paper's own noise (grain, JPEG
    ringing, sensor noise: 4 robust standard deviations), and stretch so that the ink's 99th-percentile
    level is 1. Above 64 px, anything under 15% of the ink level is paper too: at that size faint
    pixels are shadow or haze, not the anti-aliased rim that MNIST's own 28x28 digits have (and keep: a
    clean image has no noise and loses nothing).
    """
    x = x - _tile_background(x)
    p10, p30 = np.percentile(x, [10, 30])  # paper, even where ink covers most of it
    noise = float(p30 - p10) / 0.757  # a Gaussian's 30th and 10th percentiles are 0.757 sigma apart
    ink = x[x > max(INK_SIGMAS * noise, MIN_CONTRAST)]  # what stands out of the paper's own grain
    if ink.size < max(MIN_INK_PIXELS, x.size * MIN_INK_SHARE):  # nothing drawn: one colour, or paper grain only
        return np.zeros_like(x)
    top = float(np.percentile(ink, 99))
    cut = max(4.0 * noise, 0.15 * top if min(x.shape) > 64 else 0.0)
    return np.clip((x - cut) / (top - cut), 0.0, 1.0).astype(np.float32)


def crop_to_ink(x: np.ndarray) -> np.ndarray:
    """Cut to the bounding box of the ink; the digit's size and place in the original do not matter.

    The box is found on the strong ink (over 1/4 of full level): faint JPEG ringing or paper texture far
    from the digit would stretch it, and so would a dust speck, so rows and columns holding less than 1/50
    of the busiest row's (column's) strong ink are dropped at the edges. The box then grows by at most one
    pixel per side to take back the anti-aliased rim of the strokes (all MNIST has of faint ink).
    """
    if not (x > 0).any():
        raise PreprocessError("no ink found: the image is blank (one colour, or contrast too low)")
    strong = np.where(x > 0.25, x, 0.0)

    def span(profile, n):  # first and last index whose strong ink counts, one pixel of rim around them
        keep = np.nonzero(profile > profile.max() / 50)[0]
        return max(0, keep[0] - 1), min(n, keep[-1] + 2)

    r0, r1 = span(strong.sum(axis=1), x.shape[0])
    c0, c1 = span(strong.sum(axis=0), x.shape[1])
    x = x[r0:r1, c0:c1]
    rows, cols = np.nonzero(x.any(axis=1))[0], np.nonzero(x.any(axis=0))[0]  # drop a rim row with no ink
    return x[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def thicken_strokes(x: np.ndarray, box: int = BOX, target: float = 2.0) -> np.ndarray:
    """Bring thin pen strokes up to MNIST's weight: at least `target` px wide once the digit is 20 px tall.

    MNIST's strokes are 2-3 px wide in the 20 px box. A fine pen on a large digit comes out well under
    1 px there, a faint hairline the network has never seen (measured on 600 MNIST test digits redrawn at
    280 px with thinner pens: 99.3% -> 77.0% without this step). The width is measured at 4x the final
    scale, where strokes are resolved, as 2 * area / perimeter of the ink (exact for a long stroke), and a
    thin drawing is dilated (grey-level max filter) by the missing width. Small sources (MNIST's own 28x28,
    an 8x8 icon) have nothing finer than a pixel to measure and pass unchanged.
    """
    h, w = x.shape
    f = 4 * box / max(h, w)  # to 80 px on the longer side
    if f >= 1:
        return x
    x = np.asarray(Image.fromarray(x.astype(np.float32)).resize((max(1, round(w * f)), max(1, round(h * f))),
                                                               Image.Resampling.BOX), dtype=np.float32)
    ink = np.pad(x > 0.5 * x.max(), 1)
    perimeter = (ink[1:] != ink[:-1]).sum() + (ink[:, 1:] != ink[:, :-1]).sum()
    width = 2 * ink.sum() / max(perimeter, 1)  # in 80-px units
    grow = int(round((4 * target - width) / 2))  # pixels to add on each side of a stroke
    if grow < 1:
        return x
    k = 2 * grow + 1
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, grow), (k, k))  # (h, w, k, k)
    return windows.max(axis=(2, 3))


def scale_to_box(x: np.ndarray, box: int = BOX) -> np.ndarray:
    """Longer side -> 20 px, aspect ratio kept, anti-aliased, ink re-stretched to 1.

    Shrinking averages areas (Pillow's BOX filter), which is what gives MNIST's strokes their grey edges;
    enlarging a tiny image (8x8) interpolates bilinearly instead of making blocks. A 1-px pen line on a big
    photo averages out to a faint grey at 20 px, so the result is stretched to reach 1 again.
    """
    h, w = x.shape
    scale = box / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if scale < 1:
        y = Image.fromarray(x.astype(np.float32)).resize((nw, nh), Image.Resampling.BOX)
    else:  # one pixel of paper around the crop, so the interpolation fades the edge ink out instead of
        # stretching it as a plateau (Pillow clamps at the border): as a tiny digit on its paper would look
        y = Image.fromarray(np.pad(x, 1).astype(np.float32)).resize((nw, nh), UPSCALE, box=(1, 1, w + 1, h + 1))
    y = np.asarray(y, dtype=np.float32)
    y = np.clip(y, 0.0, None)
    top = float(y.max())
    return y / top if top > 0 else y


def center_by_mass(x: np.ndarray, side: int = SIDE, center: float = CENTER) -> np.ndarray:
    """Put the box into a side x side field so that its centre of mass lands on pixel (14, 14).

    MNIST shifted by whole pixels (its digits' centres of mass sit within half a pixel of (14, 14) in index
    coordinates), so we do too: no sub-pixel resampling blur. Ink pushed over the edge by a lopsided digit
    is clipped, as in MNIST.
    """
    h, w = x.shape
    mass = float(x.sum())
    cy = float((x.sum(axis=1) * np.arange(h)).sum() / mass)
    cx = float((x.sum(axis=0) * np.arange(w)).sum() / mass)
    top, left = int(round(center - cy)), int(round(center - cx))
    out = np.zeros((side, side), dtype=np.float32)
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(side, top + h), min(side, left + w)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = x[r0 - top:r1 - top, c0 - left:c1 - left]
    return out


# -----------------------------------------------------------------------------
# the whole pipeline


def ink_map(image: Image.Image) -> np.ndarray:
    """PIL image -> float32 (H, W): paper 0, ink up to 1, at the image's own size (segment.py reads numbers here)."""
    x = to_grayscale(flatten_transparency(image))  # (H, W) in [0, 1]
    return remove_background(white_on_black(x))  # (H, W), paper 0, ink up to 1


def ink_to_mnist(x: np.ndarray) -> np.ndarray:
    """Ink map (H, W) of one digit -> uint8 (28, 28), 20x20 box centred by mass: an MNIST digit."""
    x = center_by_mass(scale_to_box(thicken_strokes(crop_to_ink(x))))  # (28, 28)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_mnist(image: Image.Image) -> np.ndarray:
    """PIL image -> uint8 (28, 28), white ink on black, 20x20 box centred by mass: an MNIST digit."""
    return ink_to_mnist(ink_map(image))


def to_square(image: Image.Image) -> np.ndarray:
    """PIL image -> uint8 (28, 28) for datasets that are not digits (Fashion-MNIST and the like): bright object
    on black, the whole picture scaled to fit 28x28 (aspect kept, area average) and centred. No ink cropping
    or stroke work: a photo of a shoe is not a pen stroke. A 28x28 image that is already bright-on-black passes
    through unchanged."""
    x = white_on_black(to_grayscale(flatten_transparency(image)))  # (H, W) in [0, 1], background dark
    h, w = x.shape
    scale = SIDE / max(h, w)
    small = Image.fromarray(x.astype(np.float32)).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX if scale < 1 else UPSCALE)
    out = np.zeros((SIDE, SIDE), np.float32)
    sh, sw = small.size[1], small.size[0]
    out[(SIDE - sh) // 2:(SIDE - sh) // 2 + sh, (SIDE - sw) // 2:(SIDE - sw) // 2 + sw] = np.asarray(small)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def normalize_image(image28: np.ndarray, mean: float = MEAN, std: float = STD):
    """uint8 (28, 28) -> float32 torch tensor (1, 28, 28), exactly as training (data.normalize; the tutorial's
    0.5/0.5 unless the model was trained with its dataset's own statistics). The only step that needs torch;
    everything above is numpy and Pillow, which the onnxruntime backend runs without it."""
    import torch

    from mnist_cnn.data import normalize

    return normalize(torch.from_numpy(np.ascontiguousarray(image28)), mean, std)


def preprocess(source):
    """A path, bytes, file, PIL image or array -> normalized float32 torch tensor (1, 28, 28) for the network."""
    return normalize_image(to_mnist(load_image(source)))
