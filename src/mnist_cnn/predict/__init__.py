"""Your own images in, digits out: `preprocess` makes any picture look like an MNIST digit, `classifier` runs the
model on it. `from mnist_cnn.predict import Classifier` is the Python API."""

from mnist_cnn.predict.classifier import Classifier, Prediction

__all__ = ["Classifier", "Prediction"]
