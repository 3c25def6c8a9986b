"""The deliveries of each destination: its drain lease, claiming what is due in order,
recording attempts and their outcome, and reads for operators and tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Float,
    Row,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from pipeline.webhooks.models import (
    OutboxEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDestination,
)
from pipeline.webhooks.repository.sql import DELIVERABLE, due_in

# --- drain leases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeasedDestination:
    """What a drainer needs of the destination it holds the lease on."""

    id: str
    webhook_url: str
    secret_sealed: str
    status: str
    compressed_delivery: bool = False


def acquire_lease(
    session: Session, destination_id: str, token: str, lease_s: float
) -> LeasedDestination | None:
    """Take (or renew) the drain lease of a deliverable destination; None if someone else has it.

    The lease makes at most one drainer send to a destination at a time, which is what keeps
    per-object order and bounds the load one destination puts on the workers.
    """
    w = WebhookDestination
    stmt = (
        update(w)
        .where(
            w.id == destination_id,
            w.status.in_(DELIVERABLE),
            or_(
                w.drain_lease_until.is_(None),
                w.drain_lease_until < func.clock_timestamp(),
                w.drain_lease_token == token,
            ),
        )
        .values(drain_lease_token=token, drain_lease_until=due_in(lease_s))
        .returning(w.id, w.webhook_url, w.secret_sealed, w.status, w.compressed_delivery)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    return LeasedDestination(
        row.id, row.webhook_url, row.secret_sealed, row.status, row.compressed_delivery
    )


def release_lease(session: Session, destination_id: str, token: str) -> None:
    """Give the drain lease back (only if still ours)."""
    w = WebhookDestination
    session.execute(
        update(w)
        .where(w.id == destination_id, w.drain_lease_token == token)
        .values(drain_lease_token=None, drain_lease_until=None)
        .execution_options(synchronize_session=False)
    )


# --- deliveries --------------------------------------------------------------------------------


def _unblocked(d: type[WebhookDelivery] | Any) -> Any:
    """No earlier pending delivery to the same destination has the same ordering key.

    Written as "I am the head of my key's queue" (a scalar subquery the planner runs as one
    index probe per row) rather than NOT EXISTS, which it may turn into an anti-join that scans
    every pending row of the destination per candidate when statistics are stale.
    """
    earlier = aliased(WebhookDelivery)
    head = (
        select(func.min(earlier.event_seq))
        .where(
            earlier.destination_id == d.destination_id,
            earlier.state == "pending",
            earlier.ordering_key.is_not(None),
            earlier.ordering_key == d.ordering_key,
        )
        .scalar_subquery()
    )
    return or_(d.ordering_key.is_(None), head == d.event_seq)


def _is_due(d: type[WebhookDelivery] | Any) -> Any:
    """Pending, its retry time has come, and not waiting behind an earlier change."""
    return and_(d.state == "pending", d.next_attempt_at <= func.clock_timestamp(), _unblocked(d))


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery taken for one attempt, with the outbox row it carries."""

    delivery_id: int
    attempt: int  # 1-based number of the attempt about to be made
    event_seq: int
    notification_id: str
    type: str
    grant_id: str | None
    occurred_at: datetime
    obj: dict[str, Any]
    data: dict[str, Any] | None = None  # ``data`` fields beside ``object`` (send results)


def claim_due(
    session: Session, destination_id: str, limit: int, *, in_flight_s: float
) -> list[ClaimedDelivery]:
    """Take up to ``limit`` due deliveries of a destination, oldest first, counting the attempt.

    A delivery is due when its retry time has come *and* no earlier pending delivery to the
    same destination has the same ordering key (the same object of the same grant): a later
    change waits for the earlier one, whatever its retry time.

    A claimed delivery stays ``pending`` but is not due again for ``in_flight_s`` (the drain
    lease): the drainer may claim its next batch while this one is in flight, and if it dies,
    the delivery falls due again when its lease would have run out. Recording the attempt sets
    its final state or next retry.
    """
    d = WebhookDelivery
    due = (
        select(d.id)
        .where(d.destination_id == destination_id, _is_due(d))
        .order_by(d.event_seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = session.execute(
        update(d)
        .where(d.id.in_(due.scalar_subquery()))
        .values(
            attempts=d.attempts + 1,
            last_attempt_at=func.clock_timestamp(),
            next_attempt_at=due_in(in_flight_s),
        )
        .returning(d.id, d.attempts, d.event_seq)
        .execution_options(synchronize_session=False)
    ).all()
    if not claimed:
        return []
    events = {
        row.seq: row
        for row in session.execute(
            select(
                OutboxEvent.seq,
                OutboxEvent.id,
                OutboxEvent.type,
                OutboxEvent.grant_id,
                OutboxEvent.occurred_at,
                OutboxEvent.object,
                OutboxEvent.data,
            ).where(OutboxEvent.seq.in_([c.event_seq for c in claimed]))
        )
    }
    out = []
    for c in sorted(claimed, key=lambda c: c.event_seq):
        e: Row[Any] = events[c.event_seq]
        out.append(
            ClaimedDelivery(
                delivery_id=c.id,
                attempt=c.attempts,
                event_seq=c.event_seq,
                notification_id=e.id,
                type=e.type,
                grant_id=e.grant_id,
                occurred_at=e.occurred_at,
                obj=e.object,
                data=e.data,
            )
        )
    return out


def unclaim(session: Session, delivery_ids: Sequence[int]) -> None:
    """Give back deliveries claimed but never sent: due now again, the attempt not counted."""
    if delivery_ids:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(delivery_ids), WebhookDelivery.state == "pending")
            .values(attempts=WebhookDelivery.attempts - 1, next_attempt_at=func.clock_timestamp())
            .execution_options(synchronize_session=False)
        )


def record_attempts(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert attempt rows (``delivery_id, attempt, started_at, status_code, latency_ms, …``)."""
    if rows:
        session.execute(insert(WebhookAttempt), list(rows))


def mark_delivered(session: Session, delivery_ids: Sequence[int]) -> None:
    """Deliveries the destination accepted."""
    if delivery_ids:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(delivery_ids))
            .values(state="delivered", delivered_at=func.clock_timestamp())
            .execution_options(synchronize_session=False)
        )


def mark_given_up(session: Session, delivery_ids: Sequence[int]) -> None:
    """Deliveries that used up their attempts."""
    if delivery_ids:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(delivery_ids))
            .values(state="failed")
            .execution_options(synchronize_session=False)
        )


def schedule_retries(session: Session, delays: dict[int, float]) -> None:
    """Set each delivery's next attempt ``delay`` seconds from now."""
    if not delays:
        return
    table = cast(Table, WebhookDelivery.__table__)
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(next_attempt_at=due_in(bindparam("b_delay", type_=Float)))
    )
    session.connection().execute(
        stmt, [{"b_id": k, "b_delay": float(v)} for k, v in delays.items()]
    )


def has_due_work(session: Session, destination_id: str) -> bool:
    """Whether a pending delivery of this destination is due now."""
    d = WebhookDelivery
    stmt = select(exists().where(d.destination_id == destination_id, _is_due(d)))
    return bool(session.scalar(stmt))


def seconds_until_next_due(session: Session, destination_id: str) -> float | None:
    """Seconds until the next delivery of this destination falls due; None if none is pending.

    Only deliveries not waiting behind an earlier change count: they are the ones whose time
    decides when the destination has work again.
    """
    d = WebhookDelivery
    stmt = select(
        func.extract("epoch", func.min(d.next_attempt_at) - func.clock_timestamp())
    ).where(d.destination_id == destination_id, d.state == "pending", _unblocked(d))
    value = session.scalar(stmt)
    return None if value is None else max(float(value), 0.0)


def destinations_with_due_work(session: Session, limit: int) -> list[str]:
    """Deliverable destinations with a due delivery and no live drain lease."""
    d = WebhookDelivery
    w = WebhookDestination
    stmt = (
        select(w.id)
        .where(
            w.status.in_(DELIVERABLE),
            or_(w.drain_lease_until.is_(None), w.drain_lease_until < func.clock_timestamp()),
            exists().where(d.destination_id == w.id, _is_due(d)),
        )
        .order_by(w.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


# --- reads for operators and tests -------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryView:
    """A delivery and its notification, for inspection."""

    delivery_id: int
    destination_id: str
    notification_id: str
    type: str
    state: str
    attempts: int
    event_seq: int


def deliveries_for(session: Session, destination_id: str) -> list[DeliveryView]:
    """Every delivery of a destination, in notification order."""
    d = WebhookDelivery
    stmt = (
        select(
            d.id,
            d.destination_id,
            OutboxEvent.id.label("nid"),
            OutboxEvent.type,
            d.state,
            d.attempts,
            d.event_seq,
        )
        .join(OutboxEvent, OutboxEvent.seq == d.event_seq)
        .where(d.destination_id == destination_id)
        .order_by(d.event_seq)
    )
    return [
        DeliveryView(r.id, r.destination_id, r.nid, r.type, r.state, r.attempts, r.event_seq)
        for r in session.execute(stmt)
    ]


def attempts_for(session: Session, delivery_id: int) -> Sequence[WebhookAttempt]:
    """Every attempt of a delivery, first first."""
    stmt = (
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id)
        .order_by(WebhookAttempt.attempt, WebhookAttempt.id)
    )
    return session.scalars(stmt).all()
