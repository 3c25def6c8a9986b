"""Webhook destinations: add, find, list, delete, and their health (active, failing, failed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import (
    and_,
    case,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from pipeline.webhooks.models import (
    WebhookDelivery,
    WebhookDestination,
)
from pipeline.webhooks.repository.sql import DELIVERABLE, ONE_SECOND

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
