"""What endpoints share: the app's state, a database session per request, the grant in the path,
and the v3 success envelopes.

The request owns its transaction: read-only endpoints never commit (the session is closed, which
rolls back); writing endpoints call ``db.commit()`` themselves and only then enqueue work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session, sessionmaker

from pipeline.api.auth import KeyRing
from pipeline.api.errors import ApiError, not_found, request_id_of
from pipeline.api.gate import SignInGate
from pipeline.api.sessions import SessionPool
from pipeline.config import Settings
from pipeline.grants.repository import GrantRepository
from pipeline.models import Grant
from pipeline.ratelimit import RateLimiter
from pipeline.webhooks.settings import WebhookSettings

log = logging.getLogger(__name__)

SyncEnqueuer = Callable[[str, str], None]
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
    imap_pool: SessionPool
    sign_ins: SignInGate  # the public sign-ins' own threads (hosted page, /connect/custom)
    webhook_settings: WebhookSettings


def api_state(request: Request) -> ApiState:
    """The app's :class:`ApiState`."""
    state: ApiState = request.app.state.api
    return state


def get_db(request: Request) -> Iterator[Session]:
    """A session for this request; closed (and rolled back unless committed) afterwards."""
    session = api_state(request).sessions()
    try:
        yield session
    finally:
        session.close()


Db = Annotated[Session, Depends(get_db)]
State = Annotated[ApiState, Depends(api_state)]


def path_grant(
    db: Db,
    grant_id: Annotated[str, Path(description="The grant's id, or its email address.")],
) -> Grant:
    """The grant named in the path, by id or by email address.

    Raises:
        ApiError: 404 ``not_found_error`` when there is no such grant.
    """
    grant = GrantRepository(db).find(grant_id.strip())
    if grant is None:
        raise not_found(f"No grant {grant_id!r}: GET /v3/grants lists them.")
    return grant


PathGrant = Annotated[Grant, Depends(path_grant)]


def live_grant(grant: PathGrant) -> Grant:
    """The grant named in the path, for its mail: an expired (``invalid``) grant is a 401.

    Nylas answers every call on an expired grant's data with a 401, and its clients detect
    expiry from it; ``GET /v3/grants/{id}`` itself still answers, with ``grant_status``.

    Raises:
        ApiError: 404 as :func:`path_grant`; 401 ``unauthorized`` while the grant is invalid.
    """
    if grant.grant_status == "invalid":
        raise ApiError(
            401,
            "unauthorized",
            f"Grant {grant.id} has expired: its IMAP server refused the stored password. "
            "Re-authenticate it (hosted auth or POST /v3/connect/custom with the new password).",
        )
    return grant


LiveGrant = Annotated[Grant, Depends(live_grant)]


def notify_after_commit(api: ApiState) -> None:
    """Have the webhook outbox dispatched soon; a broker failure leaves it to the sweep."""
    try:
        api.kick_webhooks()
    except Exception as exc:  # any broker/config failure: the outbox rows wait for the sweep
        log.warning("webhook dispatch not kicked (%s); the sweep will send", type(exc).__name__)


def ok(request: Request, data: Any) -> dict[str, Any]:
    """The v3 envelope of one object."""
    return {"request_id": request_id_of(request), "data": data}


def page(request: Request, data: list[Any], next_cursor: str | None) -> dict[str, Any]:
    """The v3 envelope of a list page."""
    return {"request_id": request_id_of(request), "data": data, "next_cursor": next_cursor}
