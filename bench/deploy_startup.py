"""Cold start and memory of `mnist-cnn predict` and `mnist-cnn serve`, PyTorch backend against onnxruntime.

    python bench/deploy_startup.py --pth mnist_cnn_model.pth --onnx mnist_cnn_model.onnx [--repeats 3] \
        [--results bench/results/]

For each repeat, in ABBA order (this VM slows under sustained load):
  predict  wall time of `mnist-cnn predict DIGIT.png --model M` as a new process (import, load, preprocess, run)
  serve    seconds from starting `mnist-cnn serve --model M` to its first 200 on /healthz; then 20 predictions
           and the server's resident memory (VmRSS) and peak (VmHWM) from /proc
Prints medians; with --results (a file or folder, e.g. bench/results/) writes every run and the load average
before and after through mnist_cnn.perf.results (kind "deploy_startup").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_memory(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}  # MiB


def time_predict(model: Path, image: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mnist_cnn", "predict", str(image), "--model", str(model)], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def time_serve(model: Path, data_dir: str) -> dict:
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "serve", "--model", str(model), "--port", str(port),
                             "--data-dir", data_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"server for {model} exited with {proc.returncode}") from None
                time.sleep(0.02)
        ready = time.perf_counter() - t0
        body = json.dumps({"pixels": np.zeros((28, 28), int).tolist()}).encode()
        for _ in range(20):
            req = urllib.request.Request(base + "/api/predict", data=body, headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=10).read()
        return {"ready_s": ready, **proc_memory(proc.pid)}
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pth", required=True)
    p.add_argument("--onnx", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--results", metavar="PATH", help="write the runs as JSON (a file, or a folder: named by date)")
    args = p.parse_args()
    models = {"torch": Path(args.pth), "onnxruntime": Path(args.onnx)}
    image = Path(tempfile.mkdtemp()) / "seven.png"
    img = Image.new("L", (120, 160), 255)
    ImageDraw.Draw(img).line([(20, 20), (100, 20), (50, 140)], fill=0, width=10)
    img.save(image)
    load_before = os.getloadavg()
    runs = []
    for r in range(args.repeats):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for backend in order:
            run = {"repeat": r, "backend": backend, "predict_s": time_predict(models[backend], image),
                   **time_serve(models[backend], args.data_dir)}
            runs.append(run)
            print(json.dumps(run), flush=True)
    med = {b: {k: statistics.median(x[k] for x in runs if x["backend"] == b)
               for k in ("predict_s", "ready_s", "VmRSS", "VmHWM")} for b in models}
    result = {"loadavg_before": load_before, "loadavg_after": os.getloadavg(), "median": med, "runs": runs}
    if args.results:
        from mnist_cnn.perf.results import write_results

        path = write_results(args.results, "deploy_startup", result, n=args.repeats,
                             n_is="repeats of each backend, ABBA order (figures are their medians)")
        print(f"wrote {path}")
    print(f"{'':12} {'predict s':>10} {'serve ready s':>14} {'RSS MiB':>8} {'peak MiB':>9}  medians, n={args.repeats}")
    for b, m in med.items():
        print(f"{b:12} {m['predict_s']:10.2f} {m['ready_s']:14.2f} {m['VmRSS']:8.0f} {m['VmHWM']:9.0f}")
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
