"""A sender for domain services called without the API (a CLI or a task would pass its own):
database sessions, an interactive IMAP pool, no rate limits, and the outbox drains it was asked
for recorded instead of enqueued (no worker runs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from pipeline.config import Settings
from pipeline.db import sessionmaker_for
from pipeline.imap.connections import SessionPool
from pipeline.limits import Priority, RateLimiter


@dataclass
class RecordingSender:
    """A :class:`~pipeline.outbound.sending.Sender` that records the drains asked for."""

    settings: Settings
    sessions: sessionmaker[Session]
    drains: list[str] = field(default_factory=list)
    limiter: RateLimiter | None = None
    imap_pool: SessionPool = field(
        default_factory=lambda: SessionPool(None, Priority.INTERACTIVE, linger_s=0)
    )

    @classmethod
    def for_settings(cls, settings: Settings) -> RecordingSender:
        """One on the test's database."""
        return cls(settings=settings, sessions=sessionmaker_for(settings.require_database_url()))

    @property
    def enqueue_send(self) -> Callable[[str, float | None], None]:
        return lambda grant_id, _countdown: self.drains.append(grant_id)

    @property
    def kick_webhooks(self) -> Callable[[], None]:
        return lambda: None

    def close(self) -> None:
        """Log out of the pooled IMAP sessions."""
        self.imap_pool.close_all()
