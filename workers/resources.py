"""Per-process resources of a Celery worker: database sessions, Redis, pooled IMAP sessions.

Worker processes are single-threaded (prefork), so the IMAP pool needs no locking. A pooled
session is reused by the next task for the same grant if it answered recently; this saves a
TLS handshake and a login per task, which providers rate-limit.
"""

from __future__ import annotations

import contextlib
import time
from functools import lru_cache

import redis
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import sessionmaker_for
from pipeline.errors import ImapError
from pipeline.grants.service import open_grant_session
from pipeline.imap import ImapSession
from pipeline.models import Grant
from workers.settings import settings

IMAP_POOL_IDLE_S = 60.0  # reuse a pooled session only if it was used this recently
REDIS_TIMEOUT_S = 10.0


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
    """A logged-in session for ``grant``: a recent pooled one, or a new login."""
    pooled = _pool.pop(grant.id, None)
    if pooled is not None:
        imap, last_used = pooled
        if time.monotonic() - last_used < IMAP_POOL_IDLE_S:
            try:
                imap.noop()
                return imap
            except ImapError:
                pass
        with contextlib.suppress(Exception):
            imap.close()
    return open_grant_session(db, settings(), grant)


def release_imap(grant_id: str, imap: ImapSession, *, healthy: bool) -> None:
    """Return a session to the pool, or close it after an error."""
    if healthy:
        old = _pool.pop(grant_id, None)
        if old is not None and old[0] is not imap:
            with contextlib.suppress(Exception):
                old[0].close()
        _pool[grant_id] = (imap, time.monotonic())
    else:
        with contextlib.suppress(Exception):
            imap.close()


def close_all_imap() -> None:
    """Log out of every pooled session (worker shutdown)."""
    while _pool:
        _, (imap, _) = _pool.popitem()
        with contextlib.suppress(Exception):
            imap.close()
