"""Shipping a trained model: `export.py` writes and checks the ONNX file, `quantize.py` its int8 version,
`web.py` a static page that runs it in the browser (with `page/`). The runtime side, which needs no torch, is
`mnist_cnn.predict.backend`."""
