"""Pooled IMAP sessions of the API process: one idle session per grant, reused.

Logging in is the expensive, rate-limited part of talking to a provider (a few logins per minute
per account), so a request borrows the grant's idle session when there is one and gives it back
afterwards. A borrowed session is exclusive to its request; a second concurrent request for the
same grant opens its own (and gives it back or closes it). A session idle longer than
``POOL_IDLE_S`` is logged out and its connection slot released; one idle longer than
``CHECK_AFTER_S`` is checked with NOOP before reuse (servers drop quiet connections).

Each pooled session keeps its connection slot (:mod:`pipeline.ratelimit`) until it is closed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

from pipeline.imap import ImapSession
from pipeline.ratelimit import RateLimiter

POOL_IDLE_S = 60.0  # an unused session is logged out after this long (its slot goes back)
CHECK_AFTER_S = 15.0  # a session idle longer than this gets a NOOP before it is reused


@dataclass
class PooledSession:
    """A logged-in session, the connection slot it holds, and when it was last used."""

    grant_id: str
    imap: ImapSession
    holder: str
    last_used: float

    @property
    def idle_s(self) -> float:
        """Seconds since the session was last given back."""
        return time.monotonic() - self.last_used


class SessionPool:
    """Idle sessions by grant id; thread-safe (requests run in a thread pool)."""

    def __init__(self, limiter: RateLimiter | None) -> None:
        self._limiter = limiter
        self._lock = threading.Lock()
        self._idle: dict[str, PooledSession] = {}

    def take(self, grant_id: str) -> PooledSession | None:
        """Borrow the grant's idle session, if any (expired ones are closed first)."""
        self._evict()
        with self._lock:
            return self._idle.pop(grant_id, None)

    def give_back(self, session: PooledSession) -> None:
        """Return a healthy session; a second idle one for the same grant is closed."""
        session.last_used = time.monotonic()
        with self._lock:
            spare = self._idle.get(session.grant_id)
            if spare is None:
                self._idle[session.grant_id] = session
                return
        self.discard(session)

    def discard(self, session: PooledSession) -> None:
        """Log a session out and release its connection slot."""
        with contextlib.suppress(Exception):
            session.imap.close()
        if self._limiter is not None:
            with contextlib.suppress(Exception):
                self._limiter.release_connection(session.grant_id, session.holder)

    def forget(self, grant_id: str) -> None:
        """Close the grant's idle session (its settings changed, or it was deleted)."""
        with self._lock:
            session = self._idle.pop(grant_id, None)
        if session is not None:
            self.discard(session)

    def close_all(self) -> None:
        """Log out every idle session (at shutdown)."""
        with self._lock:
            idle, self._idle = list(self._idle.values()), {}
        for session in idle:
            self.discard(session)

    def _evict(self) -> None:
        with self._lock:
            expired = [s for s in self._idle.values() if s.idle_s >= POOL_IDLE_S]
            for session in expired:
                del self._idle[session.grant_id]
        for session in expired:
            self.discard(session)
