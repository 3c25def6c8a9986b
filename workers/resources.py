"""Per-process resources of a Celery worker: database sessions, Redis, pooled IMAP sessions.

Worker processes are single-threaded (prefork), so the IMAP pool needs no locking. A pooled
session is reused by the next task for the same grant if it answered recently; this saves a
TLS handshake and a login per task, which providers rate-limit.

Shared limits (:mod:`pipeline.ratelimit`): every session of this process holds a slot in the
account's connection set (``imap-pipeline:conn:<grant_id>``, shared with the listener) from
login to close; a new login also takes a login token of the account and its provider, and every
hand-out an operation token. Without a token or slot :func:`imap_for` raises
:class:`~pipeline.ratelimit.RateLimited`; the task reschedules itself with :func:`reschedule`
instead of waiting in a worker slot.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from functools import lru_cache
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import sessionmaker_for
from pipeline.errors import ImapError, ImapLimitError, ImapThrottledError
from pipeline.folders.repository import FolderRepository
from pipeline.grants.repository import GrantRepository
from pipeline.grants.service import open_grant_session
from pipeline.imap import ImapSession
from pipeline.models import Grant
from pipeline.ratelimit import RateLimited, RateLimiter, worker_holder
from workers.settings import settings

IMAP_POOL_IDLE_S = 60.0  # reuse a pooled session only if it was used this recently
REDIS_TIMEOUT_S = 10.0
# Starts every grant status a misbehaving server earns; the next sync that works clears it.
MISBEHAVED_PREFIX = "The IMAP server misbehaved: "

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def sessions() -> sessionmaker[Session]:
    """This process's session factory."""
    return sessionmaker_for(settings().require_database_url())


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis[bytes]:
    """This process's Redis client."""
    return redis.Redis.from_url(
        settings().require_redis_url(),
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )


_pool: dict[str, tuple[ImapSession, float]] = {}


def imap_for(db: Session, grant: Grant) -> ImapSession:
    """A logged-in session for ``grant``: a recent pooled one, or a new login.

    Raises:
        RateLimited: No operation or login token, no free connection slot, or the account or
            provider is backing off after a throttling answer.
        ImapThrottledError: The provider refused the login for now (the back-off is recorded).
    """
    _evict_idle()
    limiter = limiter_for_process()
    _take_ops(limiter, grant)
    pooled = _pool.pop(grant.id, None)
    if pooled is not None:
        imap, last_used = pooled
        if time.monotonic() - last_used < IMAP_POOL_IDLE_S:
            try:
                imap.noop()
                limiter.acquire_connection(grant.id, _holder(grant.id), _cap(limiter, grant))
                return imap
            except ImapError:
                pass
        _close(grant.id, imap)
    return _login(db, grant, limiter)


def release_imap(grant_id: str, imap: ImapSession, *, healthy: bool) -> None:
    """Return a session to the pool, or close it after an error."""
    if healthy:
        old = _pool.pop(grant_id, None)
        if old is not None and old[0] is not imap:
            with contextlib.suppress(Exception):
                old[0].close()
        _pool[grant_id] = (imap, time.monotonic())
    else:
        _close(grant_id, imap)


def close_all_imap() -> None:
    """Log out of every pooled session (worker shutdown)."""
    while _pool:
        grant_id, (imap, _) = _pool.popitem()
        _close(grant_id, imap)


# --- shared rate limits and connection cap (pipeline.ratelimit) ----------------------------

RESCHEDULE_MIN_S = 1.0  # a denied task comes back no sooner than this
RESCHEDULE_MAX_S = 60.0  # nor later: far below the broker's visibility timeout (30 min)
RESCHEDULE_JITTER_S = 1.0  # spreads denied tasks so they do not return in one burst


@lru_cache(maxsize=1)
def limiter_for_process() -> RateLimiter:
    """This process's rate limiter (on the process's Redis client)."""
    return RateLimiter(redis_client())


def _holder(grant_id: str) -> str:
    # one pooled session per grant per process: the process is the holder
    return worker_holder()


def _cap(limiter: RateLimiter, grant: Grant) -> int:
    return limiter.limits(grant.provider).max_connections


def _take_ops(limiter: RateLimiter, grant: Grant) -> None:
    wait = limiter.try_ops(grant.provider, grant.imap_host, grant.id)
    if wait > 0:
        raise RateLimited(f"operations of grant {grant.id} are rate-limited", wait)


def _login(db: Session, grant: Grant, limiter: RateLimiter) -> ImapSession:
    holder = _holder(grant.id)
    if not limiter.acquire_connection(grant.id, holder, _cap(limiter, grant)):
        raise RateLimited(f"grant {grant.id} has no free connection slot", RESCHEDULE_MIN_S * 5)
    wait = limiter.try_login(grant.provider, grant.imap_host, grant.id)
    if wait > 0:
        limiter.release_connection(grant.id, holder)
        raise RateLimited(f"logins of grant {grant.id} are rate-limited", wait)
    try:
        imap = open_grant_session(db, settings(), grant)
    except ImapThrottledError:
        limiter.release_connection(grant.id, holder)
        limiter.throttled(grant.provider, grant.imap_host, grant.id)
        raise
    except BaseException:
        limiter.release_connection(grant.id, holder)
        raise
    limiter.recovered(grant.id)
    return imap


def _close(grant_id: str, imap: ImapSession) -> None:
    with contextlib.suppress(Exception):
        imap.close()
    with contextlib.suppress(Exception):
        limiter_for_process().release_connection(grant_id, _holder(grant_id))


def _evict_idle() -> None:
    """Close pooled sessions idle too long, so their connection slots go back to the account."""
    now = time.monotonic()
    for grant_id, (imap, last_used) in list(_pool.items()):
        if now - last_used >= IMAP_POOL_IDLE_S:
            del _pool[grant_id]
            _close(grant_id, imap)


def fresh_imap_for(db: Session, grant: Grant) -> ImapSession:
    """A session from a new login, closing a pooled one: what a new session of the server sees
    (the UIDVALIDITY sweep's view). Same limits and errors as :func:`imap_for`."""
    pooled = _pool.pop(grant.id, None)
    if pooled is not None:
        _close(grant.id, pooled[0])
    return imap_for(db, grant)


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
            FolderRepository(db).set_state(folder_id, "failed", detail)
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


def reschedule(task: Any, exc: RateLimited) -> None:
    """Send ``task`` again with the same arguments after the limiter's wait (bounded).

    Not ``task.retry()``: a rate-limited run is not a failure and must not use up retries.
    """
    countdown = min(
        max(exc.retry_after_s, RESCHEDULE_MIN_S) + random.uniform(0, RESCHEDULE_JITTER_S),
        RESCHEDULE_MAX_S,
    )
    delivery = task.request.delivery_info or {}
    task.apply_async(
        args=task.request.args,
        kwargs=task.request.kwargs,
        countdown=countdown,
        queue=delivery.get("routing_key"),
    )
