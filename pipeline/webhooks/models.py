"""Tables of the webhook domain (migration ``0101``).

``webhook_outbox``
    One row per change, written by :func:`pipeline.webhooks.outbox.emit` in the same transaction
    as the change itself. ``seq`` orders rows; ``dispatched_at`` is NULL until the dispatcher has
    turned the row into deliveries.
``webhook_destinations``
    Subscriber URLs. ``secret_sealed`` is the Fernet token of the signing secret.
    ``drain_lease_*`` make at most one drainer work a destination at a time.
``webhook_deliveries``
    One row per (notification, destination): ``pending`` -> ``delivered`` | ``failed``.
``webhook_attempts``
    One row per HTTP attempt of a delivery, for the operator.

No foreign key ties the outbox to ``grants``: ``grant.deleted`` must outlive its grant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models import Base, new_id

DESTINATION_STATUSES = ("active", "failing", "failed", "paused")
DELIVERY_STATES = ("pending", "delivered", "failed")


class WebhookDestination(Base):
    """A subscriber URL with its trigger types and its own signing secret."""

    __tablename__ = "webhook_destinations"

    id: Mapped[str] = mapped_column(UUID(as_uuid=False), primary_key=True, default=new_id)
    webhook_url: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    trigger_types: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    notification_email_addresses: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, default=list
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    # Nylas' ``compressed_delivery``, kept as the client set it (migration 0103).
    compressed_delivery: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    # Fernet token of the signing secret; the plaintext is shown once and never stored.
    secret_sealed: Mapped[str] = mapped_column(Text, nullable=False)
    # Start of the current run of failed attempts (NULL while healthy).
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why the last attempt failed, for the operator (NULL while healthy). Migration 0102.
    failure_reason: Mapped[str | None] = mapped_column(Text)
    drain_lease_token: Mapped[str | None] = mapped_column(UUID(as_uuid=False))
    drain_lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )
    status_updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )

    def __repr__(self) -> str:  # never show the sealed secret, even in a debugger
        return f"<WebhookDestination {self.id} {self.status} {self.webhook_url!r}>"


class OutboxEvent(Base):
    """One change to notify about, written in the changing transaction."""

    __tablename__ = "webhook_outbox"

    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    # The notification id receivers deduplicate on; the same for every retry.
    id: Mapped[str] = mapped_column(UUID(as_uuid=False), nullable=False, default=new_id)
    grant_id: Mapped[str | None] = mapped_column(UUID(as_uuid=False))
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    subject_id: Mapped[str | None] = mapped_column(Text)
    # "<grant>:<object family>:<subject>"; deliveries with the same key go out in seq order.
    ordering_key: Mapped[str | None] = mapped_column(Text)
    object: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    # Fields of ``data`` beside ``object`` (migration 0104): ``grant_id`` of message.send_success,
    # ``grant_id``, ``reason`` and ``error`` of message.send_failed; NULL for other types.
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("clock_timestamp()"), nullable=False
    )
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("id", name="uq_webhook_outbox_id"),
        Index(
            "ix_webhook_outbox_pending",
            "seq",
            postgresql_where=text("dispatched_at IS NULL"),
        ),
        Index("ix_webhook_outbox_dispatched_at", "dispatched_at"),
    )


class WebhookDelivery(Base):
    """One notification owed to one destination."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_seq: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("webhook_outbox.seq", ondelete="CASCADE"), nullable=False
    )
    destination_id: Mapped[str] = mapped_column(
        UUID(as_uuid=False),
        ForeignKey("webhook_destinations.id", ondelete="CASCADE"),
        nullable=False,
    )
    ordering_key: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )

    __table_args__ = (
        UniqueConstraint("event_seq", "destination_id", name="uq_webhook_deliveries_event_dest"),
        Index(
            "ix_webhook_deliveries_due",
            "destination_id",
            "event_seq",
            postgresql_where=text("state = 'pending'"),
        ),
        Index(
            "ix_webhook_deliveries_ordering",
            "destination_id",
            "ordering_key",
            "event_seq",
            postgresql_where=text("state = 'pending' AND ordering_key IS NOT NULL"),
        ),
        Index(
            "ix_webhook_deliveries_next_attempt",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
        ),
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: what the destination answered, and how fast."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False
    )
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    response_body: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempt"),)
