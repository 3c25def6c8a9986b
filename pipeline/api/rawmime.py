"""``fields=raw_mime`` on messages: the whole message as the IMAP server has it.

Postgres keeps the parsed message, not its bytes, so the raw message is fetched from the server
on demand, like an attachment (``BODY.PEEK[]`` of a copy, under the account's limits: one SELECT
per folder and one FETCH per message, on the pooled session). Nylas answers only ``grant_id``,
``object``, ``id`` and ``raw_mime`` (Base64url) for this field set.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from pipeline.api.deps import ApiState
from pipeline.grants.interactive import grant_imap
from pipeline.messages.placements import PlacementRepository
from pipeline.models import Grant, Message


def raw_mime_views(
    db: Session, api: ApiState, grant: Grant, messages: Sequence[Message]
) -> list[dict[str, Any]]:
    """``{id, grant_id, object, raw_mime}`` of each message; ``raw_mime`` is None for one that
    no folder holds any more.

    Raises:
        ApiError: 429 when the account's IMAP limits are used up.
        ImapError: The server could not be reached or refused us (mapped to 4xx/504).
    """
    locations = {m.id: PlacementRepository(db).locations(m.id) for m in messages}
    raw: dict[str, bytes] = {}
    copies = sum(len(found) for found in locations.values())
    if copies:
        folders = len({where.raw_name for found in locations.values() for where in found})
        with grant_imap(db, api, grant, ops=folders + copies) as imap:
            selected: str | None = None
            for message in messages:
                for where in locations[message.id]:
                    if where.raw_name != selected:
                        imap.select(where.raw_name, readonly=True)
                        selected = where.raw_name
                    data = imap.fetch_part(where.uid, "")
                    if data is not None:
                        raw[message.id] = data
                        break
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
