"""Thin Celery tasks of sending (queue ``send``, served by the sync workers).

- ``pipeline.outbox.deliver(grant_id)``: one drain of the grant's outbox
  (:func:`pipeline.outbound.deliver.drain`): due sends over one SMTP connection, then the Sent
  copy. Asked for by the API after it commits a send (and, for a scheduled one, with a
  countdown to its ``send_at`` when that is near), and by the sweep. Another drain already
  holding the account's connections makes it return at once: that drain takes the rows.
- ``pipeline.outbox.sweep()``: periodic (beat, ``IMAP_PIPELINE_OUTBOX_SWEEP_INTERVAL_S``):
  closes sends whose worker died mid-send (never resent), purges old rows, and asks for a drain
  of every grant with due rows. Scheduled sends and a lost Redis message rely on it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from pipeline.config import get_settings
from pipeline.imap import ImapSession
from pipeline.jobs import SEND_DELIVER_TASK as DELIVER_TASK
from pipeline.models import Grant
from pipeline.outbound.deliver import drain, sweep
from workers import enqueue, resources
from workers.app import app
from workers.webhook_queue import kick

log = logging.getLogger(__name__)

SWEEP_TASK = "pipeline.outbox.sweep"
AGAIN_AFTER_S = 1.0  # a drain that ran out of budget or login tokens is followed this soon


class WorkerAccess:
    """The worker process's login budget, IMAP pool and webhook kick, for a drain."""

    def take_login(self, grant: Grant) -> float:
        """A login token of the account and its provider (SMTP counts like IMAP)."""
        return resources.limiter_for_process().try_login(grant.provider, grant.imap_host, grant.id)

    def imap(self, db: Session, grant: Grant) -> ImapSession:
        """An IMAP session at INTERACTIVE priority: the sender waits for the Sent copy, so
        bulk sync gives way (pipeline.imap.connections)."""
        return resources.interactive_imap_for(db, grant)

    def release_imap(self, grant_id: str, imap: ImapSession, *, healthy: bool) -> None:
        """Back to the pool (an interactive session is closed, its slot released)."""
        resources.release_imap(grant_id, imap, healthy=healthy)

    def after_commit(self) -> None:
        """Have the message.created of the Sent copy delivered."""
        kick()


def enqueue_deliver(grant_id: str, countdown: float | None = None) -> None:
    """Ask for a drain of the grant's outbox. Call after your commit; the sweep covers a broker
    failure (it is logged, never raised)."""
    enqueue.jobs.deliver_sends(grant_id, countdown)


@app.task(name=DELIVER_TASK, bind=True, acks_late=True)  # type: ignore[misc]
def deliver(self: Any, grant_id: str) -> dict[str, int]:
    """One drain of the grant's outbox."""
    result = drain(
        resources.sessions(), get_settings(), resources.redis_client(), grant_id, WorkerAccess()
    )
    if result.more:
        enqueue_deliver(grant_id, countdown=AGAIN_AFTER_S)
    elif result.again_in_s is not None:  # a Sent copy to try again (the sweep would, later)
        enqueue_deliver(grant_id, countdown=result.again_in_s + AGAIN_AFTER_S)
    return {"sent": result.sent, "failed": result.failed, "logins": result.logins}


@app.task(name=SWEEP_TASK)  # type: ignore[misc]
def sweep_outbox() -> int:
    """Drains for every grant with due sends; stranded sends closed."""
    return sweep(resources.sessions(), enqueue_deliver)
