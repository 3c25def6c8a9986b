"""Every query of the webhook domain. Functions take the caller's session and never commit.

Times that decide what is due (leases, retries) come from the database clock
(``clock_timestamp()``), so workers on hosts with skewed clocks agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Float,
    Row,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, aliased

from pipeline.webhooks.models import (
    OutboxEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDestination,
)

DISPATCH_LOCK_KEY = 7_261_101  # pg advisory lock: one dispatcher at a time keeps seq order
DELIVERABLE = ("active", "failing")
ONE_SECOND: ColumnElement[Any] = literal_column("interval '1 second'")


def _in(seconds: Any) -> Any:
    """``clock_timestamp() + seconds`` as a SQL expression."""
    return func.clock_timestamp() + ONE_SECOND * seconds


# --- destinations ------------------------------------------------------------------------------


def add_destination(
    session: Session,
    *,
    webhook_url: str,
    description: str,
    trigger_types: list[str],
    notification_email_addresses: list[str],
    secret_sealed: str,
    compressed_delivery: bool = False,
) -> WebhookDestination:
    """Insert a destination (status ``active``) and return it with its server defaults."""
    destination = WebhookDestination(
        compressed_delivery=compressed_delivery,
        webhook_url=webhook_url,
        description=description,
        trigger_types=trigger_types,
        notification_email_addresses=notification_email_addresses,
        secret_sealed=secret_sealed,
        status="active",
    )
    session.add(destination)
    session.flush()
    session.refresh(destination)
    return destination


def get_destination(session: Session, destination_id: str) -> WebhookDestination | None:
    """The destination with that id, or None."""
    return session.get(WebhookDestination, destination_id)


def find_destination_by_url(session: Session, webhook_url: str) -> WebhookDestination | None:
    """The oldest destination with exactly that URL, or None."""
    stmt = (
        select(WebhookDestination)
        .where(WebhookDestination.webhook_url == webhook_url)
        .order_by(WebhookDestination.created_at, WebhookDestination.id)
        .limit(1)
    )
    return session.scalars(stmt).first()


def list_destinations(
    session: Session, *, limit: int | None = None, after_id: str | None = None
) -> Sequence[WebhookDestination]:
    """Destinations by id (a stable order for cursor pagination), after ``after_id``."""
    stmt = select(WebhookDestination).order_by(WebhookDestination.id)
    if after_id is not None:
        stmt = stmt.where(WebhookDestination.id > after_id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return session.scalars(stmt).all()


def delete_destination(session: Session, destination_id: str) -> bool:
    """Delete a destination and (by cascade) its deliveries; whether it existed."""
    result = session.execute(
        delete(WebhookDestination)
        .where(WebhookDestination.id == destination_id)
        .returning(WebhookDestination.id)
    )
    return result.first() is not None


def touch_destination(session: Session, destination: WebhookDestination) -> None:
    """Flush pending changes of ``destination`` and reload its server-set columns."""
    session.flush()
    session.refresh(destination)


def set_status(session: Session, destination: WebhookDestination, status: str) -> None:
    """Set a destination's status by hand (pause / resume); resets its failure run."""
    if destination.status != status:
        destination.status = status
        destination.status_updated_at = func.now()
    destination.failing_since = None
    destination.failure_reason = None
    session.flush()


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
        .values(drain_lease_token=token, drain_lease_until=_in(lease_s))
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
            next_attempt_at=_in(in_flight_s),
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
        .values(next_attempt_at=_in(bindparam("b_delay", type_=Float)))
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


# --- destination health ------------------------------------------------------------------------


def mark_healthy(session: Session, destination_id: str) -> None:
    """A delivery succeeded: a ``failing`` destination is ``active`` again."""
    w = WebhookDestination
    session.execute(
        update(w)
        .where(w.id == destination_id, w.status == "failing")
        .values(
            status="active", failing_since=None, failure_reason=None, status_updated_at=func.now()
        )
        .execution_options(synchronize_session=False)
    )


def mark_failing(
    session: Session, destination_id: str, failed_after_s: float, *, reason: str
) -> str | None:
    """An attempt failed: ``active`` -> ``failing``; failing longer than the limit -> ``failed``.

    ``reason`` (why the last attempt failed, one line) is kept for the operator. Returns the
    destination's status afterwards (None if it is paused, failed or gone).
    """
    w = WebhookDestination
    overdue = and_(
        w.failing_since.is_not(None),
        w.failing_since < func.now() - ONE_SECOND * failed_after_s,
    )
    new_status = case((overdue, "failed"), else_="failing")
    row = session.execute(
        update(w)
        .where(w.id == destination_id, w.status.in_(DELIVERABLE))
        .values(
            status=new_status,
            failure_reason=reason,
            failing_since=func.coalesce(w.failing_since, func.now()),
            status_updated_at=case((new_status != w.status, func.now()), else_=w.status_updated_at),
        )
        .returning(w.status)
        .execution_options(synchronize_session=False)
    ).first()
    return None if row is None else str(row.status)


def fail_overdue_destinations(session: Session, failed_after_s: float) -> list[str]:
    """Mark destinations failing for longer than ``failed_after_s`` as ``failed``; their ids."""
    w = WebhookDestination
    rows = session.execute(
        update(w)
        .where(
            w.status == "failing",
            w.failing_since < func.now() - ONE_SECOND * failed_after_s,
        )
        .values(status="failed", status_updated_at=func.now())
        .returning(w.id)
        .execution_options(synchronize_session=False)
    ).all()
    return [r.id for r in rows]


def abandon_pending(session: Session, destination_ids: Iterable[str]) -> int:
    """Give up every pending delivery of failed destinations; how many."""
    ids = list(destination_ids)
    if not ids:
        return 0
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.destination_id.in_(ids), WebhookDelivery.state == "pending")
        .values(state="failed")
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- sweeps ------------------------------------------------------------------------------------


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
