"""The FastAPI application: the Nylas v3 REST shape for the IMAP subset.

:func:`create_app` builds everything from :class:`~pipeline.config.Settings` (nothing happens at
import): its own database engine with a short statement timeout, the hashed API keys, the error
handlers and one router per resource. Every ``/v3`` route needs ``Authorization: Bearer <key>``;
``/openapi.json``, ``/docs`` (served offline) and the probes ``/healthz`` and ``/readyz`` are
public.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api import (
    attachments,
    connect,
    docs,
    folders,
    grants,
    health,
    hosted,
    messages,
    providers,
    send,
    threads,
    webhooks,
)
from pipeline.api import errors as api_errors
from pipeline.api.auth import KeyRing, require_api_key
from pipeline.api.deps import ApiState, SyncEnqueuer, WebhookKicker
from pipeline.api.gate import SignInGate
from pipeline.api.sessions import SessionPool
from pipeline.config import Settings
from pipeline.db import CONNECT_TIMEOUT_S, normalize_url
from pipeline.ratelimit import RateLimiter
from pipeline.webhooks.settings import WebhookSettings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 25 * 1024 * 1024  # Nylas caps a message with attachments at 25 MB
API_STATEMENT_TIMEOUT_MS = 15_000  # a request's query may not run longer than this
API_POOL_SIZE = 10  # connections per API process; uvicorn's threadpool shares them
API_POOL_TIMEOUT_S = 10  # wait this long for a free connection, then fail with a 503
REDIS_TIMEOUT_S = 5  # every rate-limit call to Redis fails after this long


def enqueue_with_celery(grant_id: str, provider: str) -> None:
    """Enqueue a grant's initial sync on its provider queue (the default enqueuer)."""
    from workers import enqueue

    enqueue.sync_grant(grant_id, provider)


def kick_with_celery() -> None:
    """Have the webhook outbox dispatched soon (the default kicker)."""
    from workers.webhook_tasks import kick

    kick()


class RequestContext:
    """ASGI middleware: a request id for every request, and a cap on the body size.

    The id goes into ``request.state.request_id`` (every JSON body carries it) and the
    ``X-Request-Id`` response header. A body whose Content-Length is over the cap is refused
    with 413 before the app sees it; a chunked body is cut off with a 413 once it passes the cap.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.max_body_bytes
        too_large = f"The request body is larger than the limit of {limit} bytes."

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        if b"%00" in scope.get("query_string", b"") or "\x00" in scope.get("path", ""):
            await _send_error(
                send_with_id,
                request_id,
                400,
                "invalid_request_error",
                "NUL characters are not allowed in the URL.",
            )
            return

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_error(send_with_id, request_id, 413, "request_too_large", too_large)
            return

        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(status_code=413, detail=too_large)
            return message

        await self.app(scope, capped_receive, send_with_id)


async def _send_error(send: Send, request_id: str, status: int, type_: str, message: str) -> None:
    """Answer with a v3 error before the app sees the request (and close the connection)."""
    body = json.dumps(api_errors.error_body(request_id, type_, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _limiter(settings: Settings) -> RateLimiter | None:
    """The shared IMAP rate limiter on Redis (None, with a warning, when Redis is not set)."""
    if not settings.redis_url:
        log.warning(
            "no Redis configured: API requests that talk IMAP are not rate-limited "
            "(set IMAP_PIPELINE_REDIS_URL)"
        )
        return None
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )
    return RateLimiter(client)


def create_app(
    settings: Settings,
    *,
    enqueue_sync: SyncEnqueuer | None = None,
    kick_webhooks: WebhookKicker | None = None,
    webhook_settings: WebhookSettings | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """Build the API.

    Args:
        settings: Where the database is, the API keys, IMAP timeouts and CA file.
        enqueue_sync: Called with ``(grant_id, provider)`` after a grant is committed; the
            default puts ``pipeline.sync.grant`` on the grant's Celery queue.
        kick_webhooks: Called after a commit that wrote webhook outbox rows; the default
            enqueues the outbox dispatch task.
        max_body_bytes: Larger request bodies get a 413.
        webhook_settings: SSRF guard and timeouts of ``/v3/webhooks`` (default: from the
            environment, ``IMAP_PIPELINE_WEBHOOK_*``).

    Raises:
        ConfigurationError: No database URL is configured.
    """
    engine = create_engine(
        normalize_url(settings.require_database_url()),
        pool_size=API_POOL_SIZE,
        max_overflow=API_POOL_SIZE,
        pool_timeout=API_POOL_TIMEOUT_S,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={API_STATEMENT_TIMEOUT_MS}",
            "application_name": "imap-pipeline-api",
        },
    )
    limiter = _limiter(settings)
    state = ApiState(
        settings=settings,
        sessions=sessionmaker(engine, expire_on_commit=False),
        keys=KeyRing(settings.api_key_list),
        enqueue_sync=enqueue_sync or enqueue_with_celery,
        kick_webhooks=kick_webhooks or kick_with_celery,
        max_body_bytes=max_body_bytes,
        limiter=limiter,
        imap_pool=SessionPool(limiter),
        sign_ins=SignInGate(
            settings.api_sign_in_concurrency,
            settings.api_sign_in_per_client,
            settings.api_sign_in_deadline_s,
        ),
        webhook_settings=webhook_settings or WebhookSettings.load(),
    )
    if not len(state.keys):
        log.warning("no API keys configured (IMAP_PIPELINE_API_KEYS): every /v3 request gets 401")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.imap_pool.close_all()
        state.sign_ins.close()
        engine.dispose()

    app = FastAPI(
        title="imap-pipeline API",
        version="3",
        summary="The Nylas v3 REST shape for IMAP accounts synced by imap-pipeline.",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,  # docs.install serves it without a CDN
        redoc_url=None,
    )
    docs.install(app, "/openapi.json")
    app.state.api = state
    api_errors.install(app)
    app.add_middleware(RequestContext, max_body_bytes=max_body_bytes)
    auth: list[Any] = [Depends(require_api_key)]
    app.include_router(health.router)  # probes: no API key
    app.include_router(hosted.public, prefix="/v3")  # the browser's sign-in page: no API key
    app.include_router(hosted.router, prefix="/v3", dependencies=auth)
    routers = (connect, grants, providers, send, messages, folders, threads, attachments, webhooks)
    for module in routers:
        app.include_router(module.router, prefix="/v3", dependencies=auth)
    return app
