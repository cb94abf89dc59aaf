"""`serve --workers N` (issue 15): N processes accept on one port, each with its own model; Ctrl-C stops them all."""

import os
import signal
import subprocess
import sys
import time

from conftest import run_cli
from webutil import free_port, get, post_json, tiny_model


def children(pid: int) -> set[int]:
    try:
        return {int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()}
    except OSError:
        return set()


def test_two_workers_share_the_port_and_stop_together(tmp_path, mnist, mnist_dir):
    model, port = tiny_model(tmp_path.parent, mnist), free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "serve", "--model", str(model), "--port", str(port),
                             "--data-dir", str(mnist_dir), "--workers", "2"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base, pids = f"http://127.0.0.1:{port}", set()
    try:
        for _ in range(1200):  # each GET is a new connection; the kernel hands each to one of the workers
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                pids.add(get(base + "/healthz", timeout=5)[1]["pid"])
            except OSError:
                time.sleep(0.1)  # readiness polling, not a timing assertion
            if len(pids) == 2:
                break
        workers = children(proc.pid)
        assert pids == workers and len(workers) == 2, (pids, workers)
        status, body = post_json(base + "/api/predict", {"pixels": mnist.test_images[0].tolist()})
        assert status == 200 and body["prediction"] == int(mnist.test_labels[0])
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C to the parent only: it passes it on
        assert proc.wait(timeout=30) == 0
        log.close()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers), "a worker outlived the parent"


def test_bad_workers_count_is_one_line(tmp_path):
    proc = run_cli("serve", "--model", tmp_path / "none.pth", "--workers", "0")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "mnist-cnn serve: error: --workers must be in 1..64, got 0"], proc.stderr
