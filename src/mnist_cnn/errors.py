"""The one exception type a user can cause. The CLI turns it into one line on stderr and exit status 2."""


class MnistCnnError(Exception):
    """Bad input from the user: a flag, a file, a checkpoint, missing data. Never a bug in this package."""


class DataError(MnistCnnError):
    """MNIST files missing, corrupt or unreachable."""


class ConfigError(MnistCnnError):
    """A model or training configuration that cannot work (e.g. a feature map smaller than 1x1)."""


class CheckpointError(MnistCnnError):
    """A checkpoint that is missing, unreadable, or for another architecture."""


def cause(e: BaseException, limit: int = 200) -> str:
    """An exception as one readable line for an error message: its type and the line that says why. torch's
    weights_only refusal is many lines; its "WeightsUnpickler error:" line names the blocked global and the fix."""
    lines = [line.strip() for line in str(e).replace("\x1b[1m", "").replace("\x1b[0m", "").splitlines()]
    lines = [line for line in lines if line]
    why = next((line.removeprefix("WeightsUnpickler error: ") for line in lines
                if line.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    if len(why) > limit:
        why = why[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {why}" if why else type(e).__name__


class ExportError(MnistCnnError):
    """An export that cannot be written or failed its own checks (e.g. ONNX disagreeing with PyTorch)."""
