"""Numbers for tests and measurements: rows of 2-10 digits side by side, handwritten (MNIST test digits) or
printed (the fonts on this machine, tests/fontdigits.py), dark on light paper.

Each digit keeps its own ink box; they stand `gap` pixels apart (a few pixels at MNIST's 20-px digit height;
negative for touching digits), on slightly uneven baselines, then the whole row is scaled to a photo size on
paper of a random tint. Deterministic for a given numpy Generator.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def ink_box(a: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(a > 0)
    return a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def row_image(glyphs: list[np.ndarray], rng: np.random.Generator, gaps=(2, 6), jitter: int = 3,
              scale=(1.0, 4.0)) -> Image.Image:
    """uint8 glyphs (white ink on black, any sizes) -> one RGB image, dark ink on tinted paper, left to right."""
    h = max(g.shape[0] for g in glyphs)
    pad = 8 + jitter
    xs, x = [], pad
    for g in glyphs:
        xs.append(x)
        x += g.shape[1] + int(rng.integers(gaps[0], gaps[1] + 1))
    canvas = np.zeros((h + 2 * pad, x + pad), np.uint8)
    for g, x0 in zip(glyphs, xs, strict=True):
        y0 = pad + (h - g.shape[0]) // 2 + int(rng.integers(-jitter, jitter + 1))
        view = canvas[y0:y0 + g.shape[0], x0:x0 + g.shape[1]]
        np.maximum(view, g, out=view)
    f = rng.uniform(*scale)
    img = Image.fromarray(canvas).resize((round(canvas.shape[1] * f), round(canvas.shape[0] * f)),
                                         Image.Resampling.BILINEAR)
    cov = np.asarray(img, np.float32) / 255
    paper, ink = rng.uniform(190, 255, 3), rng.uniform(0, 80, 3)
    return Image.fromarray(np.round(paper - (paper - ink) * cov[..., None]).astype(np.uint8))


def handwritten(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator, lengths=(2, 10),
                gaps=(2, 6)) -> list[tuple[Image.Image, str]]:
    """n numbers of MNIST digits (uint8 (N, 28, 28) white on black, labels (N,)): [(image, "4217")]."""
    out = []
    for _ in range(n):
        idx = rng.integers(0, len(images), int(rng.integers(lengths[0], lengths[1] + 1)))
        glyphs = [ink_box(images[i]) for i in idx]
        out.append((row_image(glyphs, rng, gaps), "".join(str(int(labels[i])) for i in idx)))
    return out


def glyph(ch: str, font_path, size: int) -> np.ndarray:
    font = ImageFont.truetype(str(font_path), size)
    left, top, right, bottom = font.getbbox(ch)
    im = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(im).text((2 - left, 2 - top), ch, font=font, fill=255)
    return ink_box(np.asarray(im))


def printed(fonts: list, n: int, rng: np.random.Generator, lengths=(2, 10),
            gaps=(2, 6)) -> list[tuple[Image.Image, str]]:
    """n numbers in the given fonts (one font per number, 20-px digits): [(image, "4217")]."""
    out = []
    for _ in range(n):
        text = "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(lengths[0], lengths[1] + 1))))
        font = fonts[int(rng.integers(len(fonts)))]
        glyphs = [glyph(ch, font, 28) for ch in text]
        out.append((row_image(glyphs, rng, gaps), text))
    return out
