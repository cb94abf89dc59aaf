"""Train the tutorial's MNIST CNN: 5 epochs, loss and test accuracy per epoch, weights saved to mnist_cnn_model.pth.

    python mnist_classifier.py                 # the tutorial's recipe
    python mnist_classifier.py --epochs 1      # any `mnist-cnn train` flag passes through

This is `mnist-cnn train` with the tutorial's defaults; see README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works from a clone even before `pip install`

from mnist_cnn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
