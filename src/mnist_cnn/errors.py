"""The one exception type a user can cause. The CLI turns it into one line on stderr and exit status 2."""


class MnistCnnError(Exception):
    """Bad input from the user: a flag, a file, a checkpoint, missing data. Never a bug in this package."""


class DataError(MnistCnnError):
    """MNIST files missing, corrupt or unreachable."""


class ConfigError(MnistCnnError):
    """A model or training configuration that cannot work (e.g. a feature map smaller than 1x1)."""


class CheckpointError(MnistCnnError):
    """A checkpoint that is missing, unreadable, or for another architecture."""


class ExportError(MnistCnnError):
    """An export that cannot be written or failed its own checks (e.g. ONNX disagreeing with PyTorch)."""
