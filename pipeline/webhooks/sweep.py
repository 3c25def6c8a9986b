"""Periodic repair: find the work that a lost Redis message would otherwise leave behind.

Celery messages only say "look now"; Postgres says what is owed. The sweep (run by beat every
few seconds) reports undispatched outbox rows and destinations with due deliveries, so their
tasks get enqueued again after a Redis flush, a killed worker or a retry whose wait was longer
than any countdown may be (the broker's visibility timeout). It also retires destinations that
have been failing for longer than ``failed_after_s``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from pipeline.config.webhooks import WebhookSettings
from pipeline.webhooks import repository

log = logging.getLogger(__name__)

SWEEP_DESTINATION_LIMIT = 1000  # destinations re-queued per sweep; the next sweep takes the rest
PURGE_BATCH = 5000  # outbox rows deleted per statement, to keep each transaction short


@dataclass(frozen=True)
class SweepResult:
    """What a sweep found."""

    pending_events: bool
    due_destination_ids: list[str]
    failed_destination_ids: list[str]


def sweep(session: Session, settings: WebhookSettings) -> SweepResult:
    """Retire long-failing destinations; report undispatched rows and destinations with due work."""
    failed = repository.fail_overdue_destinations(session, settings.failed_after_s)
    if failed:
        given_up = repository.abandon_pending(session, failed)
        log.error(
            "webhook destinations failed (failing for longer than %.0f s): %s; "
            "%d pending notifications given up",
            settings.failed_after_s,
            ", ".join(failed),
            given_up,
        )
    return SweepResult(
        pending_events=repository.has_pending_events(session),
        due_destination_ids=repository.destinations_with_due_work(session, SWEEP_DESTINATION_LIMIT),
        failed_destination_ids=failed,
    )


def purge(session: Session, settings: WebhookSettings) -> int:
    """Delete one batch of dispatched notifications older than ``retention_days``; how many.

    Their deliveries and attempts go with them; notifications still owed to someone stay.
    """
    return repository.purge_dispatched(session, settings.retention_days, PURGE_BATCH)
