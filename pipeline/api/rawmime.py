"""``fields=raw_mime`` on messages: the whole message as the IMAP server has it.

Postgres keeps the parsed message, not its bytes, so the raw message is fetched from the server
on demand, like an attachment (:func:`pipeline.messages.content.raw_messages`). Nylas answers
only ``grant_id``, ``object``, ``id`` and ``raw_mime`` (Base64url) for this field set.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from pipeline.api.deps import ApiState
from pipeline.messages import content
from pipeline.models import Grant, Message


def raw_mime_views(
    db: Session, api: ApiState, grant: Grant, messages: Sequence[Message]
) -> list[dict[str, Any]]:
    """``{id, grant_id, object, raw_mime}`` of each message; ``raw_mime`` is None for one that
    no folder holds any more.

    Raises:
        RateLimited: The account's IMAP limits are used up (a 429).
        ImapError: The server could not be reached or refused us (mapped to 4xx/504).
    """
    raw = content.raw_messages(db, api, grant, messages)
    return [
        {
            "id": m.id,
            "grant_id": m.grant_id,
            "object": "message",
            "raw_mime": (
                base64.urlsafe_b64encode(raw[m.id]).decode("ascii") if m.id in raw else None
            ),
        }
        for m in messages
    ]
