"""Non-MNIST digits for tests and measurements: the digits 0-9 rendered from the fonts on this machine.

Dark ink on light paper of varied colour, varied size, place, slant and rotation, some saved as JPEG: the
kind of digit a user brings, and nothing like MNIST's handwriting. Deterministic for a given seed.

    python tests/fontdigits.py OUT_DIR [N_PER_FONT_DIGIT]    # writes OUT_DIR/<digit>_<n>.<png|jpg>

Fonts: DejaVu (Debian's fonts-dejavu-core has Sans, Sans Mono, Serif and their bolds; fonts-dejavu-extra adds
condensed, oblique and light faces). Liberation fonts, where present, are a second family kept apart.
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"),
             Path("/usr/share/fonts/truetype/liberation2")]


def fonts(family: str = "DejaVu") -> list[Path]:
    """TTF files of a family on this machine (DejaVu's math font has no ordinary digits: left out)."""
    found = {p.name: p for d in FONT_DIRS if d.is_dir() for p in sorted(d.glob(f"{family}*.ttf"))}
    return [p for name, p in sorted(found.items()) if "Math" not in name]


def glyph_mask(digit: int, font: Path, size: int) -> Image.Image:
    """The digit as an L mask (255 = ink), tightly cropped, at a font size of `size` px."""
    f = ImageFont.truetype(str(font), size)
    left, top, right, bottom = f.getbbox(str(digit))
    mask = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(mask).text((2 - left, 2 - top), str(digit), font=f, fill=255)
    return mask.crop(mask.getbbox())


def distort(mask: Image.Image, rng: random.Random) -> Image.Image:
    """Slant (shear up to +-0.25) and rotate (up to +-10 degrees) the mask, growing the canvas to fit."""
    w, h = mask.size
    shear = rng.uniform(-0.25, 0.25)
    pad = int(abs(shear) * h) + 2
    m = Image.new("L", (w + 2 * pad, h + 4), 0)
    m.paste(mask, (pad, 2))
    m = m.transform(m.size, Image.Transform.AFFINE, (1, shear, -shear * m.size[1] / 2, 0, 1, 0),
                    resample=Image.Resampling.BILINEAR)
    m = m.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BICUBIC, expand=True)
    return m.crop(m.getbbox())


def render(digit: int, font: Path, rng: random.Random) -> Image.Image:
    """One digit, dark on a light coloured background, at a random size and place on a random canvas."""
    canvas_w, canvas_h = rng.randint(40, 400), rng.randint(40, 400)
    mask = distort(glyph_mask(digit, font, rng.randint(40, 160)), rng)
    frac = rng.uniform(0.3, 0.85)  # the digit's height as a share of the canvas
    scale = min(frac * canvas_h / mask.size[1], 0.9 * canvas_w / mask.size[0])
    mask = mask.resize((max(1, round(mask.size[0] * scale)), max(1, round(mask.size[1] * scale))),
                       Image.Resampling.LANCZOS)
    paper = tuple(rng.randint(170, 255) for _ in range(3))
    ink = tuple(rng.randint(0, 90) for _ in range(3))
    img = Image.new("RGB", (canvas_w, canvas_h), paper)
    x = rng.randint(0, canvas_w - mask.size[0])
    y = rng.randint(0, canvas_h - mask.size[1])
    img.paste(Image.new("RGB", mask.size, ink), (x, y), mask)
    return img


def as_jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def digit_set(n_per: int = 3, seed: int = 0, family: str = "DejaVu") -> list[tuple[Image.Image, int, str]]:
    """(image, label, format) for every font x digit x n_per; one in three as a JPEG of quality 50-95."""
    rng = random.Random(seed)
    out = []
    for font in fonts(family):
        for digit in range(10):
            for _ in range(n_per):
                img = render(digit, font, rng)
                if rng.random() < 1 / 3:
                    out.append((as_jpeg(img, rng.randint(50, 95)), digit, "jpg"))
                else:
                    out.append((img, digit, "png"))
    return out


# -----------------------------------------------------------------------------
# awkward formats: the same digit as a browser canvas, 16-bit, palette, BMP, 8x8 and 3000x3000


def canvas_rgba(digit: int, font: Path, side: int = 280) -> Image.Image:
    """Black strokes on fully transparent pixels (0, 0, 0, 0), as a canvas.toDataURL() export gives them."""
    mask = glyph_mask(digit, font, int(side * 0.6))
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", mask.size, (0, 0, 0, 255)), ((side - mask.size[0]) // 3, side // 6), mask)
    return img


def on_paper(digit: int, font: Path) -> Image.Image:
    """The digit black on light grey paper (235), centred in a square 1.3x its larger side: the source of the
    8x8 and 3000x3000 images."""
    mask = glyph_mask(digit, font, 200)
    side = int(max(mask.size) * 1.3)
    big = Image.new("L", (side, side), 235)
    big.paste(0, ((side - mask.size[0]) // 2, (side - mask.size[1]) // 2), mask)
    return big


def awkward(digit: int, font: Path) -> dict[str, Image.Image]:
    """The digit in each awkward format, keyed by a short name. Each is what a file of that format decodes to."""
    base = render(digit, font, random.Random(digit))  # RGB dark on light
    gray = np.asarray(base.convert("L"), dtype=np.uint16)
    out = {"canvas_rgba": canvas_rgba(digit, font)}
    out["gray16"] = Image.fromarray((gray * 257).astype(np.uint16))  # mode I;16
    out["palette"] = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    for name, fmt in (("bmp", "BMP"), ("png16", "PNG"), ("gif", "GIF"), ("webp", "WEBP"), ("tiff", "TIFF")):
        src = out["gray16"] if name == "png16" else base
        buf = io.BytesIO()
        src.save(buf, fmt)
        out[name] = Image.open(io.BytesIO(buf.getvalue()))
    big = on_paper(digit, font)
    out["tiny8"] = big.resize((8, 8), Image.Resampling.BOX)
    out["huge3000"] = big.resize((3000, 3000), Image.Resampling.BILINEAR)
    return out


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    n_per = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for family in ("DejaVu", "Liberation"):
        for i, (img, label, fmt) in enumerate(digit_set(n_per, family=family)):
            img.save(out_dir / f"{family}_{label}_{i:04d}.{fmt}", quality=95)
