"""Sign-ins from the public side: the hosted page's form and ``POST /v3/connect/custom`` (the
HTTP routes run these on the sign-in gate's threads, :class:`pipeline.grants.gate.SignInGate`).

A sign-in logs in to a server that whoever signs in names, so it is treated as hostile::

    request ── gate full, in total or for this client address? ── yes ──> 429 at once
       │ no
       v
    a sign-in thread (``Settings.api.sign_in_concurrency`` of them, apart from the threads
    that serve every other request):
       resolve ─> takeover check (short DB session, closed) ─> login token (login_turn)
       ─> address guard + IMAP login (no DB connection held) ─> store (short DB session)
       │
    the request waits at most ``Settings.api.sign_in_deadline_s`` ──> else 504; the thread
    keeps its slot until its own bounded IMAP calls end, so slow servers fill the gate, never
    the API.

``PATCH /v3/grants/{id}`` with new credentials or settings (:func:`reconnect`) is a sign-in to a
server the caller names too, and runs the same way behind the same gate.

Each IMAP read is bounded by the client (:mod:`pipeline.imap`); the gate bounds how many run.
Whoever runs a sign-in passes a :class:`SignInAccess` (the API's state is one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from pipeline.errors import NotFound
from pipeline.grants.interactive import Interactive, kick_webhooks, login_turn
from pipeline.grants.repository import GrantRepository
from pipeline.grants.schemas import GrantRequest, ResolvedGrant
from pipeline.grants.service import (
    enqueue_sync_after_commit,
    find_tls_modes,
    refuse_takeover,
    store_grant,
    verify_login,
)
from pipeline.models import Grant
from pipeline.netguard import resolve_for_sign_in

log = logging.getLogger(__name__)


class SignInAccess(Interactive, Protocol):
    """What a sign-in needs besides the limits: database sessions of its own (none is held
    while a server is talked to) and a way to have the new grant synced."""

    @property
    def sessions(self) -> sessionmaker[Session]: ...

    @property
    def enqueue_sync(self) -> Callable[[str, str], None]: ...  # (grant_id, provider)


@dataclass(frozen=True)
class SignedIn:
    """A committed sign-in: the grant, whether it was new, and what ``then`` returned."""

    grant: Grant
    created: bool
    extra: str | None


def sign_in(
    access: SignInAccess,
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
        RateLimited: No login token of the account comes in time.
    """
    settings = access.settings
    resolved = request.resolve()
    with access.sessions() as db:
        existing = GrantRepository(db).get_by_email(resolved.email)
        refuse_takeover(existing, resolved)
        grant_id = existing.id if existing is not None else None
    password = request.password.get_secret_value()
    resolved, capabilities = _log_in(access, resolved, password, grant_id)
    with access.sessions() as db:
        created = store_grant(  # + grant.* event
            db, settings, request, resolved, capabilities, user_named=True
        )
        extra = then(db, created.grant) if then is not None else None
        db.commit()
    kick_webhooks(access)
    enqueue_sync_after_commit(access.enqueue_sync, created.grant)
    return SignedIn(grant=created.grant, created=created.created, extra=extra)


def _log_in(
    access: SignInAccess, resolved: ResolvedGrant, password: str, grant_id: str | None
) -> tuple[ResolvedGrant, list[str]]:
    """Log in as the sign-in says, in the account's login turn: the TLS mode of a port given
    without one is found first. Returns the settings as they worked and the capabilities."""
    settings = access.settings
    with login_turn(access.limiter, resolved, grant_id):
        resolved = find_tls_modes(
            resolved,
            settings.imap,
            settings.mail_address_policy,
            deadline_s=settings.api.sign_in_deadline_s,
            resolver=resolve_for_sign_in,
        )
        capabilities = verify_login(
            resolved,
            password,
            settings,
            settings.mail_address_policy,
            deadline_s=settings.api.sign_in_deadline_s,
            resolver=resolve_for_sign_in,
        )
    return resolved, capabilities


def reconnect(
    access: SignInAccess,
    locate: Callable[[Session], Grant],
    merge: Callable[[Grant], GrantRequest],
) -> Grant:
    """Change a grant's settings or credentials (``PATCH /v3/grants/{id}``; runs on a sign-in
    thread): ``locate`` finds the grant (or raises), ``merge`` gives the sign-in from the stored
    grant; the login with it must succeed before anything is stored. No database connection is
    held while the server is talked to.

    Raises:
        NotFound: The grant was deleted meanwhile (what ``locate`` and ``merge`` raise, too).
        RateLimited: No login token of the account comes in time.
        ConfigurationError: The merged settings name no usable server.
        ImapError: The login failed.
    """
    settings = access.settings
    policy = settings.mail_address_policy
    with access.sessions() as db:
        grant = locate(db)
        grant_id, was_valid = grant.id, grant.grant_status == "valid"
        request = merge(grant)
    resolved = request.resolve()
    password = request.password.get_secret_value()
    resolved, capabilities = _log_in(access, resolved, password, grant_id)
    with access.sessions() as db:
        current = GrantRepository(db).get_for_update(grant_id)
        if current is None:
            raise NotFound(f"Grant {grant_id} was deleted meanwhile.")
        updated = store_grant(  # + grant.updated; the API key may move a grant anywhere
            db, settings, request, resolved, capabilities, grant=current, user_named=bool(policy)
        ).grant
        db.commit()
    kick_webhooks(access)
    access.imap_pool.forget(grant_id)  # the next request logs in with the new settings
    if not was_valid:
        enqueue_sync_after_commit(access.enqueue_sync, updated)
    return updated
