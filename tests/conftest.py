import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's: Playwright's own browser download does not work here
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


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


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium (Playwright driving Debian's) for the whole session; tests take it through `browser`.
    While Playwright's sync API is started, this thread counts as running its event loop, so asyncio.run() in a
    later test would fail: the tests that use it run last (pytest_collection_modifyitems)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def browser(chromium):
    """The session's Chromium for one test: every context (and so page) the test opens is closed after it, so no
    test sees another's cookies, storage or pages."""
    before = set(chromium.contexts)
    yield chromium
    for context in chromium.contexts:
        if context not in before:
            context.close()


def pytest_collection_modifyitems(items):
    """The tests that use the session's Chromium run last, each module's in their usual order: see `chromium`."""
    items.sort(key=lambda item: "chromium" in getattr(item, "fixturenames", ()))
