"""What one server spends on its clients at most: the `serve` flags, their defaults and their meaning.

Kept apart from the app so that the CLI can build its flags without importing FastAPI or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mnist_cnn.errors import MnistCnnError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # the Host names a loopback server answers to


@dataclass(frozen=True)
class Limits:
    """What the server spends on its clients at most. Each field is a `serve` flag (--max-body, ...)."""

    max_body: int = field(default=2 * 1024 * 1024, metadata={"help": "bytes per request body; more -> 413"})
    max_pixels: int = field(default=4_000_000, metadata={
        "help": "pixels an upload may decode to (a JPEG is decoded at 1/2..1/8 scale to fit); more -> 400"})
    decode_side: int = field(default=1024, metadata={
        "help": "an upload is shrunk (8-bit grey) to this longer side before the float steps of preprocessing"})
    decoders: int = field(default=2, metadata={"help": "uploads decoded at the same time; the others wait"})
    queue: int = field(default=256, metadata={"help": "requests waiting for the model; more -> 503"})
    batch: int = field(default=32, metadata={"help": "images per forward pass, at most"})
    body_seconds: float = field(default=10.0, metadata={"help": "to receive a whole request body; slower -> 408"})
    header_seconds: float = field(default=10.0, metadata={
        "help": "to receive a request's headers (a new connection included); slower -> 408 and closed"})
    keep_alive_seconds: float = field(default=5.0, metadata={"help": "an idle keep-alive connection is closed"})
    connections: int = field(default=256, metadata={
        "help": "open connections; past it the longest-idle one is closed, else 503 (capped by `ulimit -n`)"})

    def __post_init__(self):
        for name, value in vars(self).items():
            if not value > 0:
                raise MnistCnnError(f"--{name.replace('_', '-')} must be positive, got {value}")
