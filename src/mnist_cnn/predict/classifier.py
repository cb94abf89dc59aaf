"""Predict: load a model once, then classify many images with the full softmax.

    clf = Classifier.load("mnist_cnn_model.pth")       # architecture rebuilt from the checkpoint's JSON
    clf = Classifier.load("mnist_cnn.onnx")            # an exported model, run by onnxruntime (no torch)
    p = clf.predict("my_digit.jpg")                    # path, bytes, file, PIL image, numpy array or tensor
    p.digit, p.label, p.probabilities, p.image28       # argmax, its class name, softmax, what the net saw

A model trained on another dataset (`train --dataset fashion-mnist`) names its classes ("Sneaker") from its
checkpoint, normalizes with the statistics it was trained with, and, as its classes are not digits, prepares
an image by fitting the whole picture into 28x28 (`to_square`) instead of MNIST's digit cropping.

As the tutorial's Q&A says, the network's last layer gives 10 scores (logits); softmax turns them into a
probability per class and the prediction is the largest. Images go through `mnist_cnn.predict.preprocess` first,
so a photo of dark ink on paper looks like an MNIST digit to the network. An already-normalized tensor of
shape (1, 28, 28) or (28, 28) (as `preprocess` returns it, values in [-1, 1]) is taken back to its 0..255
pixels (exactly, for `preprocess`'s output) and not preprocessed again. The network runs in a backend
(`backend.py`: PyTorch or onnxruntime), which takes uint8 (B, 28, 28) pixels.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_cnn.data import DIGITS, MEAN, STD, denormalize
from mnist_cnn.predict.backend import load_backend
from mnist_cnn.predict.preprocess import load_image, to_mnist, to_square


@dataclass
class Prediction:
    digit: int  # the most probable class
    probabilities: list[float]  # softmax over the 10 classes, sums to 1
    image28: np.ndarray  # uint8 (28, 28): the MNIST-style image the network saw
    label: str = ""  # the class's name: "7" for MNIST, "Sneaker" for Fashion-MNIST

    def top(self, k: int = 3) -> list[tuple[int, float]]:
        """The k most probable digits with their probabilities, most probable first."""
        order = np.argsort(self.probabilities)[::-1][:k]  # class numbers; names via Classifier.classes
        return [(int(d), float(self.probabilities[d])) for d in order]


def _is_normalized_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "is_floating_point") and x.is_floating_point() \
        and tuple(x.shape[-2:]) == (28, 28) and x.dim() in (2, 3) and x.numel() == 784


def prepare(x, classes=DIGITS, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """Anything predict accepts -> the uint8 (28, 28) image the network sees, the way a model with these classes
    (digits: MNIST's cropping; others: to_square) and, for a normalized tensor, this normalisation needs it."""
    if _is_normalized_tensor(x):  # x is a tensor: torch is loaded already
        return denormalize(x.detach().cpu().reshape(28, 28), mean, std).numpy()
    return (to_mnist if tuple(classes) == DIGITS else to_square)(load_image(x))


class Classifier:
    def __init__(self, backend, meta: dict | None = None):
        self.backend = backend  # .forward(uint8 (B, 28, 28)) -> float32 (B, 10) probabilities
        self.meta = meta if meta is not None else getattr(backend, "meta", {})
        self.classes = backend.classes  # class k's name

    @classmethod
    def load(cls, path: str | Path = "mnist_cnn_model.pth", device="cpu", backend: str | None = None) -> Classifier:
        """backend: "torch" or "onnxruntime"; None picks onnxruntime for a .onnx file, torch otherwise."""
        return cls(load_backend(path, backend, device))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, 28, 28) MNIST-style images -> softmax probabilities (B, 10), float32."""
        return self.backend.forward(images)

    def predict(self, x) -> Prediction:
        return self.predict_batch([x])[0]

    def predict_batch(self, xs) -> list[Prediction]:
        """Many images in one forward pass. A bad image raises PreprocessError (naming it) before any work."""
        images = [prepare(x, self.classes, self.backend.mean, self.backend.std) for x in xs]
        if not images:
            return []
        probs = self.probabilities(np.stack(images))  # (B, 10)
        return [Prediction(int(p.argmax()), p.tolist(), img, self.classes[int(p.argmax())])
                for p, img in zip(probs, images, strict=True)]


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
