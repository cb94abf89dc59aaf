"""The server's latency under load, measured with wrk (a C load generator), and its cost under hostile load.

    python bench/serve_load.py MODEL.pth [--backends torch onnxruntime] [--onnx MODEL.onnx] [--workers 1 2]
                               [--connections 1 16 64] [--seconds 10] [--repeats 3] [--server-args "..."]
                               [--hostile] [--load-tool] [--json]

For each backend (both by default) and each --workers count (`serve --workers N`; default 1) starts
`mnist-cnn serve` on a free loopback port (torch: MODEL.pth;
onnxruntime: --onnx, or MODEL.pth exported into a temp folder by `mnist-cnn export` first), then for each
connection count runs `wrk -t1 -cC -dS --latency -s post.lua` (keep-alive connections, each POSTing a 28x28
JSON digit, MNIST test digit #0, to /api/predict as fast as it is answered) --repeats times, and prints p50,
p99 and requests/s (median over the repeats, and each run's p99). wrk, not a Python client: on a 2-core
machine a Python client competes with the server for the same cores and the GIL and measures itself.

--server-args more `serve` flags for every server, e.g. "--batch 16".
--load-tool   also runs the bundled `python -m mnist_cnn.serve.load` at 16 connections on the first backend's
              server, to compare with wrk (docs/serve.md says why both exist).
--hostile     also measures normal traffic (wrk, 16 connections) on the first backend's server while hostile
              clients run beside it: uploads of PNGs claiming 40 Mpx, uploads of 2000x2000 (4 Mpx) photos,
              headers and bodies sent a byte at a time, and 200 idle sockets. Reports the server's peak RSS
              (VmHWM), wrk's p99 against the baseline's, and 5xx counts. Targets: peak RSS < 1 GB, p99 within
              2x, no 5xx.

Results go to bench/results/serve_load-<date>-<machine>.json (perf/results.py's wrapper), with the machine's
load average before and after each run: a figure without its load is not worth quoting on a shared machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"  # a file named serve_load-<UTC date>-<machine>.json is made inside
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}  # wrk's latency units -> ms
STARTUP_S = 300  # for a server to answer /healthz, or to stop (torch's import alone took 60 s on the loaded VM)


def fail(msg: str):
    print(f"serve_load: {msg}", file=sys.stderr)
    sys.exit(2)


# -----------------------------------------------------------------------------
# the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, data_dir: str, extra: list[str], log) -> tuple[subprocess.Popen, str]:
    """`mnist-cnn serve` on a free loopback port; returns once /healthz answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "serve", "--model", model, "--port", str(port),
                             "--data-dir", data_dir, *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"the server exited ({proc.returncode}):\n{Path(log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    fail(f"the server did not come up within {STARTUP_S} s:\n{Path(log.name).read_text()[-2000:]}")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (Linux VmHWM), in MB, with its worker processes' (--workers)."""
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        kids = []
    total = 0.0
    for p in (pid, *kids):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total or float("nan")


def export_onnx(model: str, data_dir: str, folder: Path) -> str:
    """MODEL.pth -> folder/model.onnx with `mnist-cnn export` (checked against PyTorch, as a user makes it)."""
    out = folder / "model.onnx"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "mnist_cnn", "export", model, "--out", str(out), "--data-dir",
                           data_dir], capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        fail(f"cannot export {model} to ONNX: {proc.stderr.strip()}")
    return str(out)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


# -----------------------------------------------------------------------------
# wrk


def wrk_script(folder: Path, data_dir: str) -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    from mnist_cnn.data import load_mnist

    pixels = load_mnist(data_dir, quiet=True, fetch=False).test_images[0].tolist()
    body = json.dumps({"pixels": pixels})
    script = folder / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [==[{body}]==]\n")
    return script


def ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def run_wrk(base: str, script: Path, connections: int, seconds: int) -> dict:
    before = loadavg()
    # --timeout 10s: a slow answer is measured, not dropped from the percentiles as a "timeout" (wrk's default: 2 s)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
                          "-s", str(script), base + "/api/predict"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not pct or not rps:
        fail(f"cannot read wrk's output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"connections": connections, "p50_ms": round(ms(pct["50"]), 2), "p99_ms": round(ms(pct["99"]), 2),
            "req_per_s": float(rps.group(1)), "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0,
            "load_before": before, "load_after": loadavg()}


def median_row(runs: list[dict]) -> dict:
    keys = ("p50_ms", "p99_ms", "req_per_s")
    return {"connections": runs[0]["connections"], **{k: round(statistics.median(r[k] for r in runs), 2)
                                                       for k in keys},
            "non_2xx": sum(r["non_2xx"] for r in runs), "socket_errors": sum(r["socket_errors"] for r in runs),
            "n": len(runs), "runs": runs}


# -----------------------------------------------------------------------------
# hostile clients


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height pixels (70 bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + raw[24:29]
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(raw)


def big_photo() -> bytes:
    """A 2000x2000 RGBA PNG of a stroke with noise: within the default 4 Mpx budget, costly to decode."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    a = rng.integers(200, 256, (2000, 2000, 4), dtype=np.uint8)
    a[400:1600, 900:1100, :3] = 20
    a[..., 3] = 255
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def upload(port: int, raw: bytes) -> int:
    import http.client

    boundary = "hostile"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n").encode() \
        + raw + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/api/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = conn.getresponse()
        r.read()
        return r.status
    except OSError:
        return -1
    finally:
        conn.close()


def idle_sockets(port: int, stop: threading.Event, n: int = 200):
    """Keep `n` connections open that never send a byte (reopening the ones the server closes)."""
    socks = []
    while not stop.is_set():
        socks = [s for s in socks if s.fileno() != -1]
        while len(socks) < n and not stop.is_set():
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        time.sleep(1.0)
    for s in socks:
        s.close()


def hostile(port: int, stop: threading.Event, counts: dict):
    """Start the hostile clients as daemon threads; they run until `stop` is set."""
    bomb, photo = png_claiming(6324, 6324), big_photo()

    def uploader(raw, key):
        while not stop.is_set():
            status = upload(port, raw)
            counts[key][status] = counts[key].get(status, 0) + 1

    def trickler(head: bytes):
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    s.sendall(head)
                    while not stop.is_set():
                        s.send(b"a")
                        time.sleep(1.0)
            except OSError:
                counts["slow_closed_by_server"] += 1

    counts.update({"bomb": {}, "photo": {}, "slow_closed_by_server": 0})
    workers = [threading.Thread(target=uploader, args=(bomb, "bomb")) for _ in range(2)]
    workers += [threading.Thread(target=uploader, args=(photo, "photo")) for _ in range(4)]
    workers += [threading.Thread(target=trickler, args=(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ",))
                for _ in range(4)]
    workers += [threading.Thread(target=trickler, args=(
        b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n",)) for _ in range(4)]
    workers.append(threading.Thread(target=idle_sockets, args=(port, stop)))
    for w in workers:
        w.daemon = True
        w.start()
    return workers


# -----------------------------------------------------------------------------
# the run


def load_tool(base: str, connections: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "mnist_cnn.serve.load", "--url", base, "--requests", "3000",
                           "--concurrency", str(connections), "--json"], capture_output=True, text=True, env=env,
                          timeout=600)
    report = json.loads(proc.stdout)
    return {"connections": connections, "p50_ms": report["latency_ms"]["p50"],
            "p99_ms": report["latency_ms"]["p99"], "req_per_s": report.get("throughput_rps"),
            "errors": report["errors"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--backends", nargs="+", choices=["torch", "onnxruntime"], default=["torch", "onnxruntime"])
    ap.add_argument("--onnx", help="the ONNX model for onnxruntime (default: MODEL exported into a temp folder)")
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1], help="`serve --workers` counts to measure")
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hostile", action="store_true")
    ap.add_argument("--load-tool", action="store_true")
    ap.add_argument("--server-args", default="", help="more `serve` flags for every server, one string")
    ap.add_argument("--results", default=str(RESULTS) + os.sep, help="a file, or a folder to make one in")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        fail("wrk is not installed (Debian: apt-get install wrk)")
    for path in (args.model, args.onnx):
        if path and not Path(path).is_file():
            fail(f"{path}: no such model file")
    result = {"machine": {"cpus": os.cpu_count(), "load_at_start": loadavg()}, "model": Path(args.model).name,
              "server_args": args.server_args, "seconds": args.seconds, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "servers": []}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        script = wrk_script(Path(tmp), args.data_dir)
        models = {"torch": args.model}
        if "onnxruntime" in args.backends:
            models["onnxruntime"] = args.onnx or export_onnx(args.model, args.data_dir, Path(tmp))
        for k, (backend, workers) in enumerate((b, w) for b in args.backends for w in args.workers):
            extra = ["--backend", backend, "--workers", str(workers), *shlex.split(args.server_args)]
            log = Path(tmp) / f"serve-{backend}-{workers}.log"
            result["servers"].append({"backend": backend, "workers": workers,
                                      **measure(models[backend], extra, script, log, args, first=k == 0)})
    report(result, args)


def measure(model: str, extra: list[str], script: Path, log_path: Path, args, first: bool) -> dict:
    """One server: wrk at each connection count (and, on the first server, the load tool and hostile runs)."""
    out = {"model": Path(model).name}
    with open(log_path, "w") as log:
        proc, base = start_server(model, args.data_dir, extra, log)
        try:
            run_wrk(base, script, 16, 2)  # warm-up, not counted
            out["wrk"] = [median_row([run_wrk(base, script, c, args.seconds) for _ in range(args.repeats)])
                          for c in args.connections]
            if args.load_tool and first:
                out["load_tool"] = [load_tool(base, 16) for _ in range(args.repeats)]
            if args.hostile and first:
                out["hostile"] = hostile_run(base, int(base.rsplit(":", 1)[1]), script, proc.pid, args)
            out["peak_rss_mb"] = round(peak_rss_mb(proc.pid), 1)
        finally:
            proc.send_signal(2)
            try:
                proc.wait(timeout=STARTUP_S)  # a loaded machine can take minutes to wind down torch processes
            except subprocess.TimeoutExpired:
                proc.kill()
                fail(f"the server did not stop on SIGINT within {STARTUP_S} s:\n{log_path.read_text()[-2000:]}")
    return out


def hostile_run(base, port, script, pid, args) -> dict:
    baseline = median_row([run_wrk(base, script, 16, args.seconds) for _ in range(args.repeats)])
    stop, counts = threading.Event(), {}
    hostile(port, stop, counts)
    time.sleep(2)  # let the hostile clients get going
    under = median_row([run_wrk(base, script, 16, args.seconds) for _ in range(args.repeats)])
    stop.set()
    rss = peak_rss_mb(pid)
    fivexx = sum(n for key in ("bomb", "photo") for status, n in counts[key].items() if status >= 500)
    return {"baseline_16": baseline, "hostile_16": under, "peak_rss_mb": round(rss, 1),
            "p99_ratio": round(under["p99_ms"] / baseline["p99_ms"], 2), "hostile_answers": counts,
            "hostile_5xx": fivexx, "normal_non_2xx": under["non_2xx"],
            "targets_met": rss < 1024 and under["p99_ms"] <= 2 * baseline["p99_ms"] and fivexx == 0
            and under["non_2xx"] == 0}


def report(result: dict, args):
    sys.path.insert(0, str(ROOT / "src"))
    from mnist_cnn.perf.results import write_results

    out = write_results(args.results, "serve_load", result, n=args.repeats,
                        n_is="wrk runs per connection count and server (p50, p99, req/s: their medians; each "
                             "run kept)")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']}, {result['machine']['cpus']} CPUs, load {result['machine']['load_at_start']} at "
          f"start; serve {result['server_args'] or '(defaults)'}; wrk -t1 -d{args.seconds}s, median of "
          f"{args.repeats}")
    print(f"{'backend':>11} {'workers':>7} {'conns':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>7}  "
          f"p99 of each run")
    for b in result["servers"]:
        for r in b["wrk"]:
            print(f"{b['backend']:>11} {b['workers']:>7} {r['connections']:>5} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                  f"{r['req_per_s']:>8} {r['non_2xx'] + r['socket_errors']:>7}  {[x['p99_ms'] for x in r['runs']]}")
        for r in b.get("load_tool", []):
            print(f"load tool, 16 conns: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['req_per_s']} req/s")
        if h := b.get("hostile"):
            print(f"hostile: p99 {h['baseline_16']['p99_ms']} -> {h['hostile_16']['p99_ms']} ms "
                  f"(x{h['p99_ratio']}), peak RSS {h['peak_rss_mb']} MB, hostile 5xx {h['hostile_5xx']}, "
                  f"normal non-2xx {h['normal_non_2xx']}; targets met: {h['targets_met']}")
    print("peak RSS (all processes) " + ", ".join(f"{b['backend']} x{b['workers']} {b['peak_rss_mb']} MB"
                                                   for b in result["servers"]) + f"; wrote {out}")


if __name__ == "__main__":
    main()
