"""bench/results/ files: the wrapper every measuring script writes around its figures (perf/results.py)."""

import json
import platform

import torch

from mnist_cnn import __version__
from mnist_cnn.perf.results import command_line, write_results


def test_write_results_wraps_figures_with_machine_date_versions_and_n(tmp_path):
    payload = {"models": {"m.pth": {"fonts_DejaVu": {"n": 630, "right": 630, "wrong": []}}}}
    path = write_results(tmp_path, "fonts", payload, n=1, n_is="evaluation per model")
    assert path.parent == tmp_path and path.name.startswith("fonts-") and path.suffix == ".json"
    doc = json.loads(path.read_text())
    assert doc["results"] == payload and doc["n"] == 1 and doc["schema"] == 1 and doc["date"].endswith("+00:00")
    assert doc["versions"] == {"python": platform.python_version(), "torch": torch.__version__,
                               "mnist_cnn": __version__}
    assert doc["machine"]["cpu"] and doc["machine"]["cores"] >= 1
    named = write_results(tmp_path / "sub" / "named.json", "fonts", payload, n=1, n_is="x")  # a file path as given
    assert named == tmp_path / "sub" / "named.json" and not list(tmp_path.rglob("*.tmp"))


def test_command_line_is_what_a_user_would_retype():
    want = "python bench/fonts.py m.pth --results 'a b/'"
    assert command_line(["bench/fonts.py", "m.pth", "--results", "a b/"]) == want
    assert command_line(["/x/.venv/bin/mnist-cnn", "bench", "--quick"]) == "mnist-cnn bench --quick"
    assert command_line(["/x/src/mnist_cnn/__main__.py", "bench"]) == "python -m mnist_cnn bench"
