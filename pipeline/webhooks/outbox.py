"""The transactional outbox: changes write notifications in their own transaction.

Writers call :func:`emit` inside the transaction that makes the change, after the write that
changes the object, and kick the dispatch after their commit
(:meth:`pipeline.jobs.Jobs.kick_webhooks`; in a worker, ``workers.webhook_queue.kick()``).
If the change rolls back, so does the notification; if the kick is lost (Redis flushed, process
killed), the periodic sweep finds the row anyway: Postgres is the truth.

Order: rows get an increasing ``seq``. Two transactions changing the same object are serialized
by the row lock the change itself takes, so when ``emit`` comes after that write, the later
change gets the larger ``seq``; :func:`dispatch_batch` (one dispatcher at a time) hands rows to
destinations in ``seq`` order and delivery keeps that order per object.

::

    emit() ──► webhook_outbox (dispatched_at NULL) ──dispatch_batch()──► webhook_deliveries
                                                                        (pending, per destination)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from pipeline.models import new_id
from pipeline.webhooks import repository
from pipeline.webhooks.errors import WebhookPayloadError
from pipeline.webhooks.schemas import TRIGGER_TYPES

NUL_ESCAPE = "\\u0000"
NUL_REPLACEMENT = "\ufffd"


def _without_nul(value: Any) -> Any:
    """``value`` with every U+0000 in strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_REPLACEMENT)
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def ordering_key(grant_id: str | None, type: str, subject_id: str | None) -> str | None:
    """The key under which notifications are delivered in order: grant, object family, id."""
    if subject_id is None:
        return None
    family = type.split(".", 1)[0]
    return f"{grant_id or '-'}:{family}:{subject_id}"


def emit(
    session: Session,
    *,
    grant_id: str | None,
    type: str,
    obj: dict[str, Any],
    subject_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Write one notification into the outbox, in the caller's transaction.

    Never commits and does no I/O beyond the INSERT. Call it after the write that changes the
    object (so row locks order same-object changes), and kick the dispatch
    (:meth:`pipeline.jobs.Jobs.kick_webhooks`) after the commit.

    Args:
        session: the caller's session; its transaction carries the row.
        grant_id: the grant the object belongs to (None for application-level events).
        type: a Nylas v3 trigger type, e.g. ``message.created``.
        obj: the object as the API shows it (JSON-serializable).
        subject_id: id of the object; notifications with the same grant and subject are
            delivered to each destination in the order they were emitted.
        data: fields of the envelope's ``data`` beside ``object`` (Nylas' send results:
            ``grant_id``, ``reason``, ``error``).

    Raises:
        WebhookPayloadError: unknown ``type``, or ``obj`` is not JSON-serializable.
    """
    if type not in TRIGGER_TYPES:
        raise WebhookPayloadError(
            f"Unknown webhook trigger type {type!r}; use one of {', '.join(sorted(TRIGGER_TYPES))}."
        )
    try:
        dumped = json.dumps([obj, data], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WebhookPayloadError(
            f"The {type} object is not JSON-serializable ({exc}); convert datetimes to unix "
            "seconds and other values to plain JSON types before emitting."
        ) from exc
    if NUL_ESCAPE in dumped:  # jsonb cannot store U+0000; mail in the wild has it
        obj = _without_nul(obj)
        data = _without_nul(data)
    repository.insert_event(
        session,
        notification_id=new_id(),
        grant_id=grant_id,
        type=type,
        subject_id=subject_id,
        ordering_key=ordering_key(grant_id, type, subject_id),
        obj=obj,
        data=data,
    )


@dataclass(frozen=True)
class DispatchResult:
    """What one dispatch transaction did."""

    events: int = 0
    deliveries: int = 0
    # destinations to wake: they got deliveries and no drainer is at work on them
    destination_ids: frozenset[str] = field(default_factory=frozenset)
    more: bool = False  # the batch was full: call again


def dispatch_batch(session: Session, *, limit: int) -> DispatchResult:
    """Turn up to ``limit`` pending outbox rows into deliveries, in ``seq`` order.

    Takes a transaction-scoped advisory lock first: a second dispatcher waits until this one
    commits, then sees what it left, so rows are never handed out of order. Each row goes to
    every ``active`` or ``failing`` destination subscribed to its type that existed when the
    change happened. Enqueue delivery work for ``destination_ids`` after the commit: the
    destinations that got some and have no drainer at work.
    """
    repository.lock_dispatcher(session)
    events = repository.pending_events(session, limit)
    if not events:
        return DispatchResult()
    subscribers = repository.deliverable_destinations(session)
    rows: list[dict[str, Any]] = []
    touched: set[str] = set()
    for event in events:
        for sub in subscribers:
            if event.type in sub.trigger_types and event.occurred_at >= sub.created_at:
                rows.append(
                    {
                        "event_seq": event.seq,
                        "destination_id": sub.id,
                        "ordering_key": event.ordering_key,
                    }
                )
                touched.add(sub.id)
    repository.insert_deliveries(session, rows)
    repository.mark_dispatched(session, [e.seq for e in events])
    # A destination whose drainer is at work needs no wake-up: its drainer claims these before
    # it lets go (the share lock makes a drainer that is letting go wait for this commit).
    # Waking it anyway costs a task that only finds the lease taken, for every notification
    # a slow destination gets while it is slow.
    idle = touched - repository.live_leases(session, touched)
    return DispatchResult(
        events=len(events),
        deliveries=len(rows),
        destination_ids=frozenset(idle),
        more=len(events) == limit,
    )
