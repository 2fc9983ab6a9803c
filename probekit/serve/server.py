"""Running the reward server: a listening socket, uvicorn, and a clean exit on SIGTERM.

The socket is bound here rather than by uvicorn so that port 0 (a free port the
kernel picks) can be announced, and so that a port in use fails as an `OSError`
before anything starts. SIGTERM stops the server gracefully: uvicorn stops
accepting, finishes the requests in flight, then the app drains its batcher.
uvicorn re-raises the signal once it has shut down, which under the default
SIGTERM action would kill the process with status -15 after a clean stop, so
while it runs SIGTERM's own handler is one that does nothing more: the process
then exits 0.
"""

from __future__ import annotations

import signal
import socket
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import uvicorn

from probekit.reward import RewardProbe
from probekit.serve.app import create_app
from probekit.serve.batcher import BatchStats
from probekit.serve.options import ServeOptions, check_bind

BACKLOG = 2048  # connections the kernel holds while the server is busy (uvicorn's default)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on (host, port); port 0 takes a free one (read it with `url`)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


@contextmanager
def _sigterm_ends_quietly() -> Iterator[None]:
    """While the server runs, SIGTERM's action after uvicorn's graceful stop is to return (status 0), not to die."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def serve(rp: RewardProbe, options: ServeOptions, *, token: str | None = None, announce: Callable[[str], None] = lambda url: None,
          log: Callable[[str], None] | None = None) -> BatchStats:
    """Serve `rp` until SIGTERM or Ctrl-C; `announce(url)` once it accepts requests, `log` one line per batch.
    Returns the batcher's counters."""
    options.validate()
    check_bind(options.host, token)
    sock = listen(options.host, options.port)
    app = create_app(rp, options, token=token, log=log, on_ready=lambda: announce(url(sock)))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=None)
    with _sigterm_ends_quietly():
        uvicorn.Server(config).run(sockets=[sock])
    return app.state.batcher.stats
