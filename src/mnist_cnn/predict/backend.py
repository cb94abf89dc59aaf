"""What runs the network: a model that maps MNIST-style digits to probabilities, in PyTorch or in onnxruntime.

    backend = load_backend("mnist_cnn_model.pth")      # PyTorch, from a checkpoint (.pth + .json)
    backend = load_backend("mnist_cnn.onnx")           # onnxruntime, from `mnist-cnn export` (no torch imported)
    probs = backend.forward(batch)                     # uint8 (B, 28, 28) white-on-black -> float32 (B, 10)
    probs, maps = backend.activations(batch)           # torch only: also the feature maps (the web page's view)

Both take the raw 0..255 pixels that `preprocess.to_mnist` makes and return the softmax over the 10 digits. The
PyTorch backend normalizes with `data.normalize`; an exported ONNX model carries that same normalization inside
its graph, so its input is the raw pixels too. Importing this module imports neither torch nor onnxruntime:
each backend imports its own runtime when it is loaded, so `predict` and `serve` with an ONNX model run in an
environment without torch (see docs/deploy.md). `predict`, `Classifier` and `serve` all run their models here.

Both offer what a caller may read: `name`, `meta` (the checkpoint's JSON, or the ONNX metadata), `summary`
({"params", "macs", ...}), `classes`, `mean`/`std`, `forward(batch)`; the PyTorch one also `model` and
`activations(batch)`. Only one thread at a time may call a backend (the server's Engine has one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mnist_cnn.data import DIGITS, MEAN, STD
from mnist_cnn.errors import CheckpointError

BACKENDS = ("torch", "onnxruntime")
INPUT, OUTPUT = "pixels", "logits"  # the names `mnist-cnn export` gives the ONNX graph's input and output
SIDE, CLASSES = 28, 10
LAYERS = ("conv1", "pool1", "conv2", "pool2", "fc1")  # the feature maps TorchBackend.activations returns


def softmax(logits: np.ndarray) -> np.ndarray:
    """(B, 10) logits -> (B, 10) float32 probabilities (max subtracted first: no overflow)."""
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_batch(batch: np.ndarray) -> np.ndarray:
    """The one input format of both backends: a C-contiguous uint8 (B, 28, 28) array."""
    if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.shape[1:] != (SIDE, SIDE) \
            or batch.ndim != 3:
        raise ValueError(f"want a uint8 (B, 28, 28) array, got {getattr(batch, 'dtype', type(batch).__name__)} "
                         f"{getattr(batch, 'shape', '')}")
    return np.ascontiguousarray(batch)


class TorchBackend:
    """A checkpoint's network in PyTorch (eval mode). `model` and `meta` are the checkpoint's; `classes` its class
    names, `mean`/`std` the normalization it was trained with."""

    name = "torch"

    def __init__(self, model, meta: dict | None = None, device="cpu"):
        from mnist_cnn import checkpoint

        self.model, self.meta, self.device = model.eval(), meta or {}, device
        self.classes = checkpoint.class_names(self.meta, model.cfg.num_classes)
        self.mean, self.std = model.cfg.mean, model.cfg.std
        self._summary = None  # computed on first use: predict never needs it

    @property
    def summary(self) -> dict:
        """Per-layer shapes, params and MACs (insight.explain.summary), for the server's /api/model."""
        if self._summary is None:
            from mnist_cnn.insight.explain import summary

            self._summary = summary(self.model.cfg)
        return self._summary

    @classmethod
    def load(cls, path: str | Path, device="cpu") -> TorchBackend:
        from mnist_cnn import checkpoint

        model, meta = checkpoint.load(path, device)
        return cls(model, meta, device)

    def _normalize(self, batch: np.ndarray):  # uint8 (B, 28, 28) -> float (B, 1, 28, 28) tensor on the device
        import torch

        from mnist_cnn.data import normalize

        return normalize(torch.from_numpy(check_batch(batch)), self.mean, self.std).to(self.device)

    def forward(self, batch: np.ndarray) -> np.ndarray:  # uint8 (B, 28, 28) -> float32 (B, 10)
        import torch

        with torch.inference_mode():
            logits = self.model(self._normalize(batch))  # (B, 10)
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def activations(self, batch: np.ndarray) -> tuple[np.ndarray, dict]:
        """uint8 (B, 28, 28) -> (probabilities (B, 10), {layer in LAYERS: (B, ...) CPU tensors}), the maps as
        insight.explain.activations gives them (conv1 and conv2 after their ReLU)."""
        from mnist_cnn.insight.explain import activations

        acts = activations(self.model, self._normalize(batch))  # {layer: (B, ...)}
        return acts["probs"].float().cpu().numpy(), {k: acts[k].cpu() for k in LAYERS}


class OnnxBackend:
    """An ONNX model written by `mnist-cnn export`, run by onnxruntime on the CPU. `meta` holds the model's
    metadata_props (classes, preprocessing, test accuracy, source checkpoint's sha256). The graph normalizes
    itself; `mean`/`std` only serve to take an already-normalized tensor back to pixels."""

    name = "onnxruntime"

    def __init__(self, session, meta: dict):
        self.session, self.meta = session, meta
        self.input = session.get_inputs()[0].name
        # what the server's /api/model shows; no layer walk without the PyTorch model (export records params)
        self.summary = {"params": int(meta.get("params", 0)) or None, "macs": None}
        self.classes = [str(c) for c in json.loads(meta.get("classes", "null")) or DIGITS]
        config = json.loads(meta.get("model_config", "{}"))
        self.mean, self.std = config.get("mean", MEAN), config.get("std", STD)

    @classmethod
    def load(cls, path: str | Path, threads: int = 1) -> OnnxBackend:
        """Open and check the model: every way the file can be wrong is one CheckpointError line."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such ONNX model (write one with `mnist-cnn export MODEL.pth`)")
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError("onnxruntime is not installed (pip install 'mnist-cnn[serve-lite]')") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        opts.log_severity_level = 3  # errors only: no per-session warnings on stderr
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            why = why.split(" failed:", 1)[-1].strip()  # drop "[ONNXRuntimeError] : 7 : ... Load model from P"
            raise CheckpointError(f"{path}: not a readable ONNX model ({why[:200]})") from None
        cls._check_signature(path, session)
        return cls(session, dict(session.get_modelmeta().custom_metadata_map))

    @staticmethod
    def _check_signature(path: Path, session) -> None:
        ins, outs = session.get_inputs(), session.get_outputs()
        want = "one uint8 input (batch, 28, 28) of raw 0..255 pixels and one output (batch, 10), " \
               "as `mnist-cnn export` writes"
        if len(ins) != 1 or len(outs) != 1:
            raise CheckpointError(f"{path}: has {len(ins)} inputs and {len(outs)} outputs; want {want}")
        shape, kind = ins[0].shape, ins[0].type
        if kind != "tensor(uint8)" or len(shape) != 3 or list(shape[1:]) != [SIDE, SIDE]:
            raise CheckpointError(f"{path}: input {ins[0].name!r} is {kind} {shape}; want {want}")
        if len(outs[0].shape) != 2 or outs[0].shape[1] != CLASSES:
            raise CheckpointError(f"{path}: output {outs[0].name!r} is {outs[0].shape}; want {want}")

    def forward(self, batch: np.ndarray) -> np.ndarray:  # uint8 (B, 28, 28) -> float32 (B, 10)
        (logits,) = self.session.run(None, {self.input: check_batch(batch)})  # (B, 10)
        return softmax(logits)


def backend_name(path: str | Path, backend: str | None = None) -> str:
    """The backend asked for, or by the file: a .onnx file goes to onnxruntime and anything else to torch."""
    return backend or ("onnxruntime" if Path(path).suffix.lower() == ".onnx" else "torch")


def load_backend(path: str | Path, backend: str | None = None, device="cpu", threads: int = 1):
    """A model file -> its backend. `threads` is onnxruntime's; torch's is the process-wide torch.set_num_threads."""
    backend = backend_name(path, backend)
    if backend == "onnxruntime":
        return OnnxBackend.load(path, threads)
    if backend == "torch":
        if Path(path).suffix.lower() == ".onnx":
            raise CheckpointError(f"{path}: an ONNX model runs with --backend onnxruntime, not torch")
        return TorchBackend.load(path, device)
    raise CheckpointError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
