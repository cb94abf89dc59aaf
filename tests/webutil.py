"""Shared by the web tests: a briefly trained model, a free port, a real `mnist-cnn serve` subprocess."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F


def tiny_model(directory: Path, mnist) -> Path:
    """A checkpoint trained for one pass over 6k MNIST digits (~91% test accuracy; 1 torch thread: ~3 s alone,
    ~10 s on the shared 2-core machine, where 2 threads were 5x slower still). Made once per test session:
    the first caller trains, later callers find the file."""
    from mnist_cnn import checkpoint
    from mnist_cnn.data import normalize
    from mnist_cnn.model import Net

    path = directory / "web-tiny.pth"
    if path.exists():
        return path
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    images, labels = mnist.train_images[:6000], mnist.train_labels[:6000]
    for i in range(0, len(images), 100):
        loss = F.cross_entropy(model(normalize(images[i:i + 100])), labels[i:i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(normalize(mnist.test_images[:1000])).argmax(1) == mnist.test_labels[:1000]).float().mean()
    torch.set_num_threads(threads)
    checkpoint.save(path, model, {"epochs": 1, "subset": 6000},
                    [{"epoch": 1, "test_accuracy": float(acc), "note": "web tests' tiny model"}])
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10.0):
    """(status, parsed JSON or text) of a GET, without raising on 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            status, body, kind = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, body, kind = e.code, e.read(), e.headers.get("content-type", "")
    return status, json.loads(body) if "json" in kind else body.decode()


def post_json(url: str, obj, timeout: float = 10.0):
    req = urllib.request.Request(url, data=json.dumps(obj).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def serve(model: Path, data_dir: Path, log_path: Path, port: int | None = None, startup_s: float = 60.0,
          args=(), preexec_fn=None):
    """`python -m mnist_cnn serve` on a free loopback port, as a user would start it; yields its base URL.
    `args`: more serve flags; `preexec_fn`: runs in the child before it starts (e.g. a lower `ulimit -n`).
    Waits for /healthz; on exit stops it with SIGINT (Ctrl-C) and checks that it ends."""
    port = port or free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "serve", "--model", str(model), "--port", str(port),
                             "--data-dir", str(data_dir), *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=preexec_fn)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            assert proc.poll() is None, f"server exited early ({proc.returncode}): {log_path.read_text()}"
            try:
                if get(base + "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"server not up after {startup_s} s: {log_path.read_text()}"
            time.sleep(0.1)  # polling for readiness, not waiting for a result
        yield base
    finally:
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("server did not stop on SIGINT within 15 s") from None
        log.close()
