import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_dir():
    """A folder with the real, verified MNIST: the repo's ./data (fetched once if absent, offline copy allowed)."""
    from mnist_cnn.data import ensure_mnist

    ensure_mnist(ROOT / "data", quiet=True)
    return ROOT / "data"


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from mnist_cnn.data import load_mnist

    return load_mnist(mnist_dir, fetch=False)


def run_cli(*args, cwd=None, timeout=600):
    """Run `python -m mnist_cnn ARGS` as a user would; returns CompletedProcess with text output."""
    return subprocess.run([sys.executable, "-m", "mnist_cnn", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def assert_one_line_error(proc):
    """A user error: non-zero exit, exactly one line on stderr, no traceback."""
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="session")
def exported(tmp_path_factory, mnist):
    """The web tests' tiny model, exported once per session by the real CLI: ONNX fp32, int8 and the static page.
    {"model": .pth, "onnx": .onnx, "int8": .int8.onnx, "web": page folder, "report": the --json output}."""
    import json

    from webutil import tiny_model

    model = tiny_model(tmp_path_factory.getbasetemp(), mnist)
    folder = tmp_path_factory.mktemp("export")
    proc = run_cli("export", model, "--out", folder / "tiny.onnx", "--quantize", "--calibration-batches", 20,
                   "--web", folder / "web", "--data-dir", ROOT / "data", "--json", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    return {"model": model, "onnx": folder / "tiny.onnx", "int8": folder / "tiny.int8.onnx", "web": folder / "web",
            "report": json.loads(proc.stdout)}
