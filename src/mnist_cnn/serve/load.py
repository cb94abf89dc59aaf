"""A bounded load test for `mnist-cnn serve`: N predict requests from C concurrent clients, loopback only.

    python -m mnist_cnn.serve.load --url http://127.0.0.1:8000 --requests 2000 --concurrency 16 [--json]

Each client is one keep-alive HTTP/1.1 connection (asyncio, standard library only) that sends
POST /api/predict with a 28x28 JSON digit (an MNIST test digit from /api/sample when the server has the data,
else a drawn 7), waits for the answer, and sends the next, until N requests are done or --max-seconds pass.
Latency is measured per request, from the first byte written to the last byte read. A request counts as an
error if it fails, times out or does not answer 200 with a 10-probability body. After --warmup requests
(not counted) the clock starts.

Bounded on purpose: at most 100,000 requests, 256 clients and 600 seconds, and only against a loopback
address (it refuses any other host), so it cannot be pointed at somebody else's server.
Exit status: 0 if every request succeeded, 1 if any failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
import time
from urllib.parse import urlsplit

MAX_REQUESTS, MAX_CONCURRENCY, MAX_SECONDS = 100_000, 256, 600.0


class LoadError(Exception):
    pass


# what one request can end in besides success: socket errors and timeouts (OSError), short or odd answers
FAILURES = (OSError, LoadError, ValueError, KeyError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


def loopback_target(url: str) -> tuple[str, int]:
    """http://HOST:PORT -> (host, port), only if every address HOST resolves to is a loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LoadError(f"--url must look like http://127.0.0.1:8000, got {url!r}")
    try:
        port = parts.port or 80
        addrs = {ai[4][0] for ai in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
    except (OSError, ValueError) as e:
        raise LoadError(f"cannot resolve {url}: {e}") from None
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise LoadError(f"refusing {parts.hostname}: this load test only targets loopback (127.0.0.0/8, ::1)")
    return parts.hostname, port


def drawn_seven() -> list[list[int]]:
    """A 28x28 '7' (white on black), for servers without the MNIST test set."""
    img = [[0] * 28 for _ in range(28)]
    for c in range(7, 22):
        for r in (6, 7):
            img[r][c] = 255
    for r in range(8, 23):
        c = 21 - (r - 8) * 9 // 14
        img[r][c] = img[r][c - 1] = 255
    return img


# -----------------------------------------------------------------------------
# one HTTP/1.1 exchange on a kept-alive connection


async def exchange(reader, writer, request: bytes, timeout: float) -> tuple[int, bytes]:
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" not in headers:
        raise LoadError("response without Content-Length")
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    return status, body


def request_bytes(method: str, host: str, port: int, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def fetch_sample(host: str, port: int, timeout: float) -> list[list[int]] | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError) as e:
        raise LoadError(f"cannot connect to {host}:{port} ({e or type(e).__name__}); is `mnist-cnn serve` running?"
                        ) from None
    try:
        status, body = await exchange(reader, writer, request_bytes("GET", host, port, "/api/sample?index=0"),
                                      timeout)
        return json.loads(body)["pixels"] if status == 200 else None
    except FAILURES:
        return None
    finally:
        writer.close()


# -----------------------------------------------------------------------------
# the run


class Tally:
    """The requests left in the current phase (warm-up, then counted) and, once counted, each one's outcome."""

    def __init__(self):
        self.counted, self.left, self.deadline = False, 0, 0.0
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    def take(self) -> bool:
        if self.left <= 0 or time.perf_counter() > self.deadline:
            return False
        self.left -= 1
        return True

    def ok(self, seconds: float):
        if self.counted:
            self.latencies.append(seconds)

    def failed(self, e: Exception):
        if self.counted:
            key = str(e) if isinstance(e, LoadError) else type(e).__name__
            self.errors[key] = self.errors.get(key, 0) + 1


async def ask(conn, request: bytes, timeout: float):
    """One prediction request on an open connection; LoadError unless it answers 200 with 10 probabilities."""
    status, answer = await exchange(*conn, request, timeout)
    if status != 200:
        raise LoadError(f"HTTP {status}")
    if len(json.loads(answer)["probabilities"]) != 10:
        raise LoadError("answer without 10 probabilities")


async def client(tally: Tally, host: str, port: int, request: bytes, timeout: float):
    """One kept-alive connection sending requests one after the other while the tally has some left."""
    conn = None
    while tally.take():
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            await ask(conn, request, timeout)
            tally.ok(time.perf_counter() - t0)
        except FAILURES as e:
            tally.failed(e)
            if conn is not None:
                conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


async def run(host: str, port: int, requests: int, concurrency: int, max_seconds: float, warmup: int,
              activations: bool, timeout: float = 10.0) -> dict:
    pixels = await fetch_sample(host, port, timeout)
    digit = "mnist test digit #0" if pixels else "drawn 7"
    body = json.dumps({"pixels": pixels or drawn_seven(), "activations": activations}).encode()
    request = request_bytes("POST", host, port, "/api/predict", body)
    tally = Tally()
    t0 = time.perf_counter()
    for counted, n in ((False, warmup), (True, requests)):  # warm-up first, not counted; then the clock starts
        start = time.perf_counter()
        tally.counted, tally.left, tally.deadline = counted, n, t0 + max_seconds
        await asyncio.gather(*(client(tally, host, port, request, timeout) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    lat, errors = sorted(tally.latencies), tally.errors

    def pct(p):
        return round(1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 2) if lat else None

    n_err = sum(errors.values())
    return {
        "url": f"http://{host}:{port}/api/predict", "input": f"28x28 JSON ({digit})", "activations": activations,
        "requests": len(lat) + n_err, "ok": len(lat), "errors": n_err, "error_kinds": errors,
        "concurrency": concurrency, "seconds": round(wall, 3),
        "throughput_rps": round((len(lat) + n_err) / wall, 1) if wall > 0 else None,
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99),
                       "max": round(1000 * lat[-1], 2) if lat else None,
                       "mean": round(1000 * sum(lat) / len(lat), 2) if lat else None},
        "stopped_by_time_limit": len(lat) + n_err < requests,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mnist_cnn.serve.load", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="a running `mnist-cnn serve` (loopback only)")
    p.add_argument("--requests", type=int, default=2000, help=f"counted requests, 1..{MAX_REQUESTS:,}")
    p.add_argument("--concurrency", type=int, default=16, help=f"concurrent clients, 1..{MAX_CONCURRENCY}")
    p.add_argument("--max-seconds", type=float, default=60.0, help=f"stop after this long, at most {MAX_SECONDS:g}")
    p.add_argument("--warmup", type=int, default=50, help="requests sent first and not counted")
    p.add_argument("--activations", action="store_true", help="ask for the feature maps too (as the page does)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    try:
        if not 1 <= args.requests <= MAX_REQUESTS:
            raise LoadError(f"--requests must be in 1..{MAX_REQUESTS}, got {args.requests}")
        if not 1 <= args.concurrency <= MAX_CONCURRENCY:
            raise LoadError(f"--concurrency must be in 1..{MAX_CONCURRENCY}, got {args.concurrency}")
        if not 0 < args.max_seconds <= MAX_SECONDS:
            raise LoadError(f"--max-seconds must be in (0, {MAX_SECONDS:g}], got {args.max_seconds}")
        if not 0 <= args.warmup <= MAX_REQUESTS:
            raise LoadError(f"--warmup must be in 0..{MAX_REQUESTS}, got {args.warmup}")
        host, port = loopback_target(args.url)
        report = asyncio.run(run(host, port, args.requests, args.concurrency, args.max_seconds, args.warmup,
                                 args.activations))
    except LoadError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        lat = report["latency_ms"]
        print(f"{report['requests']} requests ({report['input']}) from {report['concurrency']} clients in "
              f"{report['seconds']:.2f} s: {report['throughput_rps']} req/s; latency p50 {lat['p50']} ms, "
              f"p99 {lat['p99']} ms, max {lat['max']} ms; errors {report['errors']} {report['error_kinds'] or ''}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
