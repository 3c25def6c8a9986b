"""What callers of the webhook service send and get back, with Nylas v3 field names.

The HTTP API serialises these models as they are (``model_dump(exclude_none=True)``); times are
unix seconds, as in Nylas. ``webhook_secret`` is set only in the answer to a create or a
secret rotation, the one time the plaintext secret is ever shown.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TRIGGER_TYPES: frozenset[str] = frozenset(
    {
        "message.created",
        "message.updated",
        "message.deleted",
        "folder.created",
        "folder.updated",
        "folder.deleted",
        "grant.created",
        "grant.updated",
        "grant.deleted",
        "grant.expired",
        "grant.imap_sync_completed",
        "message.send_success",  # a scheduled send (``send_at``) went out
        "message.send_failed",  # a scheduled send failed for good
    }
)
"""The Nylas v3 trigger types this engine emits (the IMAP subset)."""

NEVER_EMITTED_TRIGGER_TYPES: frozenset[str] = frozenset(
    {
        # Nylas' other documented types (the SDK's ``WebhookTriggers``, the ``trigger_types``
        # of its API reference, its notification reference): a destination may subscribe to
        # them, as on Nylas, but nothing here produces them (no calendars, contacts,
        # scheduler, notetaker, tracking or deliverability reports over IMAP).
        "booking.created",
        "booking.pending",
        "booking.rescheduled",
        "booking.cancelled",
        "booking.reminder",
        "calendar.created",
        "calendar.updated",
        "calendar.deleted",
        "contact.updated",
        "contact.deleted",
        "event.created",
        "event.updated",
        "event.deleted",
        "message.bounce_detected",
        "message.opened",
        "message.link_clicked",
        "message.opened.legacy",
        "message.link_clicked.legacy",
        "message.intelligence.order",
        "message.intelligence.tracking",
        "message.intelligence.return",
        "message.created.cleaned",
        "message.created.metadata",  # Google's gmail.metadata scope only
        "message.updated.metadata",
        "thread.replied",
        "thread.replied.legacy",
        # delivery reports of Nylas' transactional sending and Agent Accounts
        "message.transactional.bounced",
        "message.transactional.complaint",
        "message.transactional.delivered",
        "message.transactional.rejected",
        "message.bounced",
        "message.complaint",
        "message.delivered",
        "message.rejected",
        "notetaker.created",
        "notetaker.updated",
        "notetaker.deleted",
        "notetaker.meeting_state",
        "notetaker.media",
    }
)
"""Types a destination may subscribe to that this engine never sends (README, Webhooks)."""

ACCEPTED_TRIGGER_TYPES: frozenset[str] = TRIGGER_TYPES | NEVER_EMITTED_TRIGGER_TYPES

SEND_RESULT_TYPES: frozenset[str] = frozenset({"message.send_success", "message.send_failed"})
"""Outcomes of scheduled sends (Nylas: only for messages sent with ``send_at``); their ``data``
has ``grant_id`` (and, for a failure, ``reason`` and ``error``) beside ``object``."""

TRUNCATED_SUFFIX = ".truncated"

DestinationStatus = Literal["active", "failing", "failed", "pause"]
"""Statuses as Nylas spells them (stored as ``paused``: :data:`models.DESTINATION_STATUSES`)."""

MAX_DESCRIPTION_CHARS = 1000
MAX_URL_CHARS = 2000
MAX_NOTIFICATION_EMAILS = 20


def check_trigger_types(values: list[str]) -> list[str]:
    """Deduplicated trigger types in the order given, or ValueError naming the unknown ones."""
    unknown = sorted(set(values) - ACCEPTED_TRIGGER_TYPES)
    if unknown:
        raise ValueError(
            f"unknown trigger type(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(ACCEPTED_TRIGGER_TYPES))}"
        )
    if not values:
        raise ValueError("at least one trigger type is required")
    return list(dict.fromkeys(values))


class WebhookDestinationOut(BaseModel):
    """A webhook destination as the API shows it (Nylas v3 ``Webhook`` object)."""

    model_config = ConfigDict(frozen=True)

    id: str
    description: str
    trigger_types: list[str]
    webhook_url: str
    status: DestinationStatus
    notification_email_addresses: list[str]
    status_updated_at: int
    created_at: int
    updated_at: int
    compressed_delivery: bool = False
    webhook_secret: str | None = Field(default=None, repr=False)
    # Not in the Nylas object: why a ``failing``/``failed`` destination fails (its last failed
    # attempt, e.g. "DeadlineExceeded: no complete response headers within 10 s …");
    # None while healthy. Clients that do not know the field ignore it.
    failure_reason: str | None = None


class CreateWebhookRequest(BaseModel):
    """Body of ``POST /v3/webhooks``."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    trigger_types: list[str]
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS)
    notification_email_addresses: list[str] = Field(
        default_factory=list, max_length=MAX_NOTIFICATION_EMAILS
    )
    compressed_delivery: bool = False

    @field_validator("trigger_types")
    @classmethod
    def _check_triggers(cls, value: list[str]) -> list[str]:
        return check_trigger_types(value)


class UpdateWebhookRequest(BaseModel):
    """Body of ``PUT /v3/webhooks/{id}``: only the fields given change.

    ``status`` may be set to ``active`` (also to revive a ``failed`` destination) or ``paused``
    (Nylas spells it ``pause``; both are accepted).
    """

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(default=None, min_length=1, max_length=MAX_URL_CHARS)
    trigger_types: list[str] | None = None
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    notification_email_addresses: list[str] | None = Field(
        default=None, max_length=MAX_NOTIFICATION_EMAILS
    )
    status: Literal["active", "paused", "pause"] | None = None
    compressed_delivery: bool | None = None

    @field_validator("trigger_types")
    @classmethod
    def _check_triggers(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_trigger_types(value)


class TestEventResult(BaseModel):
    """Outcome of :meth:`WebhookService.send_test_event`."""

    model_config = ConfigDict(frozen=True)
    __test__ = False  # not a pytest test class, whatever the name suggests

    success: bool
    status_code: int | None
    latency_ms: int
    error: str | None = None
