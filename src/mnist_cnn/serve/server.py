"""Running the app under uvicorn with the limits a listening socket needs: what `mnist-cnn serve` calls.

uvicorn alone keeps a connection open for as long as its client likes before the first request and while
headers trickle in (a byte every few seconds), and accepts connections until the process runs out of file
descriptors, at which point every client, /healthz included, gets an empty reply. `Guarded`, uvicorn's
httptools protocol with two additions, bounds both:

  - headers: a request's headers (and a new connection's first request) must arrive within
    Limits.header_seconds, else 408 and the connection is closed. Between requests uvicorn's own
    keep-alive timeout (Limits.keep_alive_seconds) closes idle connections;
  - connections: at most Limits.connections (lowered to what `ulimit -n` leaves room for). One more
    closes the longest-idle connection (none waiting on an answer) to make room; if every connection is
    busy, the newcomer gets 503 and is closed. uvicorn's `limit_concurrency` stays on as a backstop.

And one measured fix for the latency tail: Python's cyclic garbage collector, in a full collection, walks
every object in the process (torch, numpy, FastAPI: about a million); under load that paused the event loop
for 100-600 ms at a time (2-core machine, loaded; gc callbacks timed them), which is the p99 wrk saw.
`gc.freeze()` after start-up moves everything loaded so far out of the collector's sight.

`run_workers` is `serve --workers N`: N processes forked after the socket is bound, each accepting on it with
its own event loop, app, model and forward thread (docs/serve.md has the measurements that decide N).
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import socket
import sys
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mnist_cnn.serve.limits import Limits

FD_RESERVE = 32  # descriptors kept for everything that is not a client: logs, decoders' temp files, libraries


def plain(status: str, text: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, for the protocol to write without the app."""
    body = text.encode() + b"\n"
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


BUSY = plain("503 Service Unavailable", "server busy: no free connection slot; retry")
SLOW = plain("408 Request Timeout", "request headers not received in time")


def connection_budget(wanted: int) -> int:
    """`wanted`, or fewer if the file-descriptor limit leaves less room (after raising the soft limit to
    the hard one, as far as allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ValueError, OSError):
            pass
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    return max(1, min(wanted, soft - in_use - FD_RESERVE))


class Guarded(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a connection cap (module docstring).
    `guarded_protocol` sets the two limits on a subclass."""

    header_seconds: float = 10.0
    max_connections: int = 256

    def connection_made(self, transport):
        super().connection_made(transport)
        self.idle_since, self.deadline = time.monotonic(), None
        self.arm()
        if len(self.connections) > self.max_connections:
            self.make_room()

    def make_room(self):
        idle = [c for c in self.connections if c is not self and not c.transport.is_closing()
                and (c.cycle is None or c.cycle.response_complete)]
        if idle:
            oldest = min(idle, key=lambda c: c.idle_since)
            oldest.transport.close()
            self.connections.discard(oldest)  # now: uvicorn counts connections before connection_lost runs
        else:
            self.transport.write(BUSY)
            self.transport.close()

    def arm(self):
        self.disarm()
        self.deadline = self.loop.call_later(self.header_seconds, self.too_slow)

    def disarm(self):
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def too_slow(self):
        if not self.transport.is_closing():
            self.transport.write(SLOW)
            self.transport.close()

    def on_message_begin(self):
        super().on_message_begin()
        self.arm()

    def on_headers_complete(self):
        self.disarm()
        super().on_headers_complete()

    def on_response_complete(self):
        self.idle_since = time.monotonic()
        super().on_response_complete()

    def connection_lost(self, exc):
        self.disarm()
        super().connection_lost(exc)


def guarded_protocol(header_seconds: float, max_connections: int) -> type:
    return type("Guarded", (Guarded,), {"header_seconds": header_seconds, "max_connections": max_connections})


def run(app, sock: socket.socket, limits: Limits) -> None:
    """Serve `app` on the bound socket until Ctrl-C."""
    import uvicorn

    connections = connection_budget(limits.connections)
    if connections < limits.connections:
        print(f"note: at most {connections} connections (the open-file limit, `ulimit -n`, leaves no room for "
              f"{limits.connections})", flush=True)
    gc.collect()
    gc.freeze()  # see the module docstring: no full-heap collection pauses under load
    config = uvicorn.Config(app, http=guarded_protocol(limits.header_seconds, connections), log_config=None,
                            access_log=False, timeout_graceful_shutdown=2,
                            timeout_keep_alive=limits.keep_alive_seconds, limit_concurrency=connections + 1)
    uvicorn.Server(config).run(sockets=[sock])


def run_workers(make_app, sock: socket.socket, limits: Limits, workers: int) -> None:
    """Fork `workers` processes that all accept on `sock`, each serving `make_app()` (built in the child: its
    own model and threads; nothing is shared but the socket). The parent only waits: SIGINT or SIGTERM is
    passed on to every worker, and if one worker ends the others are stopped too. Then the parent ends the
    process at once (os._exit, after flushing its output; it holds no files): its interpreter shutdown, with
    torch loaded, took over 30 s on the loaded 2-core VM after its workers had ended in under one."""
    pids, stopping = set(), (signal.SIGINT, signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)  # a Ctrl-C now waits until every worker is known
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
            os._exit(_worker(make_app, sock, limits))
        pids.add(pid)
    sock.close()  # the parent accepts nothing

    def stop(signum, _frame):
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for signum in stopping:
        signal.signal(signum, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
    status = 0
    while pids:
        pid, code = os.wait()
        pids.discard(pid)
        code = os.waitstatus_to_exitcode(code)
        if code not in (0, -signal.SIGINT, -signal.SIGTERM) and not status:
            status = 1 if code < 0 else code
            print(f"worker {pid} ended with status {code}; stopping the others", file=sys.stderr, flush=True)
            stop(signal.SIGTERM, None)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _worker(make_app, sock: socket.socket, limits: Limits) -> int:
    """One worker process's life: build the app, serve until a signal. Its exit status for the parent."""
    try:
        _die_with_parent()
        run(make_app(), sock, limits)
        return 0
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # the parent built the same app before forking, so this is not a user error
        print(f"worker {os.getpid()}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (a parent killed with SIGKILL leaves no workers behind)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
