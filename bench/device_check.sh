#!/usr/bin/env bash
# The GPU check, for a CUDA machine (bench/device_check.py says what it runs; about 5 minutes).
# On a bare machine it makes its own venv and installs the project; with no network it falls back to a
# python3 that already has torch. Prints one table; writes bench/results/device_check-*.json.
#   bench/device_check.sh [--data-dir DIR] [--skip-compile]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ] || ! "$PY" -c "import mnist_cnn, pytest" 2>/dev/null; then
    python3 -m venv .venv --system-site-packages
    if ! .venv/bin/pip install --disable-pip-version-check -q -e '.[dev]'; then
        echo "device_check: pip install failed (offline?); installing without dependencies over the system torch" >&2
        .venv/bin/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e . || true
    fi
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
exec timeout 330 "$PY" bench/device_check.py "$@"
