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


def tiny_model(directory: Path, mnist, trust: bool = False) -> Path:
    """A checkpoint trained briefly on the first 6k MNIST training digits (Adam, batches of 100, seed 0, 1 torch
    thread): one pass (~91% test accuracy; ~3 s alone, ~10 s on the shared 2-core machine, where 2 threads were 5x
    slower still). trust=True adds what `train --augment` adds for trust: non-digits (negatives.py, 400 of them,
    20 a batch) trained towards a uniform softmax over two passes, and a temperature and "not a digit" threshold
    fitted on 1,000 held-out training digits (calibrate.py), written to the checkpoint's JSON.
    Made once per test session for each setting: the first caller trains, later callers find the file."""
    from mnist_cnn import calibrate, checkpoint, negatives
    from mnist_cnn.data import normalize
    from mnist_cnn.evaluate import logits_of
    from mnist_cnn.model import Net

    path = directory / ("web-trust.pth" if trust else "web-tiny.pth")
    if path.exists():
        return path
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    images, labels = mnist.train_images[:6000], mnist.train_labels[:6000]
    others = normalize(torch.from_numpy(negatives.make(400, seed=0))) if trust else None  # (400, 1, 28, 28)
    for _ in range(2 if trust else 1):
        for k, i in enumerate(range(0, len(images), 100)):
            batch = normalize(images[i:i + 100])  # (100, 1, 28, 28); with trust, 20 non-digits after them
            logits = model(torch.cat([batch, others[(20 * k) % 400:(20 * k) % 400 + 20]]) if trust else batch)
            loss = F.cross_entropy(logits[:100], labels[i:i + 100])
            if trust:
                loss = loss + 0.5 * 20 / 120 * -F.log_softmax(logits[100:], 1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    extra = {}
    if trust:
        extra["trust"] = calibrate.calibrate(logits_of(model, mnist.train_images[50000:51000]),
                                             mnist.train_labels[50000:51000],
                                             logits_of(model, torch.from_numpy(negatives.make(100, seed=1))))
    with torch.no_grad():
        acc = (model(normalize(mnist.test_images[:1000])).argmax(1) == mnist.test_labels[:1000]).float().mean()
    torch.set_num_threads(threads)
    epochs = 2 if trust else 1
    note = "tests' tiny model with trust" if trust else "web tests' tiny model"
    checkpoint.save(path, model, {"epochs": epochs, "subset": 6000},
                    [{"epoch": epochs, "test_accuracy": float(acc), "note": note}], **extra)
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

