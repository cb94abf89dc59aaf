"""`mnist-cnn serve` as a real process on a loopback port, spoken to over real HTTP; and the load script."""

import json
import socket
import subprocess
import sys
import threading

import pytest
from conftest import assert_one_line_error, run_cli
from webutil import free_port, get, post_json, serve, tiny_model

pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, mnist):
    return tiny_model(tmp_path_factory.getbasetemp(), mnist)


def raw_http(port: int, request: bytes) -> bytes:
    """Send bytes as they are (no client library tidying them up) and read the answer until the server closes.

    Reading runs while a thread writes: a server that answers 413 and closes mid-upload would otherwise reset the
    connection before we read, and the answer would be lost with the reset.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        def send():
            try:
                s.sendall(request)
                s.shutdown(socket.SHUT_WR)
            except OSError:  # the server answered and closed while we wrote
                pass

        writer = threading.Thread(target=send)
        writer.start()
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        writer.join()
    return out


def test_serve_end_to_end(model_path, mnist_dir, mnist, tmp_path):
    log = tmp_path / "serve.log"
    with serve(model_path, mnist_dir, log) as base:
        port = int(base.rsplit(":", 1)[1])
        status, page = get(base + "/")
        assert status == 200 and '<canvas id="pad"' in page
        status, sample = get(base + "/api/sample?index=0")
        assert status == 200 and sample["label"] == int(mnist.test_labels[0])
        status, out = post_json(base + "/api/predict", {"pixels": sample["pixels"]})
        assert status == 200 and len(out["probabilities"]) == 10 and abs(sum(out["probabilities"]) - 1) < 1e-5
        status, out = post_json(base + "/api/predict", {"pixels": [[300] * 28] * 28})
        assert status == 422 and "0..255" in out["detail"]
        assert get(base + "/api/model")[1]["params"] == 225_034

        # 3 MB, chunked, no Content-Length: cut off at 2 MB with 413
        chunk = b"10000\r\n" + b"0" * 0x10000 + b"\r\n"
        answer = raw_http(port, b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 48 + b"0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        # a Content-Length that says 3 MB is refused before the body is read
        answer = raw_http(port, b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                b"Content-Length: 3000000\r\n\r\n{}")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        # garbage instead of HTTP: the server answers 400 (uvicorn) and stays up
        assert raw_http(port, b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert get(base + "/healthz")[0] == 200

        # the bounded load script, small: zero errors, a latency report
        proc = subprocess.run([sys.executable, "-m", "mnist_cnn.serve.load", "--url", base, "--requests", "200",
                               "--concurrency", "8", "--warmup", "10", "--json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        report = json.loads(proc.stdout)
        assert report["ok"] == 200 and report["errors"] == 0 and report["input"].startswith("28x28 JSON (mnist")
        assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    text = log.read_text()
    assert f"serving {model_path} on http://127.0.0.1:{port}/" in text
    # one line per request: 1 good predict above + 210 from the load test (the 422 is its own line)
    assert text.count("POST /api/predict 200") == 1 + 210
    assert text.count("POST /api/predict 413") == 2 and text.count("GET /api/sample?index=0 200") == 2
    assert "Traceback" not in text


def test_serve_user_errors_are_one_line(tmp_path, model_path):
    line = assert_one_line_error(run_cli("serve", "--model", tmp_path / "none.pth", "--port", free_port()))
    assert "no such checkpoint" in line
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        line = assert_one_line_error(run_cli("serve", "--model", model_path, "--port", busy.getsockname()[1]))
    assert "cannot listen on 127.0.0.1" in line
    assert "--port must be in" in assert_one_line_error(run_cli("serve", "--model", model_path, "--port", "70000"))


@pytest.mark.parametrize("args, says", [
    (["--url", "http://10.1.2.3:8000"], "only targets loopback"),
    (["--url", "https://127.0.0.1:8000"], "--url must look like"),
    (["--requests", "0"], "--requests must be in"),
    (["--concurrency", "1000"], "--concurrency must be in"),
    (["--max-seconds", "9999"], "--max-seconds must be in"),
    (["--url", f"http://127.0.0.1:{free_port()}"], "cannot connect"),
])
def test_load_script_refuses(args, says):
    proc = subprocess.run([sys.executable, "-m", "mnist_cnn.serve.load", *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
