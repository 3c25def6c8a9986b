"""Sign-ins from the public side: the hosted page's form and ``POST /v3/connect/custom``.

A sign-in logs in to a server that whoever signs in names, so it is treated as hostile (the gate
is :class:`pipeline.api.gate.SignInGate`)::

    request ── gate full, in total or for this client address? ── yes ──> 429 at once
       │ no
       v
    a sign-in thread (``api_sign_in_concurrency`` of them, apart from the threads
    that serve every other request):
       resolve ─> takeover check (short DB session, closed) ─> login token
       ─> address guard + IMAP login (no DB connection held) ─> store (short DB session)
       │
    the request waits at most ``api_sign_in_deadline_s`` ──> else 504; the thread keeps its
    slot until its own bounded IMAP calls end, so slow servers fill the gate, never the API.

``PATCH /v3/grants/{id}`` with new credentials or settings (:func:`reconnect`) is a sign-in to a
server the caller names too, and runs the same way behind the same gate.

Each IMAP read is bounded by the client (:mod:`pipeline.imap`); the gate bounds how many run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from pipeline.api.deps import ApiState, enqueue_after_commit, notify_after_commit, path_grant
from pipeline.api.errors import not_found
from pipeline.api.limits import login_turn
from pipeline.grants.repository import GrantRepository
from pipeline.grants.schemas import GrantRequest, ResolvedGrant
from pipeline.grants.service import (
    find_tls_modes,
    refuse_takeover,
    store_grant,
    verify_login,
)
from pipeline.models import Grant
from pipeline.netguard import resolve_for_sign_in

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignedIn:
    """A committed sign-in: the grant, whether it was new, and what ``then`` returned."""

    grant: Grant
    created: bool
    extra: str | None


def sign_in(
    api: ApiState,
    request: GrantRequest,
    then: Callable[[Session, Grant], str] | None = None,
) -> SignedIn:
    """Connect an account for someone on the public side (runs on a sign-in thread).

    No database connection is held while the server is talked to. ``then`` runs in the
    storing transaction (the hosted page adds its authorization code there).

    Raises:
        ConfigurationError: The request names no usable server.
        GrantConflict: The address is connected with another server or username.
        ImapError: The login failed (one message for refused and unreachable hosts).
        ApiError: 429 when no login token of the account comes in time.
    """
    settings = api.settings
    resolved = request.resolve()
    with api.sessions() as db:
        existing = GrantRepository(db).get_by_email(resolved.email)
        refuse_takeover(existing, resolved)
        grant_id = existing.id if existing is not None else None
    password = request.password.get_secret_value()
    resolved, capabilities = _log_in(api, resolved, password, grant_id)
    with api.sessions() as db:
        created = store_grant(  # + grant.* event
            db, settings, request, resolved, capabilities, user_named=True
        )
        extra = then(db, created.grant) if then is not None else None
        db.commit()
    notify_after_commit(api)
    enqueue_after_commit(api.enqueue_sync, created.grant)
    return SignedIn(grant=created.grant, created=created.created, extra=extra)


def _log_in(
    api: ApiState, resolved: ResolvedGrant, password: str, grant_id: str | None
) -> tuple[ResolvedGrant, list[str]]:
    """Log in as the sign-in says, in the account's login turn: the TLS mode of a port given
    without one is found first. Returns the settings as they worked and the capabilities."""
    settings = api.settings
    with login_turn(api, resolved, grant_id):
        resolved = find_tls_modes(
            resolved,
            settings,
            settings.mail_address_policy,
            deadline_s=settings.api_sign_in_deadline_s,
            resolver=resolve_for_sign_in,
        )
        capabilities = verify_login(
            resolved,
            password,
            settings,
            settings.mail_address_policy,
            deadline_s=settings.api_sign_in_deadline_s,
            resolver=resolve_for_sign_in,
        )
    return resolved, capabilities


def reconnect(api: ApiState, locator: str, merge: Callable[[Grant], GrantRequest]) -> Grant:
    """Change a grant's settings or credentials (``PATCH /v3/grants/{id}``; runs on a sign-in
    thread): ``merge`` gives the sign-in from the stored grant; the login with it must succeed
    before anything is stored. No database connection is held while the server is talked to.

    Raises:
        ApiError: 404 when there is no such grant (or it was deleted meanwhile); 400 from
            ``merge``; 429 when no login token of the account comes in time.
        ConfigurationError: The merged settings name no usable server.
        ImapError: The login failed.
    """
    settings = api.settings
    policy = settings.mail_address_policy
    with api.sessions() as db:
        grant = path_grant(db, locator)
        grant_id, was_valid = grant.id, grant.grant_status == "valid"
        request = merge(grant)
    resolved = request.resolve()
    password = request.password.get_secret_value()
    resolved, capabilities = _log_in(api, resolved, password, grant_id)
    with api.sessions() as db:
        current = GrantRepository(db).get_for_update(grant_id)
        if current is None:
            raise not_found(f"Grant {grant_id} was deleted meanwhile.")
        updated = store_grant(  # + grant.updated; the API key may move a grant anywhere
            db, settings, request, resolved, capabilities, grant=current, user_named=bool(policy)
        ).grant
        db.commit()
    notify_after_commit(api)
    api.imap_pool.forget(grant_id)  # the next request logs in with the new settings
    if not was_valid:
        enqueue_after_commit(api.enqueue_sync, updated)
    return updated
