"""mnist-cnn: the seed's MNIST CNN as software you can train, run on your own digits, and look inside."""

__version__ = "0.1.0"
