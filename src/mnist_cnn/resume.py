"""Crash-safe training: the resume file, and stopping cleanly on Ctrl-C or SIGTERM.

After every epoch `train` writes, each with temp file + fsync + rename (data.atomic_write), so a kill at any
instant leaves the previous complete file under the real name:

    OUT            the model's plain state_dict (what `predict`, `evaluate` and the tutorial's Net load)
    OUT.json       what made it (checkpoint.save)
    OUT.state.pt   everything needed to continue: model, optimizer, scheduler (if any), epochs done, the
                   position inside an interrupted epoch, the permutation generator and torch RNG states,
                   the metrics history, the training arguments

Under `torchrun --max-restarts N` a dead worker makes the agent restart every worker with the same command;
the restarted run (TORCHELASTIC_RESTART_COUNT > 0) finds the state file this run wrote (same
TORCHELASTIC_RUN_ID, saved in the file) and resumes on its own, repeating at most the epoch that was running.
A restart before the first epoch was saved starts again from scratch.

(OUT.state.pt is `Path(OUT).with_suffix(".state.pt")`, e.g. mnist_cnn_model.state.pt.) The state file holds only
tensors and plain Python values, so it loads with torch.load(weights_only=True) like every other file here.

`mnist-cnn train --resume --out OUT` rebuilds the run from OUT.state.pt: same model, optimizer moments, same
permutation stream, and it stops at the epoch count the run was started with. After a SIGKILL it repeats the
epoch that was running; after Ctrl-C / SIGTERM it continues from the exact step it stopped at, because the
signal handler only sets a flag, the loop notices it between two steps and saves the position. A second
Ctrl-C stops at once (the last epoch's files are still intact). With --deterministic on CPU a resumed run ends
with weights bit-identical to an uninterrupted one (tests/test_reliability.py checks this).
"""

from __future__ import annotations

import io
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path

import torch

from mnist_cnn.data import atomic_write
from mnist_cnn.errors import CheckpointError, cause

FORMAT = "mnist-cnn train state 1"


def state_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".state.pt")


# -----------------------------------------------------------------------------
# the state file


def save_state(path: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "run_id": os.environ.get("TORCHELASTIC_RUN_ID"), **state}, buf)
    atomic_write(Path(path), buf.getvalue())


REQUIRED = {  # key -> type(s) it must have
    "model": dict, "model_config": dict, "train_args": dict, "optimizer": dict, "epoch": int, "step": int,
    "generator": torch.Tensor, "torch_rng": list, "history": list,
    "partial": dict,
}


def load_state(path: str | Path) -> dict:
    """Read and check a state file (weights_only=True); CheckpointError with one line if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from (a run started with this --out writes "
                              f"it after its first epoch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a zip, forbidden pickle global, ...: all the same to the user
        raise CheckpointError(f"{path}: not a readable training state ({cause(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mnist-cnn training state")
    for key, kind in REQUIRED.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path}: training state is missing or has a bad '{key}'")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"{path}: training state's model is not a state_dict")
    augment_rng = state.get("augment_rng") or []
    if not isinstance(augment_rng, list) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in
                                                    [state["generator"], *state["torch_rng"], *augment_rng]):
        raise CheckpointError(f"{path}: training state has bad RNG states")
    if state["epoch"] < 0 or state["step"] < 0:
        raise CheckpointError(f"{path}: training state has a negative epoch or step")
    return state


def after_restart(cfg):
    """cfg with resume=True when torchrun restarted this worker (TORCHELASTIC_RESTART_COUNT > 0) and the run
    saved a state beside cfg.out under the same TORCHELASTIC_RUN_ID; otherwise cfg unchanged."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") in ("", "0") or cfg.resume or not cfg.save:
        return cfg
    path = state_path(cfg.out)
    if not path.is_file():
        return cfg  # the first attempt died before its first save: start again
    if load_state(path).get("run_id") != os.environ.get("TORCHELASTIC_RUN_ID"):
        return cfg  # another run's state: not ours to continue (it is overwritten after the first epoch)
    return replace(cfg, resume=True)


# -----------------------------------------------------------------------------
# stopping cleanly


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving; the CLI prints `message` and exits 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.message = message
        self.exit_code = 128 + signum


class StopFlag:
    """Installs SIGINT/SIGTERM handlers that only record the signal; the training loop polls `signum`.

    A second signal restores the default handlers and raises KeyboardInterrupt at once. Handlers are only
    installed from the main thread (Python's rule) and are restored on exit from the `with` block.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum:  # asked twice: stop now
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum

    def _restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        self._restore()
        return False
