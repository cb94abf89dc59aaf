"""Printed digits and awkward file formats: the font rows of docs/predict.md, reproduced.

    python bench/fonts.py mnist_cnn_model.pth [MORE.pth ...] [--json] [--results bench/results/]

For each model, three measurements on digits rendered from the fonts on this machine (tests/fontdigits.py;
Debian's fonts-dejavu-core and fonts-liberation, 21 + 16 faces here, fewer where fewer are installed):

    fonts      3 per digit and face, dark on light paper of random colour, random size, place, slant and
               rotation, a third as JPEG (digit_set)
    awkward    each DejaVu face's digits as a canvas RGBA export, 16-bit, palette, BMP, GIF, WebP, TIFF,
               16-bit PNG, 8x8 and 3000x3000 (awkward)
    tiny8      the 8x8 case alone, widened to every DejaVu and Liberation face

Every image goes through Classifier.predict_batch, the path of `mnist-cnn predict`. Each error is listed
as (face, digit, format, predicted). A few minutes per model on 2 cores, most of it the 3000x3000 images.
--results writes the figures with machine, date and versions as JSON (bench/results/README.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fontdigits import awkward, digit_set, fonts, on_paper  # noqa: E402
from PIL import Image  # noqa: E402

from mnist_cnn.errors import MnistCnnError  # noqa: E402
from mnist_cnn.perf.results import model_hashes, write_results  # noqa: E402
from mnist_cnn.predict.classifier import Classifier  # noqa: E402


def measure(clf: Classifier) -> dict:
    out = {}
    for family in ("DejaVu", "Liberation"):
        cases = digit_set(3, family=family)
        preds = clf.predict_batch([im for im, _, _ in cases])
        wrong = [(fmt, label, p.digit) for (_, label, fmt), p in zip(cases, preds, strict=True) if p.digit != label]
        out[f"fonts_{family}"] = {"n": len(cases), "right": len(cases) - len(wrong), "wrong": wrong}
    wrong, n = [], 0
    for font in fonts("DejaVu"):
        for digit in range(10):
            for fmt, img in awkward(digit, font).items():
                n += 1
                if (p := clf.predict(img).digit) != digit:
                    wrong.append((font.name, digit, fmt, p))
    out["awkward_DejaVu"] = {"n": n, "right": n - len(wrong), "wrong": wrong}
    cases = [(font, d) for family in ("DejaVu", "Liberation") for font in fonts(family) for d in range(10)]
    preds = clf.predict_batch([on_paper(d, font).resize((8, 8), Image.Resampling.BOX) for font, d in cases])
    wrong = [(font.name, d, "tiny8", p.digit) for (font, d), p in zip(cases, preds, strict=True) if p.digit != d]
    out["tiny8_all_faces"] = {"n": len(cases), "right": len(cases) - len(wrong), "wrong": wrong}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="accuracy of trained models on printed digits and awkward formats")
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--results", metavar="PATH", help="also write the figures as JSON (a folder: a dated file in it)")
    args = ap.parse_args()
    random.seed(0)
    try:
        models = {str(m): Classifier.load(m) for m in args.models}
    except MnistCnnError as e:
        raise SystemExit(f"error: {e}") from None
    results = {name: measure(clf) for name, clf in models.items()}
    if args.results:
        path = write_results(args.results, "fonts", {"models_sha256": model_hashes(args.models), "models": results},
                             n=1, n_is="evaluation per model (deterministic: random.seed(0)); each set's n is images")
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for model, res in results.items():
        for name, r in res.items():
            print(f"{model:32s} {name:16s} {r['right']:5,d} / {r['n']:5,d} = {100 * r['right'] / max(r['n'], 1):6.2f}%"
                  + (f"  wrong: {r['wrong'][:6]}{' ...' if len(r['wrong']) > 6 else ''}" if r["wrong"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
