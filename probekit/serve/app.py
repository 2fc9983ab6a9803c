"""The reward server's ASGI app: FastAPI routes over one `RewardProbe` and one batcher.

FastAPI on uvicorn because it is the stack OpenRLHF's own reward server uses
(`openrlhf/cli/serve_rm.py`), well kept, and gives what a reward server needs
and no more: async routes that wait on the batcher without holding a thread,
exception handlers that turn every failure into one JSON line, and uvicorn's
graceful shutdown. Bodies are read and checked by hand
(`probekit.serve.protocol`) rather than through request models, so that every
bad request gets one line naming its field or item.

Endpoints: GET /health (open: liveness and counters), GET /info, POST /score,
POST /get_reward. With a token, every endpoint but /health needs
`Authorization: Bearer <token>` (compared in constant time).

Status codes: 400 a malformed body, 401 no or a wrong token, 404/405 no such
route, 413 a body over --max-body-bytes, 422 texts the probe refuses (say, a
completion of zero tokens, or a prompt without a baseline), 503 a full queue
(with Retry-After), 500 only for a bug in probekit.
"""

from __future__ import annotations

import asyncio
import hmac
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from probekit.errors import ProbekitError
from probekit.reward import RewardProbe
from probekit.serve.batcher import Batcher, Busy
from probekit.serve.options import ServeOptions
from probekit.serve.protocol import ClientError, openrlhf_job, openrlhf_response, parse_json, score_job, score_response
from probekit.serve.scoring import JobRewards, JobScorer, ScoreJob

OPEN_PATHS = ("/health",)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error answer: {"error": one line}."""
    return JSONResponse({"error": " ".join(str(message).splitlines()) or "error"}, status_code=status, headers=headers)


class BearerAuth:
    """ASGI middleware: every path but /health needs `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.token = app, token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._allowed(scope):
            response = error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                             headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, credentials = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes: at once by its Content-Length, else while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"body of {declared} bytes is over the server's --max-body-bytes {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ClientError(413, f"body is over the server's --max-body-bytes {limit}")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientError(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def create_app(rp: RewardProbe, options: ServeOptions, *, token: str | None = None,
               log: Callable[[str], None] | None = None, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The app serving `rp`; it starts its batcher on start-up and drains it on shutdown. `log` gets one line per batch,
    `on_ready` is called once the batcher runs."""
    scorer = JobScorer(rp)
    batcher: Batcher[ScoreJob, JobRewards] = Batcher(
        scorer.run, scorer.size, key=scorer.key, count=len, max_tokens=options.max_batch_tokens,
        max_queue=options.max_queue, max_wait_s=options.max_wait_ms / 1000, log=log)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        if on_ready is not None:
            on_ready()
        yield
        await asyncio.to_thread(batcher.close)  # uvicorn has finished every request by now

    app = FastAPI(title="probekit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    if token is not None:
        app.add_middleware(BearerAuth, token=token)

    async def scored(job: ScoreJob) -> JobRewards:
        return await asyncio.wrap_future(batcher.submit(job))

    async def body_of(request: Request) -> dict:
        return parse_json(await read_body(request, options.max_body_bytes))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        s = batcher.stats
        return {"status": "ok", "pending": batcher.pending, "requests": s.requests, "batches": s.batches, "texts": s.texts,
                "tokens": s.tokens, "failed": s.failed}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {"model": rp.loaded.name, "checkpoint_fingerprint": rp.checkpoint.fingerprint, "layers": list(rp.layers),
                "template": rp.spec.template, "max_length": rp.spec.max_length, "has_baseline": rp.baseline is not None,
                "on_missing": rp.on_missing, "options": options.to_dict()}

    @app.post("/score")
    async def score(request: Request) -> dict[str, Any]:
        job = score_job(await body_of(request), rp.split_messages, chat=rp.spec.template == "chat")
        return score_response(await scored(job))

    @app.post("/get_reward")
    async def get_reward(request: Request) -> dict[str, Any]:
        return openrlhf_response(await scored(openrlhf_job(await body_of(request))))

    @app.exception_handler(ClientError)
    async def client_error(_request: Request, exc: ClientError) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(ProbekitError)
    async def refused(_request: Request, exc: ProbekitError) -> JSONResponse:
        return error(422, str(exc))

    @app.exception_handler(Busy)
    async def busy(_request: Request, exc: Busy) -> JSONResponse:
        return error(503, f"server busy: {exc}; retry later", headers={"Retry-After": "1"})

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, f"{exc.detail}: the endpoints are GET /health, GET /info, POST /score, POST /get_reward")

    @app.exception_handler(Exception)
    async def bug(_request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error (a bug in probekit serve): {type(exc).__name__}: {exc}")

    return app
