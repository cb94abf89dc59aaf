"""`mnist-cnn export MODEL --quantize`: the checked fp32 ONNX model -> int8, by onnxruntime's static quantization.

Static: the scale and zero point of every activation are fixed in advance from calibration data, here
CALIBRATION_BATCHES batches of MNIST training images (a fixed random sample: the same file every time, and never
the test images the accuracy is then measured on). Weights are int8 per output channel, activations uint8 with
min-max ranges, in the QDQ format (QuantizeLinear/DequantizeLinear pairs around Conv, MaxPool, Relu and Gemm,
which onnxruntime fuses into integer kernels). The normalization in front stays fp32: it is four cheap ops on
the raw pixels. The int8 file's test accuracy is measured on all 10,000 test images and reported beside the
fp32 model's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mnist_cnn.data import SOURCES, atomic_write, load_arrays
from mnist_cnn.errors import ExportError
from mnist_cnn.predict.backend import INPUT

CALIBRATION_BATCHES = 200  # x CALIBRATION_BATCH training images; min-max ranges settle well before that
CALIBRATION_BATCH = 32
QUANTIZED_OPS = ["Conv", "MaxPool", "Relu", "Gemm", "MatMul"]


def calibration_reader(train_images: np.ndarray, batches: int):
    """onnxruntime's CalibrationDataReader over a fixed random sample of training images, uint8 (32, 28, 28) each."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            pick = np.random.default_rng(0).permutation(len(train_images))[:batches * CALIBRATION_BATCH]
            self.feeds = iter({INPUT: np.ascontiguousarray(train_images[pick[i:i + CALIBRATION_BATCH]])}
                              for i in range(0, len(pick), CALIBRATION_BATCH))

        def get_next(self):
            return next(self.feeds, None)

    return Reader()


def accuracy(model: str | Path, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return float((session.run(None, {INPUT: images})[0].argmax(1) == labels).mean())


def quantize(fp32_path: str | Path, out: str | Path, data_dir: str | Path = "data",
             batches: int = CALIBRATION_BATCHES) -> dict:
    """fp32 ONNX file (from export.export_onnx) -> int8 file at `out`; returns sizes and both test accuracies."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    props = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    if props.get("dataset", "mnist") not in SOURCES:
        raise ExportError(f"--quantize calibrates on a known dataset's training images ({', '.join(SOURCES)}); "
                          f"this model was trained on {props['dataset']}")
    arrays, _ = load_arrays(props.get("dataset", "mnist"), data_dir, quiet=True)
    images, labels = arrays["t10k-images-idx3-ubyte"].copy(), arrays["t10k-labels-idx1-ubyte"]  # (10000, 28, 28)
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-quantize-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)  # shapes + folding, as advised
        quantize_static(str(prepared), str(quantized), calibration_reader(arrays["train-images-idx3-ubyte"], batches),
                        quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, op_types_to_quantize=QUANTIZED_OPS)
        int8_acc, fp32_acc = accuracy(quantized, images, labels), accuracy(fp32_path, images, labels)
        proto = onnx.load(str(quantized))
    props.update(test_accuracy=f"{int8_acc:.4f}", fp32_test_accuracy=f"{fp32_acc:.4f}",
                 quantization=f"int8 static QDQ, per-channel int8 weights, uint8 activations, min-max calibrated "
                              f"on {batches * CALIBRATION_BATCH} training images")
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    raw = proto.SerializeToString()
    try:
        atomic_write(Path(out), raw)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from None
    return {"path": str(out), "bytes": len(raw), "fp32_bytes": Path(fp32_path).stat().st_size,
            "test_accuracy": int8_acc, "fp32_test_accuracy": fp32_acc,
            "calibration_images": batches * CALIBRATION_BATCH}
