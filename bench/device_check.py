"""The GPU check (bench/device_check.sh runs it): what a CUDA machine must show, in one table and one JSON file.

Rows: the CUDA tests (pytest -m cuda), the fast recipe to 99% (wall and training seconds), the tutorial recipe
for 5 epochs, the same with --compile (opt-in: unmeasured until a GPU run says it helps), inference throughput at
batch 1024 and 8192 (bf16 where supported, model and data already on the device), and the NCCL path (1 node,
2 processes) when 2 GPUs exist. Each row records its command; the JSON goes to bench/results/device_check-*.json.
Budget: about 5 minutes on one modern GPU (most of it process start-up and the 5-epoch run).

    python bench/device_check.py [--data-dir data] [--skip-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], timeout: int, env: dict | None = None) -> dict:
    """Run a command; its wall time, exit status, the JSON it printed last (if any) and the tail of its stderr."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env={**os.environ, **(env or {})})
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", e.stdout or "", e.stderr or ""
        out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
    seconds = time.perf_counter() - t0
    parsed = None
    for start in (i for i, c in enumerate(out) if c == "{"):
        try:
            parsed = json.loads(out[start:])
            break
        except json.JSONDecodeError:
            continue
    return {"command": " ".join(cmd), "rc": rc, "wall_s": round(seconds, 2), "json": parsed,
            "stdout_tail": out[-1500:], "stderr_tail": err[-1500:]}


def train_row(name: str, args: list[str], data_dir: str, timeout: int, out: Path, launcher=None) -> dict:
    cmd = [*(launcher or [sys.executable, "-m", "mnist_cnn"]), "train", "--data-dir", data_dir, "--device", "cuda",
           "--out", str(out), "--json", *args]
    r = run(cmd, timeout)
    hist = (r["json"] or {}).get("history") or []
    r.update(name=name, epochs=len(hist), test_accuracy=hist[-1]["test_accuracy"] if hist else None,
             train_seconds=round(sum(h["train_seconds"] for h in hist), 2) if hist else None)
    return r


def inference_rows(checkpoint: Path, data_dir: str) -> list[dict]:
    import torch

    from mnist_cnn import checkpoint as ckpt
    from mnist_cnn.data import load_mnist
    from mnist_cnn.perf.bench import inference_rate
    from mnist_cnn.train import pick_dtype

    device = torch.device("cuda")
    model = ckpt.load(checkpoint, device)[0].to(memory_format=torch.channels_last)
    images = load_mnist(data_dir, quiet=True).test_images.to(device)
    dtype = pick_dtype("auto", device)
    rows = []
    for batch in (1024, 8192):
        rate = inference_rate(model, images, device, dtype, reference=False, batch=batch, seconds=3.0)
        rows.append({"name": f"inference batch {batch}", "images_per_s": round(rate), "dtype": str(dtype),
                     "rc": 0})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'check':34} {'status':>8} {'wall s':>8} {'train s':>8} {'acc %':>7} {'img/s':>12}"]
    for r in rows:
        status = "ok" if r.get("rc") == 0 else ("skipped" if r.get("rc") == "skipped" else f"FAIL {r.get('rc')}")
        acc = f"{100 * r['test_accuracy']:.2f}" if r.get("test_accuracy") is not None else ""
        lines.append(f"{r['name']:34} {status:>8} {r.get('wall_s', ''):>8} {r.get('train_seconds') or '':>8} "
                     f"{acc:>7} {r.get('images_per_s', ''):>12}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("device_check: no CUDA GPU here; nothing to check (the CPU suite is .ci/run)", file=sys.stderr)
        return 2
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="device_check_"))  # the checkpoints: not results, not kept
    gpus = torch.cuda.device_count()
    rows = []
    r = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], 120)
    rows.append({**r, "name": "pytest -m cuda"})
    rows.append(train_row("fast recipe to 99%", ["--recipe", "fast"], args.data_dir, 120, work / "fast.pth"))
    rows.append(train_row("tutorial recipe, 5 epochs", ["--epochs", "5"], args.data_dir, 150, work / "tut.pth"))
    if not args.skip_compile:
        rows.append(train_row("tutorial, 2 epochs, --compile", ["--epochs", "2", "--compile"], args.data_dir, 150,
                              work / "compiled.pth"))
        rows.append(train_row("tutorial, 2 epochs (no compile)", ["--epochs", "2"], args.data_dir, 90,
                              work / "plain2.pth"))
    if rows[1]["rc"] == 0:
        rows += inference_rows(work / "fast.pth", args.data_dir)
    if gpus >= 2:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                    "mnist_cnn"]
        rows.append(train_row("NCCL 1 node x 2 GPUs, 2 epochs", ["--epochs", "2"], args.data_dir, 120,
                              work / "nccl.pth", launcher))
    else:
        rows.append({"name": "NCCL 1 node x 2 GPUs", "rc": "skipped", "why": f"{gpus} GPU(s) here"})
    print(table(rows))
    result = {"machine": {"gpu": torch.cuda.get_device_name(0), "gpus": gpus, "torch": torch.__version__,
                          "cuda": torch.version.cuda, "host": platform.node(), "cpu_count": os.cpu_count()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    path = out_dir / f"device_check-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0 if all(r.get("rc") in (0, "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
