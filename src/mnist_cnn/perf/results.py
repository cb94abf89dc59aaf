"""Raw measured figures as versioned JSON (bench/results/): what was measured, plus where, when and how.

`mnist-cnn bench --results PATH`, `python bench/fonts.py ... --results PATH` and `python bench/handwriting.py
... --results PATH` call `write_results`, which wraps their own JSON in one block saying which machine (CPU
model, cores, load average), when (UTC), with which versions (python, torch, mnist_cnn), from which command
line, and how many runs (n) each figure is over. The docs quote these files; a figure without one is not quoted.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path

SCHEMA = 1  # bump when the wrapper's keys change
# environment variables that change speed or what runs; recorded when set
SPEED_ENV = ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "MNIST_CNN_FUSED", "CUDA_VISIBLE_DEVICES")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else whatever platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:  # not on every platform
        load = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1min_at_write": load, "env": {k: os.environ[k] for k in SPEED_ENV if k in os.environ}}


def versions() -> dict:
    import torch

    from mnist_cnn import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "mnist_cnn": __version__}


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would retype it: `mnist-cnn bench ...`, `python bench/fonts.py ...`."""
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name
    if prog == "__main__.py":
        head = ["python", "-m", Path(argv[0]).parent.name]
    elif prog.endswith(".py"):
        head = ["python", argv[0]]
    else:
        head = [prog]
    return shlex.join(head + argv[1:])


def model_hashes(paths) -> dict:
    """{path: sha256 of the checkpoint file}: which models a figure is about."""
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def default_name(kind: str, when: datetime.datetime) -> str:
    """e.g. bench-20261129T1315Z-intel-r-xeon-r-processor-2c.json"""
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")[:40]
    return f"{kind}-{when:%Y%m%dT%H%MZ}-{cpu}-{os.cpu_count()}c.json"


def write_results(path: str | Path, kind: str, payload: dict, *, n: int, n_is: str) -> Path:
    """Write {schema, kind, date, command, machine, versions, n, n_is, results: payload} to path (a folder:
    a file named by kind, date and machine inside it). Atomic (temp file + rename). Returns the file written."""
    when = datetime.datetime.now(datetime.UTC)
    path = Path(path)
    if path.is_dir() or str(path).endswith(os.sep):
        path = path / default_name(kind, when)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "kind": kind, "date": when.isoformat(timespec="seconds"), "command": command_line(),
           "machine": machine(), "versions": versions(), "n": n, "n_is": n_is, "results": payload}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path
