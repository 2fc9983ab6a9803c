"""The options of `probekit serve`, importable without torch or FastAPI (the CLI builds its options from them), and
the bind rule: a server reachable from other machines needs a bearer token."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from probekit.config import Config, option
from probekit.errors import ProbekitError

TOKEN_ENV = "PROBEKIT_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16  # a guessable token on a shared cluster is no token; `secrets.token_urlsafe(32)` gives 43
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServeOptions(Config):
    """Where the server listens and how it batches; the help texts are the CLI's (`probekit serve --help`)."""

    host: str = option("127.0.0.1", "Address to listen on. Anything but a loopback address (127.0.0.1, ::1, localhost) needs "
                                    f"--token or ${TOKEN_ENV}: a reward server on a cluster is reachable by others.")
    port: int = option(5000, "TCP port (OpenRLHF's serve_rm default); 0 picks a free one and prints it.")
    max_batch_tokens: int = option(16384, "Concurrent requests are merged into one scoring batch until it holds this many "
                                          "tokens (prompt + completion, as encoded); one larger request runs alone. The forward "
                                          "inside runs in extraction's length-bucketed batches.")
    max_wait_ms: float = option(5.0, "How long a batch waits for more requests while fewer than the last batch's are there (a "
                                     "lone client never waits), or a tenth of the last batch's scoring time where that is longer: "
                                     "larger batches under load for at most a tenth more latency.")
    max_queue: int = option(256, "Requests waiting to be scored at most; beyond it a request gets 503 with one line (retry later).")
    max_body_bytes: int = option(8 << 20, "Largest request body in bytes; a larger one gets 413.")

    def validate(self) -> None:
        """Refuse options that cannot serve, before the model loads."""
        if not 0 <= self.port <= 65535:
            raise ProbekitError(f"--port must be 0..65535, got {self.port}")
        if self.max_batch_tokens < 1 or self.max_queue < 1 or self.max_body_bytes < 1:
            raise ProbekitError("--max-batch-tokens, --max-queue and --max-body-bytes must be >= 1")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ProbekitError(f"--max-wait-ms must be 0..1000, got {self.max_wait_ms}")


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine (an address in 127.0.0.0/8 or ::1, or the name localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token, and a token too short to keep anyone out."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ProbekitError(f"--token / ${TOKEN_ENV} must be at least {MIN_TOKEN_CHARS} characters "
                            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if token is None and not is_loopback(host):
        raise ProbekitError(f"--host {host} is reachable from other machines: pass a bearer token in ${TOKEN_ENV} (or --token), "
                            "or listen on 127.0.0.1")
