"""Things that are not digits, made on the fly: the outliers `train --augment` teaches the network to doubt.

A network trained on digits only has never been told that anything else exists: shown a letter, a smiley or
a filled square it still puts most of its softmax on some digit. Outlier exposure (Hendrycks et al., 2019)
shows it such things during training with a uniform softmax as the target, so that "none of the digits" comes
out as a flat softmax, and a threshold on the largest (temperature-scaled) probability rejects them.

Every outlier is drawn dark on light paper at photo size and made into 28x28 by the same preprocessing as a
user's image (`to_mnist`), so it looks to the network as a user's non-digit would. Kinds:

    font      letters and symbols that do not look like a digit (no O, I, l, S, Z, B, b, g, q, G, T, ...)
              rendered from a font at a random size, slant and rotation
    letter    the same letters drawn with a pen: jittered polylines (handwriting-style), random pen width
    doodle    star, heart, smiley, arrow, hash, spiral, scribble, zigzag, cross, triangle, box, filled
              shapes (a filled square is what a pasted icon or a blotch becomes), house, cloud, wave
    texture   smoothed random noise, thresholded: stains, grain, hatching

Training and evaluation are kept apart by font (training: the STIX and Computer Modern faces matplotlib ships;
evaluation: DejaVu and Liberation, as for the printed digits of augment.py), by random seed, and by kind
(EVAL_ONLY doodles are never drawn for training). The letter alphabet is shared: its seeds differ.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mnist_cnn.predict.preprocess import PreprocessError, to_mnist

# letters and symbols with no digit look-alike (O/o/D~0, I/l/i/j/!/|~1, Z/z~2, S/s/$~5, b/G~6, T~7, B~8, g/q~9)
CHARS = "ACEFHKMNPRUVWXYaefhkmnruvwxy#%&@*+=<>~?^πλΣΩΔΦΨ∞"
TRAIN_FACES = ("STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta", "cmr10", "cmss10",
               "cmtt10", "cmb10")  # matplotlib's own; DejaVu / Liberation are for evaluation
DOODLES = ("star", "heart", "smiley", "arrow", "hash", "spiral", "scribble", "zigzag", "cross", "triangle",
           "box", "filled", "ring_dots", "grid")
EVAL_ONLY = ("house", "cloud", "wave")  # doodle kinds never drawn for training
TRAIN_MIX = {"font": 0.3, "letter": 0.3, "doodle": 0.3, "texture": 0.1}  # shares of a training pool

# pen-drawn letters: strokes of (x, y) points in a unit box, y down
STROKES = {
    "A": [[(0, 1), (0.5, 0), (1, 1)], [(0.25, 0.55), (0.75, 0.55)]],
    "C": [[(0.9, 0.15), (0.6, 0), (0.25, 0.05), (0.02, 0.4), (0.05, 0.75), (0.35, 1), (0.7, 0.97), (0.95, 0.8)]],
    "E": [[(1, 0), (0, 0), (0, 1), (1, 1)], [(0, 0.5), (0.75, 0.5)]],
    "F": [[(1, 0), (0, 0), (0, 1)], [(0, 0.5), (0.7, 0.5)]],
    "H": [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(0, 0.5), (1, 0.5)]],
    "K": [[(0, 0), (0, 1)], [(1, 0), (0, 0.55), (1, 1)]],
    "M": [[(0, 1), (0.05, 0), (0.5, 0.7), (0.95, 0), (1, 1)]],
    "N": [[(0, 1), (0, 0), (1, 1), (1, 0)]],
    "R": [[(0, 1), (0, 0), (0.7, 0.02), (0.9, 0.25), (0.7, 0.48), (0, 0.5)], [(0.35, 0.5), (1, 1)]],
    "U": [[(0, 0), (0, 0.7), (0.2, 0.97), (0.5, 1), (0.8, 0.97), (1, 0.7), (1, 0)]],
    "V": [[(0, 0), (0.5, 1), (1, 0)]],
    "W": [[(0, 0), (0.22, 1), (0.5, 0.35), (0.78, 1), (1, 0)]],
    "X": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
    "Y": [[(0, 0), (0.5, 0.5), (1, 0)], [(0.5, 0.5), (0.5, 1)]],
    "P": [[(0, 1), (0, 0), (0.7, 0.02), (0.95, 0.25), (0.7, 0.5), (0, 0.5)]],
    "L": [[(0, 0), (0, 1), (0.9, 1)]],
    "h": [[(0, 0), (0, 1)], [(0, 0.6), (0.4, 0.4), (0.85, 0.5), (0.9, 1)]],
    "k": [[(0, 0), (0, 1)], [(0.8, 0.4), (0, 0.75), (0.9, 1)]],
    "m": [[(0, 1), (0, 0.3)], [(0, 0.45), (0.25, 0.3), (0.5, 0.45), (0.5, 1)], [(0.5, 0.45), (0.75, 0.3),
                                                                               (1, 0.45), (1, 1)]],
    "n": [[(0, 1), (0, 0.3)], [(0, 0.45), (0.45, 0.3), (0.9, 0.45), (0.95, 1)]],
    "r": [[(0, 1), (0, 0.3)], [(0, 0.55), (0.4, 0.3), (0.9, 0.35)]],
    "w": [[(0, 0.3), (0.25, 1), (0.5, 0.5), (0.75, 1), (1, 0.3)]],
    "x": [[(0, 0.3), (1, 1)], [(1, 0.3), (0, 1)]],
    "e": [[(0.05, 0.65), (0.95, 0.62), (0.8, 0.35), (0.45, 0.3), (0.1, 0.45), (0.05, 0.8), (0.4, 1),
           (0.9, 0.92)]],
    "+": [[(0.5, 0.1), (0.5, 0.9)], [(0.1, 0.5), (0.9, 0.5)]],
    "=": [[(0, 0.35), (1, 0.35)], [(0, 0.65), (1, 0.65)]],
}


def font_folder() -> Path:
    return Path(str(importlib.resources.files("matplotlib") / "mpl-data" / "fonts" / "ttf"))


def train_fonts() -> list[Path]:
    return [font_folder() / f"{face}.ttf" for face in TRAIN_FACES]


def _ink_image(rng, cov: np.ndarray) -> Image.Image:
    """Ink coverage (H, W) in [0, 1] -> grey-ish ink on light, slightly tinted paper (RGB)."""
    paper = rng.uniform(200, 255, 3)
    ink = rng.uniform(0, 90) * np.ones(3)
    rgb = paper - (paper - ink) * np.clip(cov, 0, 1)[..., None]
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def _canvas(rng, side: int = 0):
    side = side or int(rng.integers(80, 200))
    return side, Image.new("L", (side, side), 0)


def _pen(rng, side: int) -> int:
    return max(1, round(side * rng.uniform(0.025, 0.08)))


def _polyline(d, pts, width):
    pts = [tuple(map(float, p)) for p in pts]
    d.line(pts, fill=255, width=width, joint="curve")
    r = width / 2
    for x, y in (pts[0], pts[-1]):
        d.ellipse((x - r, y - r, x + r, y + r), fill=255)


def draw_font(rng, fonts: list[Path], chars: str = CHARS) -> Image.Image:
    """One letter or symbol from one of `fonts`, random size, slant and rotation, somewhere on the page."""
    for _ in range(20):  # a face lacking the glyph draws nothing (or a box): try another
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(40, 140)))
        ch = chars[rng.integers(len(chars))]
        if font.getmask(ch).getbbox() is None:
            continue
        left, top, right, bottom = font.getbbox(ch)
        mask = Image.new("L", (right - left + 20, bottom - top + 20), 0)
        ImageDraw.Draw(mask).text((10 - left, 10 - top), ch, font=font, fill=255)
        shear = rng.uniform(-0.25, 0.25)
        mask = mask.transform(mask.size, Image.Transform.AFFINE, (1, shear, -shear * mask.size[1] / 2, 0, 1, 0),
                              resample=Image.Resampling.BILINEAR)
        mask = mask.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BICUBIC, expand=True)
        box = mask.getbbox()
        if box is None:
            continue
        mask = mask.crop(box)
        w, h = mask.size
        page = np.zeros((h + int(rng.integers(8, 80)), w + int(rng.integers(8, 80))), np.float32)
        y0, x0 = int(rng.integers(0, page.shape[0] - h + 1)), int(rng.integers(0, page.shape[1] - w + 1))
        page[y0:y0 + h, x0:x0 + w] = np.asarray(mask, np.float32) / 255
        return _ink_image(rng, page)
    raise ValueError("no font draws any of the characters")


def draw_letter(rng, name: str | None = None) -> Image.Image:
    """A pen-drawn letter: the strokes of STROKES jittered, slanted, squeezed; a pen of random width."""
    name = name or list(STROKES)[rng.integers(len(STROKES))]
    side, img = _canvas(rng)
    d = ImageDraw.Draw(img)
    h = side * rng.uniform(0.4, 0.8)
    w = h * rng.uniform(0.5, 1.0)
    x0, y0 = rng.uniform(0.05 * side, side - w - 0.05 * side), rng.uniform(0.05 * side, side - h - 0.05 * side)
    shear, pen = rng.uniform(-0.3, 0.3), _pen(rng, side)
    for stroke in STROKES[name]:
        p = np.array(stroke, float) + rng.normal(0, 0.05, (len(stroke), 2))
        p[:, 0] -= shear * (p[:, 1] - 0.5)
        _polyline(d, p * [w, h] + [x0, y0], pen)
    return _ink_image(rng, np.asarray(img, np.float32) / 255)


def _doodle_points(rng, kind: str) -> list[np.ndarray]:  # noqa: C901 (one short case per kind)
    """Strokes (each (n, 2), in a unit box) of one doodle."""
    t = np.linspace(0, 2 * np.pi, 60)
    c = np.array([0.5, 0.5])
    if kind == "star":
        k = int(rng.choice([5, 5, 6, 7]))
        a = np.arange(2 * k + 1) * np.pi / k + rng.uniform(0, np.pi)
        r = np.where(np.arange(2 * k + 1) % 2 == 0, 0.5, rng.uniform(0.18, 0.3))
        return [c + np.stack([np.cos(a), np.sin(a)], 1) * r[:, None]]
    if kind == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [np.stack([x, y], 1) / 36 + c]
    if kind == "smiley":
        face = c + 0.45 * np.stack([np.cos(t), np.sin(t)], 1)
        m = np.linspace(0.2 * np.pi, 0.8 * np.pi, 20)
        mouth = c + 0.27 * np.stack([np.cos(m), np.sin(m)], 1)
        eye = 0.04 * np.stack([np.cos(t), np.sin(t)], 1)
        return [face, mouth, eye + [0.35, 0.38], eye + [0.65, 0.38]]
    if kind == "arrow":
        a = rng.uniform(0, 2 * np.pi)
        u = np.array([np.cos(a), np.sin(a)])
        v = np.array([-u[1], u[0]])
        tip = c + 0.45 * u
        return [np.stack([c - 0.45 * u, tip]), np.stack([tip - 0.2 * u + 0.15 * v, tip, tip - 0.2 * u - 0.15 * v])]
    if kind == "hash":
        return [np.array([[0.35, 0], [0.3, 1]]), np.array([[0.7, 0], [0.65, 1]]),
                np.array([[0, 0.35], [1, 0.35]]), np.array([[0, 0.65], [1, 0.65]])]
    if kind == "spiral":
        s = np.linspace(0, rng.uniform(3, 6) * np.pi, 120)
        return [c + (0.5 * s / s[-1])[:, None] * np.stack([np.cos(s), np.sin(s)], 1)]
    if kind == "scribble":
        return [rng.uniform(0, 1, (int(rng.integers(8, 20)), 2))]
    if kind == "zigzag":
        n = int(rng.integers(4, 9))
        return [np.stack([np.linspace(0, 1, n), np.tile([0.2, 0.8], n)[:n]], 1)]
    if kind == "cross":
        return [np.array([[0, 0], [1, 1]]), np.array([[1, 0], [0, 1]])]
    if kind == "triangle":
        return [np.array([[0.5, 0], [1, 1], [0, 1], [0.5, 0]])]
    if kind == "box":
        return [np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]), np.array([[0, 0], [1, 1]])]
    if kind == "ring_dots":
        dots = [c + r * np.array([np.cos(a), np.sin(a)]) + 0.04 * np.stack([np.cos(t), np.sin(t)], 1)
                for a, r in zip(rng.uniform(0, 2 * np.pi, 6), rng.uniform(0.1, 0.45, 6), strict=True)]
        return dots
    if kind == "grid":
        n = int(rng.integers(3, 6))
        g = np.linspace(0, 1, n)
        return [np.array([[x, 0], [x, 1]]) for x in g] + [np.array([[0, y], [1, y]]) for y in g]
    if kind == "house":
        return [np.array([[0.1, 0.45], [0.1, 1], [0.9, 1], [0.9, 0.45], [0.5, 0], [0.1, 0.45], [0.9, 0.45]]),
                np.array([[0.4, 1], [0.4, 0.7], [0.6, 0.7], [0.6, 1]])]
    if kind == "cloud":
        bumps = [c + [0.3 * np.cos(a), 0.18 * np.sin(a)] + 0.18 * np.stack([np.cos(t), np.sin(t)], 1)
                 for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
        return bumps
    if kind == "wave":
        x = np.linspace(0, 1, 80)
        f = rng.uniform(1.5, 3.5)
        return [np.stack([x, 0.5 + 0.3 * np.sin(2 * np.pi * f * x)], 1),
                np.stack([x, 0.8 + 0.1 * np.sin(2 * np.pi * f * x)], 1)]
    raise ValueError(f"unknown doodle {kind}")


def draw_doodle(rng, kind: str) -> Image.Image:
    side, img = _canvas(rng)
    d = ImageDraw.Draw(img)
    h = side * rng.uniform(0.4, 0.85)
    w = h * rng.uniform(0.6, 1.4) if kind not in ("filled",) else h * rng.uniform(0.3, 1.5)
    w = min(w, 0.95 * side)
    x0, y0 = rng.uniform(0, side - w), rng.uniform(0, side - h)
    if kind == "filled":  # a blotch: filled square, disc or triangle
        shape = rng.integers(3)
        box = (x0, y0, x0 + w, y0 + h)
        if shape == 0:
            d.rectangle(box, fill=255)
        elif shape == 1:
            d.ellipse(box, fill=255)
        else:
            d.polygon([(x0 + w / 2, y0), (x0 + w, y0 + h), (x0, y0 + h)], fill=255)
    else:
        pen = _pen(rng, side)
        for stroke in _doodle_points(rng, kind):
            if kind == "scribble" and len(stroke) > 3:
                stroke = _smooth(stroke)
            p = stroke + rng.normal(0, 0.015, stroke.shape)
            _polyline(d, p * [w, h] + [x0, y0], pen)
    return _ink_image(rng, np.asarray(img, np.float32) / 255)


def _smooth(p: np.ndarray, steps: int = 8) -> np.ndarray:
    """Catmull-Rom through the points: a pen's smooth path."""
    q = np.vstack([p[0], p, p[-1]])
    t = np.linspace(0, 1, steps, endpoint=False)[:, None]
    seg = [0.5 * (2 * q[i] + (q[i + 1] - q[i - 1]) * t + (2 * q[i - 1] - 5 * q[i] + 4 * q[i + 1] - q[i + 2]) * t**2
                  + (3 * q[i] - q[i - 1] - 3 * q[i + 1] + q[i + 2]) * t**3) for i in range(1, len(q) - 2)]
    return np.vstack([*seg, q[-2][None]])


def draw_texture(rng) -> Image.Image:
    """Smoothed random noise, thresholded: stains, grain, blotches."""
    side = int(rng.integers(48, 160))
    cells = int(rng.integers(3, 12))
    noise = Image.fromarray((rng.uniform(0, 255, (cells, cells))).astype(np.uint8))
    field = np.asarray(noise.resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    level = rng.uniform(0.45, 0.75)
    cov = np.clip((field - level) / 0.1, 0, 1)
    if rng.uniform() < 0.5:  # grain on top
        cov = np.clip(cov + (rng.uniform(0, 1, cov.shape) < rng.uniform(0.01, 0.08)), 0, 1)
    return _ink_image(rng, cov)


def draw(rng, kind: str, fonts: list[Path], doodles=DOODLES) -> Image.Image:
    if kind == "font":
        return draw_font(rng, fonts)
    if kind == "letter":
        return draw_letter(rng)
    if kind == "doodle":
        return draw_doodle(rng, doodles[rng.integers(len(doodles))])
    if kind == "texture":
        return draw_texture(rng)
    return draw_doodle(rng, kind)  # a doodle kind by name


def make(n: int, seed: int, mix: dict[str, float] | None = None, fonts: list[Path] | None = None,
         doodles=DOODLES) -> np.ndarray:
    """n outliers as preprocessing makes them: uint8 (n, 28, 28). `mix`: kind -> share (TRAIN_MIX)."""
    rng = np.random.default_rng(seed)
    mix = mix or TRAIN_MIX
    fonts = fonts or train_fonts()
    kinds = list(mix)
    p = np.array([mix[k] for k in kinds], float)
    out = []
    while len(out) < n:
        try:
            out.append(to_mnist(draw(rng, kinds[rng.choice(len(kinds), p=p / p.sum())], fonts, doodles)))
        except PreprocessError:  # a texture that came out blank: draw another
            continue
    return np.stack(out)
