"""Predict: load a checkpoint once, then read many images: a digit, a number, or "not a digit".

    clf = Classifier.load("mnist_cnn_model.pth")       # architecture rebuilt from the checkpoint's JSON
    clf = Classifier.load("mnist_cnn.onnx")            # an exported model, run by onnxruntime (no torch)
    p = clf.predict("my_digit.jpg")                    # path, bytes, file, PIL image, numpy array or tensor
    p.prediction, p.is_digit, p.confidence             # the digit (None if it does not look like one), how sure
    p.digit, p.probabilities, p.image28                # the best guess, 10 softmax probabilities, what the net saw
    p.number, p.digits                                 # "4217" and one reading per digit, left to right
    p.label                                            # the class's name ("7"; "Sneaker" for Fashion-MNIST)

A model trained on another dataset (`train --dataset fashion-mnist`) names its classes ("Sneaker") from its
checkpoint, normalizes with the statistics it was trained with, and, as its classes are not digits, prepares
an image by fitting the whole picture into 28x28 (`to_square`) instead of MNIST's digit cropping (and no
number segmentation).

As the tutorial's Q&A says, the network's last layer gives 10 scores (logits); softmax turns them into a
probability per class and the prediction is the largest. Images go through `mnist_cnn.predict.preprocess` first,
so a photo of dark ink on paper looks like an MNIST digit to the network; an image holding a row of digits is
cut into them first (segment.py) and each is read alone. An already-normalized tensor of shape (1, 28, 28) or
(28, 28) (as `preprocess` returns it, values in [-1, 1]) is taken back to its 0..255 pixels and not
preprocessed again. The network runs in a backend (`backend.py`: PyTorch or onnxruntime), which takes uint8
(B, 28, 28) pixels and returns softmax probabilities.

Trust comes from the checkpoint's JSON (calibrate.py; written by `train --augment`): the logits are divided by
its temperature before the softmax, and a largest probability under its threshold means "not a digit". A
checkpoint without it (the tutorial's recipe, or one written before) gives the plain softmax and is_digit None
("unknown"): `Classifier.trust["note"]` says what it lacks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnist_cnn.data import DIGITS, MEAN, STD, denormalize
from mnist_cnn.predict.backend import load_backend
from mnist_cnn.predict.preprocess import PreprocessError, ink_map, ink_to_mnist, load_image, to_square
from mnist_cnn.predict.segment import segment

NO_TRUST = ("this checkpoint has no calibration and no 'not a digit' threshold (train it with `mnist-cnn train "
            "--augment`): probabilities are the plain softmax, is_digit is unknown")


@dataclass
class Reading:
    """One digit: what the network says about one 28x28 image."""
    digit: int  # the most probable class: the best guess, even when it does not look like a digit
    probabilities: list[float]  # softmax over the 10 classes (temperature-scaled when calibrated), sums to 1
    image28: np.ndarray  # uint8 (28, 28): the MNIST-style image the network saw
    is_digit: bool | None = None  # None: the checkpoint cannot tell (no threshold)
    box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) in the input image, x1 and y1 exclusive
    label: str = ""  # the class's name: "7" for MNIST, "Sneaker" for Fashion-MNIST

    @property
    def confidence(self) -> float:
        return float(max(self.probabilities))

    @property
    def prediction(self) -> int | None:
        """The digit, or None when it does not look like one."""
        return None if self.is_digit is False else self.digit

    def top(self, k: int = 3) -> list[tuple[int, float]]:
        """The k most probable digits with their probabilities, most probable first."""
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(int(d), float(self.probabilities[d])) for d in order]

    def to_json(self) -> dict:
        return {"prediction": self.prediction, "label": self.label, "probabilities": self.probabilities,
                "box": self.box, "is_digit": self.is_digit, "confidence": self.confidence}


@dataclass
class Prediction(Reading):
    """The whole image: read as one digit (digit, probabilities, ...), and as the digits it holds (digits)."""
    digits: list[Reading] = field(default_factory=list)  # one per digit found, left to right

    @property
    def is_number(self) -> bool:
        return len(self.digits) > 1

    @property
    def prediction(self) -> int | None:
        return None if self.is_number else Reading.prediction.fget(self)

    @property
    def number(self) -> str | None:
        """The digits read left to right ("4217"; "7" for one digit); None if any of them is not a digit."""
        if not self.digits or any(d.is_digit is False or not (d.label or "0").isdigit() for d in self.digits):
            return None
        return "".join(str(d.digit) for d in self.digits)

    @property
    def number_confidence(self) -> float:
        return float(np.prod([d.confidence for d in self.digits])) if self.digits else self.confidence

    def to_json(self) -> dict:
        """The fields `predict --json` and /api/predict share. For a number, the single-digit fields are null."""
        many = self.is_number
        return {"prediction": self.prediction, "label": None if many else self.label,
                "best_guess": None if many else self.digit,
                "is_digit": all(d.is_digit for d in self.digits) if many and self.is_digit is not None
                else self.is_digit,
                "confidence": self.number_confidence if many else self.confidence,
                "probabilities": None if many else self.probabilities,
                "number": self.number, "digits": [d.to_json() for d in self.digits]}


def _is_normalized_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "is_floating_point") and x.is_floating_point() \
        and tuple(x.shape[-2:]) == (28, 28) and x.dim() in (2, 3) and x.numel() == 784


def prepare(x, classes=DIGITS, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """Anything predict accepts -> the uint8 (28, 28) image the network sees (the whole image, as one digit)."""
    return prepare_all(x, classes, mean, std)[0]


def prepare_all(x, classes=DIGITS, mean: float = MEAN, std: float = STD) -> tuple[np.ndarray, list]:
    """Anything predict accepts -> (the whole image as uint8 (28, 28), and the digits found in it as
    [(box, uint8 (28, 28))]: several for a number, one for a digit; box None for a tensor or for a dataset of
    other things, which are fitted whole with to_square)."""
    if _is_normalized_tensor(x):  # x is a tensor: torch is loaded already
        image28 = denormalize(x.detach().cpu().reshape(28, 28), mean, std).numpy()
        return image28, [(None, image28)]
    if tuple(classes) != DIGITS:
        image28 = to_square(load_image(x))
        return image28, [(None, image28)]
    ink = ink_map(load_image(x))  # (H, W): paper 0, ink up to 1
    parts = segment(ink)
    if not parts:
        raise PreprocessError("no ink found: the image is blank (one colour, or contrast too low)")
    image28 = ink_to_mnist(ink)
    if len(parts) == 1:
        return image28, [(parts[0][0], image28)]
    return image28, [(box, ink_to_mnist(part)) for box, part in parts]


def trust_of(meta: dict) -> dict:
    """What a checkpoint supports: {"temperature", "threshold" (None: cannot reject), "reject_temperature" (the
    temperature the threshold applies at; checkpoints before it: the calibration temperature), "calibrated",
    "note"}."""
    t = meta.get("trust") if isinstance(meta.get("trust"), dict) else None
    if t is None or not all(isinstance(t.get(k), (int, float)) for k in ("temperature", "threshold")):
        return {"temperature": 1.0, "threshold": None, "reject_temperature": 1.0, "calibrated": False,
                "note": NO_TRUST}
    t_reject = t.get("reject_temperature", t["temperature"])
    t_reject = float(t_reject) if isinstance(t_reject, (int, float)) and t_reject > 0 else float(t["temperature"])
    return {"temperature": float(t["temperature"]), "threshold": float(t["threshold"]),
            "reject_temperature": t_reject, "calibrated": True,
            "note": f"calibrated: temperature {t['temperature']:.3f}, not a digit below a largest probability of "
                    f"{100 * t['threshold']:.1f}% at temperature {t_reject:.3f} ({t.get('method', 'max-softmax')})"}


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(z / T) from softmax(z): log p = z - logsumexp(z), and the shift cancels, so p^(1/T) renormalised."""
    if temperature == 1.0:
        return probs
    q = np.power(np.asarray(probs, np.float64), 1.0 / temperature)
    return (q / q.sum(axis=-1, keepdims=True)).astype(np.float32)


class Classifier:
    def __init__(self, backend, meta: dict | None = None):
        self.backend = backend  # .forward(uint8 (B, 28, 28)) -> float32 (B, 10) probabilities
        self.meta = meta if meta is not None else getattr(backend, "meta", {})
        self.classes = backend.classes  # class k's name
        self.trust = trust_of(self.meta)

    @property
    def model(self):
        """The PyTorch network behind a torch backend (None for onnxruntime): for code that needs its logits."""
        return getattr(self.backend, "model", None)

    @classmethod
    def load(cls, path: str | Path = "mnist_cnn_model.pth", device="cpu", backend: str | None = None) -> Classifier:
        """backend: "torch" or "onnxruntime"; None picks onnxruntime for a .onnx file, torch otherwise."""
        return cls(load_backend(path, backend, device))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, 28, 28) MNIST-style images -> softmax probabilities (B, 10), temperature-scaled, float32."""
        return temper(self.backend.forward(images), self.trust["temperature"])

    def predict(self, x) -> Prediction:
        return self.predict_batch([x])[0]

    def predict_batch(self, xs) -> list[Prediction]:
        """Many images in one forward pass. A bad image raises PreprocessError (naming it) before any work."""
        prepared = [prepare_all(x, self.classes, self.backend.mean, self.backend.std) for x in xs]
        if not prepared:
            return []
        wholes = [image28 for image28, _ in prepared]
        parts = [img for _, ps in prepared if len(ps) > 1 for _, img in ps]
        probs = self.probabilities(np.stack(wholes + parts)).tolist()  # (B + digits of numbers, 10)
        out, k = [], len(wholes)
        for i, (image28, ps) in enumerate(prepared):
            many = len(ps) if len(ps) > 1 else 0
            out.append(reading(self.trust, probs[i], image28, ps, probs[k:k + many], self.classes))
            k += many
        return out


def reject_score(trust: dict, probs) -> float:
    """The "not a digit" score of a calibrated softmax row: its largest probability at the rejection temperature
    (calibrate.py picks it on held-out data; softmax(z / T_reject) = temper(softmax(z / T), T_reject / T))."""
    return float(np.max(temper(np.asarray(probs, np.float32), trust["reject_temperature"] / trust["temperature"])))


def is_digit(trust: dict, probs: list[float]) -> bool | None:
    """Does a softmax row look like a digit under this trust (trust_of)? None: the checkpoint cannot tell."""
    return None if trust["threshold"] is None else reject_score(trust, probs) >= trust["threshold"]


def reading(trust: dict, probs: list[float], image28: np.ndarray, parts: list[tuple], part_probs: list,
            classes=DIGITS) -> Prediction:
    """The whole image's probabilities and, for a number, each digit's -> a Prediction (also used by serve)."""
    best = int(np.argmax(probs))
    p = Prediction(best, probs, image28, is_digit(trust, probs), parts[0][0] if len(parts) == 1 else None,
                   classes[best])
    if len(parts) == 1:
        p.digits = [Reading(best, probs, image28, p.is_digit, parts[0][0], classes[best])]
    else:
        p.digits = [Reading(int(np.argmax(q)), q, img, is_digit(trust, q), box, classes[int(np.argmax(q))])
                    for (box, img), q in zip(parts, part_probs, strict=True)]
    return p


# -----------------------------------------------------------------------------
# for `mnist-cnn predict`: which files, and where the 28x28 inputs go


def expand_inputs(args: list[str]) -> list[tuple[str, str | bytes]]:
    """Command-line names -> [(name, path or bytes)]. Folders are walked (image files only, sorted); `-` is
    stdin's bytes. A named file that is missing stays in the list so it fails with its own error."""
    from PIL import Image

    image_exts = set(Image.registered_extensions())
    out = []
    for a in args:
        if a == "-":
            out.append(("-", sys.stdin.buffer.read()))
        elif Path(a).is_dir():
            out += [(str(p), str(p)) for p in sorted(Path(a).rglob("*"))
                    if p.is_file() and p.suffix.lower() in image_exts]
        else:
            out.append((a, a))
    return out


def save_input(image28: np.ndarray, folder: str | Path, name: str, taken: set[str]) -> Path:
    """Write the network's 28x28 input as DIR/<file stem>.png (stdin: stdin.png), never over one from this run."""
    from PIL import Image

    from mnist_cnn.data import save_output
    from mnist_cnn.errors import MnistCnnError

    stem = "stdin" if name == "-" else Path(name).stem
    candidate, n = stem, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}_{n}"
    taken.add(candidate)
    path = Path(folder) / f"{candidate}.png"
    try:
        save_output(path, Image.fromarray(image28))  # atomic; replaces a symlink instead of writing through it
    except OSError as e:
        raise MnistCnnError(f"--save-input: cannot write {path}: {e.strerror or e}") from None
    return path
