"""The Nylas v3 notification envelope, serialised once into the exact bytes that get signed.

::

    {"specversion": "1.0", "type": "message.created", "source": "/imap/<grant id>",
     "id": "<notification id>", "time": <unix s>, "webhook_delivery_attempt": <n>,
     "data": {"application_id": "<app id>", "object": {...}}}

A body larger than the limit (1 MB by default) is sent as ``<type>.truncated`` with the
object's ``body`` left out; the receiver fetches the full object through the API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.webhooks.schemas import TRUNCATED_SUFFIX

SPEC_VERSION = "1.0"
APP_SOURCE = "/imap/app"  # source of notifications that belong to no grant
TRUNCATED_FIELDS = ("body",)


@dataclass(frozen=True)
class Notification:
    """One notification as it is sent: its (possibly truncated) type and the raw body."""

    id: str
    type: str
    body: bytes
    truncated: bool


def source_for(grant_id: str | None) -> str:
    """The envelope's ``source``: ``/imap/<grant id>``, or ``/imap/app`` without a grant."""
    return f"/imap/{grant_id}" if grant_id else APP_SOURCE


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
) -> Notification:
    """The envelope for one attempt, truncated to ``<type>.truncated`` when over ``max_bytes``."""
    envelope: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "type": type,
        "source": source_for(grant_id),
        "id": notification_id,
        "time": int(occurred_at.timestamp()),
        "webhook_delivery_attempt": attempt,
        "data": {"application_id": application_id, "object": obj},
    }
    body = encode(envelope)
    if len(body) <= max_bytes:
        return Notification(notification_id, type, body, truncated=False)
    slim = {k: v for k, v in obj.items() if k not in TRUNCATED_FIELDS}
    envelope["type"] = type + TRUNCATED_SUFFIX
    envelope["data"] = {"application_id": application_id, "object": slim}
    return Notification(notification_id, envelope["type"], encode(envelope), truncated=True)
