"""Scaling figures for docs/scaling.md: training images/s with 1 and 2 processes, the gradient all-reduce, a step.

    python bench/scaling.py [--repeats 3] [--subset 12800] [--batches 64 256 1024]

1. images/s training (train_seconds of the history: no start-up, no evaluation), `mnist-cnn train` alone against
   `torchrun --standalone --nproc-per-node 2`, alternating the order, same nice level, n = --repeats each;
   the threads are the project's default (the cores, shared among the processes of a node); with --one-thread
   also 1 process with --threads 1 (on a machine busy with other work 2 threads can be far slower than 1).
2. the all-reduce of the model's 225,034 fp32 gradients between 2 processes over gloo on loopback (median of 50).
3. one training step (forward, backward, Adam) in one process, 1 thread, at each batch size (median of 10).
Writes bench/results/scaling-*.json and prints a summary. Say how loaded the machine was when you quote it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_rate(procs: int, batch: int, subset: int, data_dir: str, out: Path, threads: int = 0) -> dict:
    launcher = ([sys.executable, "-m", "mnist_cnn"] if procs == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
                 "-m", "mnist_cnn"])
    cmd = [*launcher, "train", "--data-dir", data_dir, "--epochs", "1", "--train-subset", str(subset),
           "--batch-size", str(batch), "--seed", "0", "--out", str(out), "--json", "--threads", str(threads)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr[-2000:]}")
    h = json.loads(p.stdout)["history"][0]
    return {"procs": procs, "threads": threads or "auto", "batch": batch,
            "images_per_s": h["images"] / h["train_seconds"], "wall_s": wall,
            "test_accuracy": h["test_accuracy"], "load1": os.getloadavg()[0]}


def allreduce_worker() -> None:
    """Run under torchrun: time all_reduce of 225,034 fp32 (the tutorial net's gradients); rank 0 prints JSON."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    flat = torch.randn(225_034)
    times = []
    for i in range(60):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        if i >= 10:
            times.append(time.perf_counter() - t0)
    if dist.get_rank() == 0:
        print(json.dumps({"allreduce_ms_median": 1000 * statistics.median(times),
                          "allreduce_ms_min": 1000 * min(times), "n": len(times)}))
    dist.barrier()
    dist.destroy_process_group()


def step_ms(batches: list[int]) -> dict:
    import torch
    import torch.nn.functional as F

    from mnist_cnn.model import Net
    from mnist_cnn.train import pick_dtype

    torch.set_num_threads(1)  # one core's compute: what a node adds per core; robust on a shared machine
    dtype = pick_dtype("auto", torch.device("cpu"))
    model = Net().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    out = {}
    for b in batches:
        x = torch.randn(b, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (b,))
        times = []
        for i in range(12):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        out[b] = 1000 * statistics.median(times)
    return {"dtype": str(dtype), "threads": torch.get_num_threads(), "step_ms_median": out}


GRAD_BYTES = 225_034 * 4  # the tutorial net's gradients, fp32
HOP_LATENCY_S = 30e-6  # an assumption: one TCP message between machines on a LAN (gloo); NCCL/RDMA is ~5 us


def model(step_ms_by_batch: dict, nodes=(1, 2, 4, 8, 16, 64), gbits=(10, 100)) -> list[dict]:
    """Predicted images/s of N nodes at a global batch B: B / (compute(B / N) + ring all-reduce(N)), where compute
    is a straight line fitted to the measured one-process step times and the ring all-reduce moves
    2 (N - 1) / N * GRAD_BYTES per node in 2 (N - 1) messages."""
    xs, ys = zip(*sorted((int(b), ms / 1000) for b, ms in step_ms_by_batch.items()), strict=True)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    intercept = my - slope * mx
    rows = []
    for batch in xs:
        for n in nodes:
            compute = intercept + slope * batch / n
            for g in gbits:
                comm = 0.0 if n == 1 else 2 * (n - 1) / n * GRAD_BYTES / (g * 1e9 / 8) + 2 * (n - 1) * HOP_LATENCY_S
                rows.append({"batch": batch, "nodes": n, "gbit_s": g, "compute_ms": 1000 * compute,
                             "allreduce_ms": 1000 * comm, "images_per_s": batch / (compute + comm)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subset", type=int, default=12800)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--one-thread", action="store_true", help="also time 1 process with --threads 1")
    ap.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.allreduce_worker:
        return allreduce_worker()
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="scaling_"))
    runs = []
    for i in range(args.repeats):
        variants = [(1, 0), (2, 0)] + ([(1, 1)] if args.one_thread else [])
        for procs, threads in (variants if i % 2 == 0 else variants[::-1]):  # alternate the order: the machine drifts
            runs.append(train_rate(procs, args.batches[0], args.subset, args.data_dir, work / "m.pth", threads))
            print(runs[-1], flush=True)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(Path(__file__).resolve()), "--allreduce-worker"], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    allreduce = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {"error": p.stderr[-500:]}
    steps = step_ms(args.batches)
    summary = {}
    for r in runs:
        summary.setdefault(f"{r['procs']} process(es), threads {r['threads']}", []).append(r["images_per_s"])
    summary = {k: {"images_per_s_median": statistics.median(v), "n": len(v)} for k, v in summary.items()}
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
              "nice": os.nice(0), "runs": runs, "summary": summary, "allreduce": allreduce, "step": steps,
              "model": model(steps["step_ms_median"]), "hop_latency_s": HOP_LATENCY_S}
    print(json.dumps({k: result[k] for k in ("summary", "allreduce", "step")}, indent=1))
    out = ROOT / "bench" / "results" / f"scaling-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
