"""The outbox and its dispatch: events in, one delivery row per subscribed destination out;
old dispatched events purged."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    delete,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from pipeline.webhooks.models import (
    OutboxEvent,
    WebhookDelivery,
    WebhookDestination,
)
from pipeline.webhooks.repository.sql import DELIVERABLE, ONE_SECOND

DISPATCH_LOCK_KEY = 7_261_101  # pg advisory lock: one dispatcher at a time keeps seq order


# --- outbox and dispatch -----------------------------------------------------------------------


def insert_event(
    session: Session,
    *,
    notification_id: str,
    grant_id: str | None,
    type: str,
    subject_id: str | None,
    ordering_key: str | None,
    obj: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> None:
    """Append one outbox row (its ``seq`` comes from the identity sequence)."""
    session.execute(
        insert(OutboxEvent).values(
            id=notification_id,
            grant_id=grant_id,
            type=type,
            subject_id=subject_id,
            ordering_key=ordering_key,
            object=obj,
            data=data,
        )
    )


def lock_dispatcher(session: Session) -> None:
    """Take the dispatcher lock for this transaction (waits for a running dispatcher)."""
    session.execute(select(func.pg_advisory_xact_lock(DISPATCH_LOCK_KEY)))


@dataclass(frozen=True)
class PendingEvent:
    """An outbox row waiting to be turned into deliveries."""

    seq: int
    type: str
    ordering_key: str | None
    occurred_at: datetime


def pending_events(session: Session, limit: int) -> list[PendingEvent]:
    """The oldest undispatched outbox rows, locked for this transaction."""
    stmt = (
        select(OutboxEvent.seq, OutboxEvent.type, OutboxEvent.ordering_key, OutboxEvent.occurred_at)
        .where(OutboxEvent.dispatched_at.is_(None))
        .order_by(OutboxEvent.seq)
        .limit(limit)
        .with_for_update()
    )
    return [
        PendingEvent(r.seq, r.type, r.ordering_key, r.occurred_at) for r in session.execute(stmt)
    ]


def has_pending_events(session: Session) -> bool:
    """Whether any outbox row awaits dispatch."""
    stmt = select(exists().where(OutboxEvent.dispatched_at.is_(None)))
    return bool(session.scalar(stmt))


@dataclass(frozen=True)
class Subscriber:
    """A destination that receives new notifications."""

    id: str
    trigger_types: frozenset[str]
    created_at: datetime


def deliverable_destinations(session: Session) -> list[Subscriber]:
    """Destinations that receive new notifications (``active`` or ``failing``)."""
    w = WebhookDestination
    stmt = select(w.id, w.trigger_types, w.created_at).where(w.status.in_(DELIVERABLE))
    return [
        Subscriber(r.id, frozenset(r.trigger_types), r.created_at) for r in session.execute(stmt)
    ]


def insert_deliveries(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Create deliveries ``{event_seq, destination_id, ordering_key}``; duplicates are ignored."""
    if not rows:
        return
    stmt = pg_insert(WebhookDelivery).on_conflict_do_nothing(
        constraint="uq_webhook_deliveries_event_dest"
    )
    session.execute(stmt, list(rows))


def live_leases(session: Session, destination_ids: Iterable[str]) -> set[str]:
    """Of these destinations, the ones a drainer holds now.

    Their rows stay share-locked until the caller commits, so a drainer that lets go of one
    waits for that commit and then sees what the caller wrote: the caller need not wake a
    destination whose drainer is still working (see ``outbox.dispatch_batch``).
    """
    ids = sorted(destination_ids)
    if not ids:
        return set()
    w = WebhookDestination
    rows = session.execute(
        select(w.id, w.drain_lease_until > func.clock_timestamp())
        .where(w.id.in_(ids))
        .order_by(w.id)
        .with_for_update(read=True)
    ).all()
    return {row[0] for row in rows if row[1]}


def mark_dispatched(session: Session, seqs: Sequence[int]) -> None:
    """Mark outbox rows as turned into deliveries."""
    if seqs:
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.seq.in_(seqs))
            .values(dispatched_at=func.clock_timestamp())
        )


def purge_dispatched(session: Session, older_than_days: int, limit: int) -> int:
    """Delete up to ``limit`` old dispatched outbox rows with nothing pending; how many."""
    pending = exists().where(
        WebhookDelivery.event_seq == OutboxEvent.seq, WebhookDelivery.state == "pending"
    )
    victims = (
        select(OutboxEvent.seq)
        .where(
            OutboxEvent.dispatched_at < func.now() - ONE_SECOND * (older_than_days * 86400),
            ~pending,
        )
        .limit(limit)
    )
    result = session.execute(
        delete(OutboxEvent).where(OutboxEvent.seq.in_(victims.scalar_subquery()))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
