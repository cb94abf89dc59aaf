"""The dependency floors in pyproject.toml stay at or above the releases that fixed the known vulnerabilities a
user of this project would be exposed to (a server that decodes uploads and loads checkpoints)."""

import re
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
FIXED = {  # package -> (first fixed release, what it fixed)
    "torch": ((2, 6, 0), "CVE-2025-32434: torch.load(weights_only=True) could run code"),
    "pillow": ((10, 0, 1), "CVE-2023-4863: libwebp heap overflow, reached by WebP uploads"),
    "starlette": ((0, 49, 1), "CVE-2025-62727: Range-header DoS in FileResponse (serves the page)"),
    "python-multipart": ((0, 0, 18), "CVE-2024-53981: DoS by junk around multipart boundaries"),
}


def floors() -> dict[str, tuple[int, ...]]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[[^]]*\])?\s*>=\s*([0-9.]+)", dep)
        if m:
            out[m.group(1).lower()] = tuple(int(p) for p in m.group(2).split("."))
    return out


@pytest.mark.parametrize("package", sorted(FIXED))
def test_floor_is_at_or_above_the_fixed_release(package):
    have = floors()
    assert package in have, f"{package} has no >= floor in pyproject.toml ({FIXED[package][1]})"
    fixed, why = FIXED[package]
    pad = lambda v: v + (0,) * (3 - len(v))  # noqa: E731  (2.6 == 2.6.0)
    assert pad(have[package]) >= fixed, f"{package}>={'.'.join(map(str, have[package]))} admits {why}"
