"""Per-process resources of a Celery worker: database sessions, Redis, pooled IMAP sessions.

IMAP sessions come from the account's connection manager (:mod:`pipeline.imap.connections`)
at the BULK priority: a task's session holds one of the account's connection slots (shared
with the listener and the API) from login until the task ends. Then it goes back to this
process's pool, still counted, for at most ``BULK_LINGER_S`` so that the next chunk of the
same grant skips a login, and is closed at once if the listener or the API waits for a slot of
that account. A new login also takes a login token of the account and its provider, and every
hand-out an operation token (:mod:`pipeline.limits`). Without a token or slot
:func:`imap_for` raises :class:`~pipeline.limits.RateLimited`; the task lets it through and
its base class (:mod:`workers.base`) sends it again later instead of waiting in a worker slot.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import redis
from sqlalchemy.orm import Session, sessionmaker

from pipeline.config import get_settings
from pipeline.db import sessionmaker_for
from pipeline.errors import ImapLimitError, ImapThrottledError
from pipeline.folders.repository import FolderRepository
from pipeline.folders.state import FolderState
from pipeline.grants.repository import GrantRepository
from pipeline.grants.service import open_grant_session
from pipeline.imap import ImapSession
from pipeline.imap.connections import (
    BULK_LINGER_S,
    BULK_LOGIN_SPARE,
    BULK_LOGIN_SPARE_UNWATCHED,
    INTERACTIVE_WAIT_S,
    NoSlot,
    SessionPool,
)
from pipeline.limits import ConnectionSlots, Limits, Priority, RateLimited, RateLimiter, scope_of
from pipeline.models import Grant
from pipeline.redis import BATCH_TIMEOUT_S, client

# Starts every grant status a misbehaving server earns; the next sync that works clears it.
MISBEHAVED_PREFIX = "The IMAP server misbehaved: "

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def sessions() -> sessionmaker[Session]:
    """This process's session factory."""
    return sessionmaker_for(get_settings().require_database_url())


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis[bytes]:
    """This process's Redis client."""
    return client(get_settings().require_redis_url(), timeout_s=BATCH_TIMEOUT_S)


@lru_cache(maxsize=1)
def connection_slots() -> ConnectionSlots:
    """This process's calls on the accounts' connection slots."""
    return ConnectionSlots(redis_client())


@lru_cache(maxsize=1)
def imap_pool() -> SessionPool:
    """This process's pooled IMAP sessions (BULK priority)."""
    return SessionPool(connection_slots(), Priority.BULK, linger_s=BULK_LINGER_S)


class LimitsView:
    """The providers' limits (operator overrides included) and whether a listener is alive,
    read from Redis once for a run of sessions (a batch of polls) instead of once per grant.
    Readings are as old as the run (``POLL_BATCH_BUDGET_S`` at most for a poll batch): an
    operator's change takes effect at the next run."""

    def __init__(self) -> None:
        self._limits: dict[str, Limits] = {}
        self._listening: bool | None = None

    def limits(self, provider: str) -> Limits:
        """The provider's limits (:meth:`pipeline.limits.RateLimiter.limits`)."""
        if provider not in self._limits:
            self._limits[provider] = limiter_for_process().limits(provider)
        return self._limits[provider]

    def listening(self) -> bool:
        """Whether any listener is alive (:meth:`ConnectionSlots.listening`)."""
        if self._listening is None:
            self._listening = connection_slots().listening()
        return self._listening


def imap_for(db: Session, grant: Grant, view: LimitsView | None = None) -> ImapSession:
    """A logged-in session for ``grant``: this process's pooled one, or a new login.
    ``view``: limits a batch read once for all its grants (else read for this call).

    Raises:
        RateLimited: No operation or login token, no free connection slot, or the account or
            provider is backing off after a throttling answer.
        ImapThrottledError: The provider refused the login for now (the back-off is recorded).
    """
    view = view or LimitsView()
    limiter = limiter_for_process()
    streak = _take_ops(limiter, grant, view.limits(grant.provider))
    imap = imap_pool().take(grant.id)
    if imap is not None:
        return imap
    # no listener is alive: no reconnect of one needs a token of this minute
    spare = BULK_LOGIN_SPARE if view.listening() else BULK_LOGIN_SPARE_UNWATCHED
    return _login(
        db,
        grant,
        limiter,
        imap_pool(),
        wait_s=0.0,
        spare=spare,
        limits=view.limits(grant.provider),
        streak=streak,
    )


@lru_cache(maxsize=1)
def interactive_pool() -> SessionPool:
    """Sessions of this process for work a user waits on (INTERACTIVE priority, not pooled)."""
    return SessionPool(connection_slots(), Priority.INTERACTIVE, linger_s=0.0)


def interactive_imap_for(db: Session, grant: Grant) -> ImapSession:
    """A new session at INTERACTIVE priority, for work a user waits on (filing a message just
    sent in Sent): it waits up to ``INTERACTIVE_WAIT_S`` for a slot while bulk sync gives way,
    and may take the account's spare login tokens. Give it back with :func:`release_imap`.

    Raises:
        RateLimited: As :func:`imap_for`, after the wait.
        ImapThrottledError: The provider refused the login for now (the back-off is recorded).
    """
    limiter = limiter_for_process()
    limits = limiter.limits(grant.provider)
    streak = _take_ops(limiter, grant, limits)
    return _login(
        db,
        grant,
        limiter,
        interactive_pool(),
        wait_s=INTERACTIVE_WAIT_S,
        spare=0.0,
        limits=limits,
        streak=streak,
    )


def release_imap(grant_id: str, imap: ImapSession, *, healthy: bool) -> None:
    """The task is done with its session: pooled briefly if healthy (its slot stays counted only
    while nobody waits for one), else closed (the slot goes back)."""
    imap_pool().give_back(imap, healthy=healthy)  # not a pooled kind: closed, slot released


@contextmanager
def using(grant_id: str, imap: ImapSession) -> Iterator[ImapSession]:
    """Use ``imap`` for the block, then give it back (:func:`release_imap`): healthy when the
    block ended without an error; after one (a bound, a time limit, the database) it is
    closed, never leaked."""
    healthy = False
    try:
        yield imap
        healthy = True
    finally:
        release_imap(grant_id, imap, healthy=healthy)


def keep_alive(imap: ImapSession) -> bool:
    """Between batches: renew the session's slot; True when the listener or an API request
    waits for a slot of the account, so the task should stop here and continue later."""
    return imap_pool().keep_alive(imap)


def close_all_imap() -> None:
    """Log out of every pooled session (worker shutdown)."""
    imap_pool().close_all()
    interactive_pool().close_all()


# --- shared rate limits and connection cap (pipeline.limits) ----------------------------

NO_SLOT_RETRY_S = 5.0  # a task refused a connection slot comes back after this long


@lru_cache(maxsize=1)
def limiter_for_process() -> RateLimiter:
    """This process's rate limiter (on the process's Redis client)."""
    return RateLimiter(redis_client())


def _take_ops(limiter: RateLimiter, grant: Grant, limits: Limits) -> bool:
    """Check the back-off and take an operation token (the login that may follow does not
    read the back-off again); returns whether the account has a throttle streak to forget
    after a good login."""
    backoff = limiter.backoff(scope_of(grant.provider, grant.imap_host), grant.id)
    wait = backoff.remaining_s or limiter.try_ops(
        grant.provider, grant.imap_host, grant.id, limits=limits, backoff_checked=True
    )
    if wait > 0:
        raise RateLimited(f"operations of grant {grant.id} are rate-limited", wait)
    return backoff.streak


def _login(
    db: Session,
    grant: Grant,
    limiter: RateLimiter,
    pool: SessionPool,
    *,
    wait_s: float,
    spare: float,
    limits: Limits,
    streak: bool,
) -> ImapSession:
    try:
        holder = pool.slot(grant.id, limits.max_connections, wait_s=wait_s)
    except NoSlot as exc:
        raise RateLimited(f"grant {grant.id}: {exc}", NO_SLOT_RETRY_S) from exc
    try:
        wait = limiter.try_login(
            grant.provider,
            grant.imap_host,
            grant.id,
            spare=spare,
            limits=limits,
            backoff_checked=True,
        )
        if wait > 0:
            raise RateLimited(f"logins of grant {grant.id} are rate-limited", wait)
        try:
            imap = open_grant_session(db, get_settings(), grant)
        except ImapThrottledError as exc:
            if not isinstance(exc, RateLimited):
                limiter.throttled(grant.provider, grant.imap_host, grant.id)
            raise
    except BaseException:
        pool.unslot(grant.id, holder)
        raise
    if streak:
        limiter.recovered(grant.id)
    return pool.admit(grant.id, holder, imap)


def fresh_imap_for(db: Session, grant: Grant, view: LimitsView | None = None) -> ImapSession:
    """A session from a new login, closing a pooled one: what a new session of the server sees
    (the UIDVALIDITY sweep's view). Same limits, ``view`` and errors as :func:`imap_for`."""
    imap_pool().forget(grant.id)
    return imap_for(db, grant, view)


def note_misbehaved(
    grant_id: str, problem: ImapLimitError | str, folder_id: str | None = None
) -> float:
    """Record that ``grant_id``'s server broke a bound (or ran a task into its time limit):
    the reason on the grant's status (and the folder's, ``failed``, where it happened), and
    the account's back-off, which every worker and the listener respect. Other grants are not
    touched. Returns the back-off in seconds."""
    backoff = limiter_for_process().misbehaved(grant_id)
    detail = f"{MISBEHAVED_PREFIX}{problem} Retrying after {backoff:.0f} s."
    with sessions().begin() as db:
        GrantRepository(db).set_detail(grant_id, detail)
        if folder_id is not None:
            FolderRepository(db).set_state(folder_id, FolderState.FAILED, detail)
    log.warning(
        "IMAP server broke a bound; backing off",
        extra={
            "grant_id": grant_id,
            "folder_id": folder_id,
            "bound": getattr(problem, "bound", "time limit"),
            "backoff_s": backoff,
        },
    )
    return backoff


def note_behaved(grant_id: str) -> None:
    """A sync of the grant worked again: clear a status :func:`note_misbehaved` left."""
    with sessions().begin() as db:
        GrantRepository(db).clear_detail(grant_id, MISBEHAVED_PREFIX)


def note_throttled(grant: Grant) -> float:
    """Record that ``grant``'s provider throttled us mid-task; returns the back-off in seconds."""
    return limiter_for_process().throttled(grant.provider, grant.imap_host, grant.id)
