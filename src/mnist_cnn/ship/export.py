"""`mnist-cnn export MODEL --format onnx`: a checkpoint -> an ONNX model, checked against PyTorch before it is written.

    pixels uint8 (B, 28, 28), raw 0..255, white digit on black (what preprocess.to_mnist makes)
      Unsqueeze, Cast, /255, -0.5, /0.5     data.normalize, traced into the graph: no float input to get wrong
      the tutorial's CNN                    conv1 pool relu conv2 pool relu flatten fc1 relu fc2
    logits float32 (B, 10)                  softmax is the runtime's job (backend.softmax)

torch's current exporter (`torch.onnx.export(..., dynamo=True)`, which traces with torch.export) writes opset 18
with the batch dimension dynamic. The fused C kernel of conv1 cannot be traced, so `fused.applies` says no while
torch is compiling and the graph holds the eager layers (the same function). The model is then checked before
anything is written: onnx.checker, and onnxruntime against PyTorch on all 10,000 MNIST test images (the same
argmax everywhere, max |logit difference| <= 1e-4). The file carries metadata_props: classes, input, preprocessing,
test accuracy (measured here, by onnxruntime), the source checkpoint's sha256 and the versions that made it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import torch

from mnist_cnn import __version__, checkpoint
from mnist_cnn.data import DIGITS, atomic_write, normalize
from mnist_cnn.errors import ExportError
from mnist_cnn.model import count_params
from mnist_cnn.predict.backend import INPUT, OUTPUT, OnnxBackend

OPSET = 18
TOLERANCE = 1e-4  # max |logit difference| allowed between onnxruntime and PyTorch, fp32
CHECK_BATCH = 1000  # test images per PyTorch forward in the parity check
PREPROCESSING = ("input: uint8 (batch, 28, 28), 0..255, white digit on black, made the MNIST way: ink cropped, "
                 "longer side scaled to 20 px (aspect kept, anti-aliased), placed in 28x28 with its centre of "
                 "mass at pixel (14, 14) (mnist_cnn.predict.preprocess.to_mnist). Normalization is inside the "
                 "graph: (x / 255 - mean) / std, the tutorial's 0.5 and 0.5 unless model_config says otherwise.")


SQUARE = ("input: uint8 (batch, 28, 28), 0..255, bright object on black, the whole picture scaled to fit 28x28 "
          "and centred (mnist_cnn.predict.preprocess.to_square). Normalization is inside the graph.")


class RawPixels(torch.nn.Module):
    """The network with its normalization in front: uint8 (B, 28, 28) -> logits (B, 10)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels):
        return self.net(normalize(pixels, self.net.cfg.mean, self.net.cfg.std))


def to_onnx(net: torch.nn.Module) -> bytes:
    """The traced graph, serialized. The exporter's progress lines go nowhere (`export` prints one summary)."""
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)
    batch = torch.export.Dim("batch")
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        program = torch.onnx.export(RawPixels(net.float()).eval(), (example,), dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes={"pixels": {0: batch}},
                                    verbose=False)
    return program.model_proto.SerializeToString()


def torch_logits(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 10), PyTorch fp32, in batches."""
    with torch.inference_mode():
        return np.concatenate([RawPixels(net)(torch.from_numpy(images[i:i + CHECK_BATCH])).float().numpy()
                               for i in range(0, len(images), CHECK_BATCH)])


def onnx_logits(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 10) logits from onnxruntime, one run."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT: np.ascontiguousarray(images)})[0]


def with_metadata(model_bytes: bytes, props: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(model_bytes)
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=str(value))
    proto.producer_name, proto.producer_version = "mnist-cnn", __version__
    onnx.checker.check_model(proto, full_check=True)  # raises onnx.checker.ValidationError on a bad graph
    return proto.SerializeToString()


def write(path: Path, raw: bytes) -> None:
    try:
        atomic_write(path, raw)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None


def parity(ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict:
    """How far onnxruntime's logits are from PyTorch's on the same images."""
    return {"images": int(len(ref)), "max_abs_logit_diff": float(np.abs(ref - got).max()),
            "argmax_mismatches": int((ref.argmax(1) != got.argmax(1)).sum()),
            "torch_accuracy": float((ref.argmax(1) == labels).mean()),
            "onnx_accuracy": float((got.argmax(1) == labels).mean())}


def export_onnx(model_path: str | Path, out: str | Path, data_dir: str | Path = "data") -> dict:
    """Checkpoint -> checked ONNX file at `out`. Returns what was checked and written; raises ExportError (and
    writes nothing) if the model fails a check."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"export needs {', '.join(missing)}: pip install 'mnist-cnn[export]'")
    net, meta = checkpoint.load(model_path)
    data = checkpoint.load_data(meta, model_path, None, data_dir, quiet=True)  # the dataset it was trained on
    images, labels = data.test_images.numpy(), data.test_labels.numpy()  # (10000, 28, 28) uint8, (10000,)
    raw = to_onnx(net)
    check = parity(torch_logits(net, images), onnx_logits(raw, images), labels)
    if check["argmax_mismatches"] or not check["max_abs_logit_diff"] <= TOLERANCE:
        raise ExportError(f"the ONNX model disagrees with PyTorch on the test set ({check['argmax_mismatches']} "
                          f"different digits, max |logit difference| {check['max_abs_logit_diff']:.2e} > "
                          f"{TOLERANCE:g}); nothing written")
    classes = checkpoint.class_names(meta, net.cfg.num_classes)
    props = {"classes": json.dumps(classes), "dataset": checkpoint.dataset_of(meta)["name"],
             "preprocessing": PREPROCESSING if tuple(classes) == DIGITS else SQUARE,
             "test_accuracy": f"{check['onnx_accuracy']:.4f}", "test_images": str(check["images"]),
             "source_checkpoint": Path(model_path).name,
             "source_sha256": hashlib.sha256(Path(model_path).read_bytes()).hexdigest(),
             "model_config": json.dumps(net.cfg.to_dict()), "params": str(count_params(net)),
             "mnist_cnn_version": __version__, "torch_version": torch.__version__, "opset": str(OPSET),
             "max_abs_logit_diff_vs_torch": f"{check['max_abs_logit_diff']:.3g}"}
    final = with_metadata(raw, props)
    out = Path(out)
    write(out, final)
    OnnxBackend.load(out)  # what every user of the file will do first: it must pass
    return {"path": str(out), "bytes": len(final), "opset": OPSET, **check,
            "source_test_accuracy": (meta.get("history") or [{}])[-1].get("test_accuracy")}
