"""What endpoints share: the app's state, a database session per request, the grant in the path,
and the v3 success envelopes.

The request owns its transaction: read-only endpoints never commit (the session is closed, which
rolls back); writing endpoints call ``db.commit()`` themselves and only then enqueue work.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio
import orjson
from fastapi import Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from pipeline.api.auth import KeyRing
from pipeline.api.errors import ApiError, not_found, request_id_of
from pipeline.api.gate import SignInGate
from pipeline.api.params import read_query
from pipeline.config import Settings
from pipeline.config.webhooks import WebhookSettings
from pipeline.grants.interactive import kick_webhooks
from pipeline.grants.repository import GrantRepository, grant_id_and_status
from pipeline.grants.service import enqueue_sync_after_commit
from pipeline.imap.connections import SessionPool
from pipeline.limits import RateLimiter
from pipeline.models import Grant
from pipeline.pages import is_canonical_uuid, is_uuid

log = logging.getLogger(__name__)

SyncEnqueuer = Callable[[str, str], None]
SendEnqueuer = Callable[[str, "float | None"], None]  # (grant_id, countdown_s)
WebhookKicker = Callable[[], None]


@dataclass
class ApiState:
    """Everything the endpoints need, built once by :func:`pipeline.api.create_app`."""

    settings: Settings
    sessions: sessionmaker[Session]
    keys: KeyRing
    enqueue_sync: SyncEnqueuer
    kick_webhooks: WebhookKicker  # after a commit that wrote outbox rows
    max_body_bytes: int
    limiter: RateLimiter | None  # shared IMAP limits in Redis; None without a Redis URL
    imap_pool: SessionPool  # IMAP sessions at INTERACTIVE priority (pipeline.imap.connections)
    sign_ins: SignInGate  # the public sign-ins' own threads (hosted page, /connect/custom)
    webhook_settings: WebhookSettings
    enqueue_send: SendEnqueuer  # asks a worker to drain a grant's send outbox (pipeline.outbound)
    # the engine in autocommit, for the list pages' reads (read_connection): a read costs no
    # BEGIN and no ROLLBACK round trip; made from the sessions' engine when not set
    reads: Engine | None = None


def api_state(request: Request) -> ApiState:
    """The app's :class:`ApiState`."""
    state: ApiState = request.app.state.api
    return state


Params = TypeVar("Params", bound=BaseModel)


async def json_page(
    request: Request,
    grant_id: str,
    model: type[Params],
    page: Callable[[ApiState, str, str, Params | RequestValidationError], bytes],
) -> Response:
    """A list route's answer: its query parameters read at once into ``model``
    (:mod:`pipeline.api.params`), then the page ``page`` makes as JSON, in one threadpool call.
    Parameters that do not validate go to ``page`` as the error, to be raised once the grant
    is found: an unknown grant is a 404 first."""
    try:
        params: Params | RequestValidationError = read_query(model, request.query_params)
    except RequestValidationError as exc:
        params = exc
    body = await run_in_threadpool(
        page, api_state(request), request_id_of(request), grant_id, params
    )
    return Response(body, media_type="application/json")


async def get_db(request: Request) -> AsyncIterator[Session]:
    """A session for this request; closed (and rolled back unless committed) afterwards.

    Making the session does no I/O, so it happens on the event loop; closing it returns the
    connection, on the threadpool, shielded so that a client going away cannot leave the
    connection checked out. (A plain ``def`` generator costs a threadpool hop on entry too.)
    """
    session = api_state(request).sessions()
    try:
        yield session
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(session.close)


Db = Annotated[Session, Depends(get_db)]
Orm = Callable[[str], tuple[Session, Grant]]  # a grant's id -> a session and its ORM object


@contextmanager
def page_reads(api: ApiState, *, writes: bool = False) -> Iterator[tuple[Connection, Orm]]:
    """The connection a list page reads on, and how to get the session and grant object its
    rare parts need (a search the IMAP server answers, ``fields=raw_mime``): in autocommit
    (:func:`read_connection`) with a session made on it only when asked, or, when the request
    may write (a refused login marks the grant invalid), a session's own connection."""
    if writes:
        with api.sessions() as db:
            yield db.connection(), lambda grant_id: (db, grant_of(db, grant_id))
        return
    with read_connection(api) as conn:
        made: list[Session] = []

        def orm(grant_id: str) -> tuple[Session, Grant]:
            if not made:
                made.append(Session(bind=conn))
            return made[0], grant_of(made[0], grant_id)

        try:
            yield conn, orm
        finally:
            for session in made:
                session.close()


def read_connection(api: ApiState) -> Connection:
    """A connection for reads only, in autocommit (:attr:`ApiState.reads`): every statement
    sees what was committed before it began, as in the READ COMMITTED transaction of a session,
    without the BEGIN and ROLLBACK round trips."""
    engine = api.reads
    if engine is None:
        bind = api.sessions.kw["bind"]
        assert isinstance(bind, Engine)
        engine = bind.execution_options(isolation_level="AUTOCOMMIT")
    return engine.connect()


State = Annotated[ApiState, Depends(api_state)]


GRANT_LOCATOR = "grant:"
EMAIL_LOCATOR = "email:"


def _locate(identifier: str) -> tuple[str, str] | None:
    """``("id", value)`` or ``("email", value)``: what an ``{identifier}`` of a
    ``/v3/grants/...`` path names (see :func:`path_grant`); None when it can name no grant."""
    identifier = identifier.strip()
    lowered = identifier.lower()
    if lowered.startswith(GRANT_LOCATOR):
        value = identifier[len(GRANT_LOCATOR) :].strip()
        return ("id", value) if value and "@" not in value else None
    if lowered.startswith(EMAIL_LOCATOR):
        value = identifier[len(EMAIL_LOCATOR) :].strip()
        return ("email", value) if "@" in value else None
    return ("email", identifier) if "@" in identifier else ("id", identifier)


def find_grant(db: Session, identifier: str) -> Grant | None:
    """The grant an ``{identifier}`` of a ``/v3/grants/...`` path names (see :func:`path_grant`)."""
    located = _locate(identifier)
    if located is None:
        return None
    kind, value = located
    repo = GrantRepository(db)
    return repo.get(value) if kind == "id" else repo.get_by_email(value)


def no_grant(identifier: str) -> ApiError:
    """The 404 of a path naming no grant."""
    return not_found(f"No grant {identifier!r}: GET /v3/grants lists them.")


def expired(grant_id: str) -> ApiError:
    """The 401 of an expired grant's data (see :func:`live_grant`)."""
    return ApiError(
        401,
        "unauthorized",
        f"Grant {grant_id} has expired: its IMAP server refused the stored password. "
        "Re-authenticate it (hosted auth or POST /v3/connect/custom with the new password).",
    )


def path_grant(
    db: Db,
    grant_id: Annotated[str, Path(description="The grant's id, or its email address.")],
) -> Grant:
    """The grant named in the path: its id, its email address, or a ``grant:<id>`` or
    ``email:<address>`` locator.

    Raises:
        ApiError: 404 ``not_found_error`` when there is no such grant.
    """
    grant = find_grant(db, grant_id)
    if grant is None:
        raise no_grant(grant_id)
    return grant


PathGrant = Annotated[Grant, Depends(path_grant)]


def grant_of(db: Session, grant_id: str) -> Grant:
    """A grant's ORM object, by id (for the rare parts of a list that need it).

    Raises:
        ApiError: 404 when it was deleted meanwhile.
    """
    grant = GrantRepository(db).get(grant_id)
    if grant is None:
        raise no_grant(grant_id)
    return grant


GrantPath = Annotated[str, Path(description="The grant's id, or its email address.")]


async def live_grant(grant: PathGrant) -> Grant:
    """The grant named in the path, for its mail: an expired (``invalid``) grant is a 401.

    Nylas answers every call on an expired grant's data with a 401, and its clients detect
    expiry from it; ``GET /v3/grants/{id}`` itself still answers, with ``grant_status``.
    (``async``: it never blocks, so it runs without a threadpool hop.)

    Raises:
        ApiError: 404 as :func:`path_grant`; 401 ``unauthorized`` while the grant is invalid.
    """
    if grant.grant_status == "invalid":
        raise expired(grant.id)
    return grant


def folded_grant_id(identifier: str) -> str | None:
    """The grant id a path names when its check can ride on the page statement (a path with
    the id itself, as the SDK sends it; see :func:`check_folded_grant`); None otherwise."""
    if is_canonical_uuid(identifier):
        return identifier.lower()
    return None


def check_folded_grant(conn: Connection, identifier: str, status: str | None) -> None:
    """The check of :func:`live_grant_id` from the status a page statement read with its rows
    (None: the page was empty, and the grant is looked up).

    Raises:
        ApiError: 404 as :func:`path_grant`; 401 while the grant is invalid.
    """
    if status is None:
        live_grant_id(conn, identifier)
    elif status == "invalid":
        raise expired(identifier.lower())


def live_grant_id(conn: Connection, identifier: str) -> str:
    """The id of the live grant a path names, as :func:`live_grant` judges it, read with one
    Core statement (no ORM object: the list endpoints need only the id).

    Raises:
        ApiError: 404 as :func:`path_grant`; 401 while the grant is invalid.
    """
    located = _locate(identifier)
    row = None
    if located is not None:
        kind, value = located
        if kind == "email":
            row = grant_id_and_status(conn, email=value)
        elif is_uuid(value):
            row = grant_id_and_status(conn, grant_id=value)
    if row is None:
        raise no_grant(identifier)
    if row.grant_status == "invalid":
        raise expired(str(row.id))
    return str(row.id)


LiveGrant = Annotated[Grant, Depends(live_grant)]


def notify_after_commit(api: ApiState) -> None:
    """Have the webhook outbox dispatched soon; a broker failure leaves it to the sweep
    (:func:`pipeline.grants.interactive.kick_webhooks`)."""
    kick_webhooks(api)


def enqueue_after_commit(enqueue: SyncEnqueuer, grant: Grant) -> None:
    """Enqueue a grant's sync after commit; a broker failure leaves it to reconciliation
    (:func:`pipeline.grants.service.enqueue_sync_after_commit`)."""
    enqueue_sync_after_commit(enqueue, grant)


def ok(request: Request, data: Any) -> dict[str, Any]:
    """The v3 envelope of one object."""
    return {"request_id": request_id_of(request), "data": data}


def page(request: Request, data: list[Any], next_cursor: str | None) -> dict[str, Any]:
    """The v3 envelope of a list page."""
    return {"request_id": request_id_of(request), "data": data, "next_cursor": next_cursor}


def page_json(request_id: str, data: list[Any], next_cursor: str | None) -> bytes:
    """The v3 envelope of a list page, serialized by orjson.

    A dict returned by an endpoint is validated against its return type and encoded by the
    standard library: 3.2 ms of CPU for a page of 50 messages of 2 KB here, against 0.03 ms for
    orjson. The JSON is the same (compact, UTF-8, no NaN); the route keeps its
    ``response_model`` for the OpenAPI document.
    """
    return orjson.dumps({"request_id": request_id, "data": data, "next_cursor": next_cursor})


def page_json_rendered(request_id: str, data: list[str], next_cursor: str | None) -> bytes:
    """The v3 envelope of a list page whose items are JSON texts already (rendered by
    Postgres: :func:`pipeline.messages.queries.message_json`), as :func:`page_json` would write it
    with those items parsed."""
    head = orjson.dumps({"request_id": request_id})[:-1]  # the object left open
    return b"".join(
        (
            head,
            b',"data":[',
            ",".join(data).encode(),
            b'],"next_cursor":',
            orjson.dumps(next_cursor),
            b"}",
        )
    )
