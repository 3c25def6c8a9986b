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
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import Depends, FastAPI, HTTPException
from psycopg.types.json import set_json_loads
from psycopg.types.string import TextLoader
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api import (
    attachments,
    clean,
    connect,
    docs,
    drafts,
    folders,
    grants,
    health,
    hosted,
    lean,
    messages,
    providers,
    send,
    threads,
    webhooks,
)
from pipeline.api import errors as api_errors
from pipeline.api.auth import KeyRing, require_api_key
from pipeline.api.deps import ApiState, SendEnqueuer, SyncEnqueuer, WebhookKicker
from pipeline.api.gate import SignInGate
from pipeline.config import Settings
from pipeline.db import CONNECT_TIMEOUT_S, normalize_url
from pipeline.errors import ConfigurationError
from pipeline.imap.connections import INTERACTIVE_LINGER_S, SessionPool
from pipeline.limits import ConnectionSlots, Priority, RateLimiter
from pipeline.redis import CALL_TIMEOUT_S
from pipeline.redis import client as redis_client

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 25 * 1024 * 1024  # Nylas caps a message with attachments at 25 MB
API_STATEMENT_TIMEOUT_MS = 15_000  # a request's query may not run longer than this
# The planner's price of a random page read on the API's connections (Postgres' default is 4, a
# spinning disk's). At 4 it ANDed a bitmap of every message of the grant (from a btree_gin index
# led by grant_id) into an address filter's: 80-160 ms of a rare address's page at a million
# messages, where the address index alone answers in a few; 1.1 is the usual value for SSDs and
# for data that is mostly cached, which a mailbox's recent pages are.
API_RANDOM_PAGE_COST = 1.1
# No parallel workers for the API's queries: a page reads a few hundred rows, and a Gather's
# start-up cost more than it saved (a small folder's page: 160-180 ms in parallel against
# 40-60 ms without, at a million messages), while taking cores from the other requests.
API_PARALLEL_WORKERS = 0
# psycopg prepares a statement run five times, and Postgres may then keep a generic plan, made
# without the parameters' values: for an address filter that plan reads every match of the
# address and sorts them (2-3 s a page at a million messages, against 14 ms planned with the
# values). Every execution is planned with its values (planning a page costs well under 1 ms).
API_PLAN_CACHE_MODE = "force_custom_plan"
# Server settings of every API connection (the list benchmark replays the API's SQL with them)
API_PG_OPTIONS = (
    f"-c statement_timeout={API_STATEMENT_TIMEOUT_MS} -c random_page_cost={API_RANDOM_PAGE_COST}"
    f" -c max_parallel_workers_per_gather={API_PARALLEL_WORKERS}"
    f" -c plan_cache_mode={API_PLAN_CACHE_MODE}"
)
API_POOL_SIZE = 10  # connections per API process; uvicorn's threadpool shares them
API_POOL_TIMEOUT_S = 10  # wait this long for a free connection, then fail with a 503
# A pooled connection idle longer than this is pinged (SELECT 1) before a request uses it, and
# replaced when the ping fails. One used more recently is not: under load every connection goes
# back and out within milliseconds, and a ping on each checkout was a round trip (and a
# Postgres wake-up) on every request. The bound: a connection that died within this long of its
# last use fails the one request that gets it (503 service_unavailable), and that failure
# invalidates the whole pool, so the next requests connect afresh.
API_PING_AFTER_IDLE_S = 1.0


def _not_installed(what: str) -> Callable[..., None]:
    """The stand-in for a job sender ``create_app`` was not given: it fails (the caller logs
    it), and the work waits for the sweep or reconciliation, as after a broker failure."""

    def fail(*_: object) -> None:
        raise ConfigurationError(
            f"The API was created without {what}: pass it to create_app "
            "(imap-pipeline api passes pipeline.jobs.Jobs)."
        )

    return fail


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
    return RateLimiter(redis_client(settings.redis_url, timeout_s=CALL_TIMEOUT_S))


def _fast_types(dbapi_connection: Any, _record: Any) -> None:
    """JSONB values (every address list, a page's attachments) parsed by orjson: a list page
    reads six per message, and the standard library's parser was a tenth of its time. UUIDs
    read as text: every UUID column of the schema is a string to the engine (``as_uuid=False``),
    so a uuid.UUID made by the driver was only formatted back into a string (three per listed
    message)."""
    set_json_loads(orjson.loads, dbapi_connection)
    dbapi_connection.adapters.register_loader("uuid", TextLoader)


def ping_idle_connections(engine: Engine, idle_s: float = API_PING_AFTER_IDLE_S) -> None:
    """Ping a pooled connection before it is used only if it sat idle more than ``idle_s``
    (``pool_pre_ping`` pings on every checkout); a failed ping has the pool connect afresh."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since <= idle_s:
            return  # just connected, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # a dead connection: the pool retries with a new one
            raise DisconnectionError(type(exc).__name__) from exc


def _engine(settings: Settings) -> Engine:
    """The API's pool: bounded, every connection with its timeouts and fast JSON/UUID types."""
    engine = create_engine(
        normalize_url(settings.require_database_url()),
        pool_size=API_POOL_SIZE,
        max_overflow=API_POOL_SIZE,
        pool_timeout=API_POOL_TIMEOUT_S,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": API_PG_OPTIONS,
            "application_name": "imap-pipeline-api",
        },
    )
    ping_idle_connections(engine)
    event.listen(engine, "connect", _fast_types)
    return engine


def _include_routers(app: FastAPI) -> None:
    """Every route: the probes and the sign-in page open, the rest of /v3 behind an API key."""
    auth: list[Any] = [Depends(require_api_key)]
    # the lists first: their paths are exact (no other route of theirs to shadow), and a route
    # matched early costs less (messages.lists); served by lean routes, documented by FastAPI's
    lean.install(
        app,
        "/v3",
        {
            "/grants/{grant_id}/messages": messages.list_messages,
            "/grants/{grant_id}/threads": threads.list_threads,
        },
    )
    for lists in (messages.lists, threads.lists):
        app.include_router(lists, prefix="/v3", dependencies=auth)
    app.include_router(health.router)  # probes: no API key
    app.include_router(hosted.public, prefix="/v3")  # the browser's sign-in page: no API key
    app.include_router(hosted.router, prefix="/v3", dependencies=auth)
    routers = (
        connect,
        grants,
        providers,
        send,
        clean,  # before messages: its path would read as .../messages/{message_id}
        messages,
        drafts,
        folders,
        threads,
        attachments,
        webhooks,
    )
    for module in routers:
        app.include_router(module.router, prefix="/v3", dependencies=auth)


def create_app(
    settings: Settings,
    *,
    enqueue_sync: SyncEnqueuer | None = None,
    kick_webhooks: WebhookKicker | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    enqueue_send: SendEnqueuer | None = None,
) -> FastAPI:
    """Build the API.

    The API never imports Celery: the process that runs it passes the three job senders
    (``enqueue_sync``, ``kick_webhooks``, ``enqueue_send``). One not given fails when called;
    the failure is logged and the work waits for reconciliation or a sweep, as after a broker
    failure.

    Args:
        settings: Where the database is, the API keys, IMAP timeouts and CA file, and the SSRF
            guard and timeouts of ``/v3/webhooks`` (``settings.webhooks``).
        enqueue_sync: Called with ``(grant_id, provider)`` after a grant is committed
            (``imap-pipeline api``: :meth:`pipeline.jobs.Jobs.sync_grant`, which puts
            ``pipeline.sync.grant`` on the grant's Celery queue).
        kick_webhooks: Called after a commit that wrote webhook outbox rows
            (:meth:`pipeline.jobs.Jobs.kick_webhooks`: the outbox dispatch task).
        max_body_bytes: Larger request bodies get a 413.
        enqueue_send: Called with ``(grant_id, countdown_s)`` after a send is committed to the
            outbox (:meth:`pipeline.jobs.Jobs.deliver_sends`: ``pipeline.outbox.deliver`` on
            the ``send`` queue).

    Raises:
        ConfigurationError: No database URL is configured.
    """
    engine = _engine(settings)
    limiter = _limiter(settings)
    state = ApiState(
        settings=settings,
        sessions=sessionmaker(engine, expire_on_commit=False),
        keys=KeyRing(settings.api_key_list),
        enqueue_sync=enqueue_sync or _not_installed("enqueue_sync"),
        kick_webhooks=kick_webhooks or _not_installed("kick_webhooks"),
        max_body_bytes=max_body_bytes,
        limiter=limiter,
        imap_pool=SessionPool(
            ConnectionSlots(limiter.redis) if limiter is not None else None,
            Priority.INTERACTIVE,
            linger_s=INTERACTIVE_LINGER_S,
        ),
        sign_ins=SignInGate(
            settings.api.sign_in_concurrency,
            settings.api.sign_in_per_client,
            settings.api.sign_in_deadline_s,
        ),
        webhook_settings=settings.webhooks,
        enqueue_send=enqueue_send or _not_installed("enqueue_send"),
        reads=engine.execution_options(isolation_level="AUTOCOMMIT"),
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
    _include_routers(app)
    return app
