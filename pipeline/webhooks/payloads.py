"""The Nylas v3 notification envelope, serialised once into the exact bytes that get signed.

::

    {"specversion": "1.0", "type": "message.created", "source": "/imap/emails/incremental",
     "id": "<notification id>", "time": <unix s>, "webhook_delivery_attempt": <n>,
     "data": {"application_id": "<app id>", "object": {...}}}

``source`` is what Nylas sends for an IMAP grant: ``/nylas/system`` for grant events,
``/imap/emails/historic`` for ``grant.imap_sync_completed``, ``/imap/emails/incremental`` for
message and folder changes, ``/nylas/send`` for ``message.send_success``/``send_failed``. The
grant is ``data.object.grant_id`` in every object.

A body larger than the limit (1 MB by default) is sent as ``<type>.truncated`` with the
object's ``body`` left out; the receiver fetches the full object through the API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.models import Grant
from pipeline.webhooks.schemas import SEND_RESULT_TYPES, TRUNCATED_SUFFIX

SPEC_VERSION = "1.0"
SYSTEM_SOURCE = "/nylas/system"  # grant lifecycle, and notifications that belong to no grant
HISTORIC_SOURCE = "/imap/emails/historic"  # the end of the initial (historic) sync
INCREMENTAL_SOURCE = "/imap/emails/incremental"  # changes found after the initial sync
SEND_SOURCE = "/nylas/send"  # the outcome of a scheduled send (Nylas: "message send")
TRUNCATED_FIELDS = ("body",)


@dataclass(frozen=True)
class Notification:
    """One notification as it is sent: its (possibly truncated) type and the raw body."""

    id: str
    type: str
    body: bytes
    truncated: bool


def source_for(type: str, grant_id: str | None) -> str:
    """The envelope's ``source`` for a notification type, as Nylas names it for IMAP grants."""
    if type == "grant.imap_sync_completed":
        return HISTORIC_SOURCE
    if type in SEND_RESULT_TYPES:
        return SEND_SOURCE
    if grant_id is None or type.startswith("grant."):
        return SYSTEM_SOURCE
    return INCREMENTAL_SOURCE


def encode(envelope: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON: the exact bytes that are signed and sent."""
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build(
    *,
    notification_id: str,
    type: str,
    grant_id: str | None,
    occurred_at: datetime,
    attempt: int,
    application_id: str,
    obj: dict[str, Any],
    max_bytes: int,
    data: dict[str, Any] | None = None,
) -> Notification:
    """The envelope for one attempt, truncated to ``<type>.truncated`` when over ``max_bytes``.

    ``data``: fields of ``data`` beside ``application_id`` and ``object`` (``grant_id``,
    ``reason``, ``error`` of the send results), kept when truncated.
    """
    extra = {k: v for k, v in (data or {}).items() if k not in ("application_id", "object")}
    envelope: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "type": type,
        "source": source_for(type, grant_id),
        "id": notification_id,
        "time": int(occurred_at.timestamp()),
        "webhook_delivery_attempt": attempt,
        "data": {"application_id": application_id, **extra, "object": obj},
    }
    body = encode(envelope)
    if len(body) <= max_bytes:
        return Notification(notification_id, type, body, truncated=False)
    slim = {k: v for k, v in obj.items() if k not in TRUNCATED_FIELDS}
    envelope["type"] = type + TRUNCATED_SUFFIX
    envelope["data"] = {"application_id": application_id, **extra, "object": slim}
    return Notification(notification_id, envelope["type"], encode(envelope), truncated=True)


# Nylas notification codes of the grant.* types (its notification reference); the type, not the
# code, tells them apart: grant.imap_sync_completed shares 25012 with grant.created.
GRANT_NOTIFICATION_CODES = {
    "grant.created": 25012,
    "grant.updated": 25014,
    "grant.deleted": 25013,
    "grant.expired": 25009,
    "grant.imap_sync_completed": 25012,
}
REAUTHENTICATED_CODE = 25027  # grant.updated sent for a re-authentication
IMAP_CONNECTOR_ID = "imap"
"""``integration_id`` of every grant: an install has one IMAP connector, always this one."""


def grant_notification(
    type_: str, grant: Grant, *, reauthenticated: bool = False
) -> dict[str, Any]:
    """``data.object`` of a ``grant.*`` notification, in the fields Nylas sends for that type."""
    obj: dict[str, Any] = {
        "code": REAUTHENTICATED_CODE if reauthenticated else GRANT_NOTIFICATION_CODES[type_],
        "grant_id": grant.id,
        "integration_id": IMAP_CONNECTOR_ID,
        "provider": "imap",
    }
    if type_ == "grant.imap_sync_completed":
        obj["type"] = type_  # Nylas echoes the type in this object only
        return obj
    obj["email"] = grant.email
    if type_ == "grant.created":
        obj["scope"] = []
    elif type_ == "grant.updated":
        obj["reauthentication_flag"] = reauthenticated
    elif type_ == "grant.expired" and grant.updated_at is not None:
        # Nylas: the last time the grant was updated successfully before it expired
        obj["grant_updated_at"] = int(grant.updated_at.timestamp())
    return obj
