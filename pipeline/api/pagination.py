"""Opaque page tokens for keyset pagination.

Lists are ordered by a timestamp and the row id, both descending, and a page token names the
last row of the previous page. The next page starts strictly after that ``(timestamp, id)``, so a
page never repeats or skips a row that existed when the first page was read, however many rows
arrive meanwhile (an offset would shift under concurrent inserts).

A token is ``base64url(JSON {"v": 1, "t": <ISO timestamp>, "i": <uuid>})`` without padding. It is
opaque to clients; anything that does not decode to exactly that is an invalid request.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

import orjson

from pipeline.api.errors import invalid_request
from pipeline.pages import Cursor

TOKEN_VERSION = 1
MAX_TOKEN_CHARS = 512  # real tokens are ~110 characters; anything far longer is not ours
DEFAULT_LIMIT = 50  # Nylas v3 default page size
MAX_LIMIT = 200  # Nylas v3 maximum page size


def encode_cursor(at: datetime, row_id: str) -> str:
    """An opaque token for the position of ``(at, row_id)``."""
    # orjson writes what json.dumps with compact separators writes for these ASCII values
    payload = orjson.dumps({"v": TOKEN_VERSION, "t": at.isoformat(), "i": row_id})
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """The position a token names.

    Raises:
        ApiError: 400 ``invalid_request_error`` for anything that is not one of our tokens.
    """
    bad = invalid_request(
        "Invalid page_token: pass the next_cursor value of the previous page unchanged."
    )
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("v") != TOKEN_VERSION:
            raise bad
        at = datetime.fromisoformat(str(data["t"]))
        row_id = str(uuid.UUID(str(data["i"])))
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise bad from exc
    if at.tzinfo is None:
        raise bad
    return Cursor(at=at, id=row_id)
