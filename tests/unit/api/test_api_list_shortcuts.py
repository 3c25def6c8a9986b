"""The list path's shortcuts say exactly what the slower forms they replaced said: a page token
is the bytes json.dumps made, and a canonical UUID is what parsing it twice accepted."""

from __future__ import annotations

import base64
import json
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from pipeline.api.pagination import encode_cursor
from pipeline.pages import is_canonical_uuid, is_uuid


def _token_as_before(at: datetime, row_id: str) -> str:
    payload = json.dumps({"v": 1, "t": at.isoformat(), "i": row_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 12, 7, 16, 0, tzinfo=UTC),
        datetime(2026, 12, 7, 16, 0, 0, 123456, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=14))),
    ],
)
def test_page_tokens_are_the_bytes_json_dumps_made(at: datetime) -> None:
    for row_id in (str(uuid.uuid4()), str(uuid.UUID(int=0)), str(uuid.uuid4()).upper()):
        assert encode_cursor(at, row_id) == _token_as_before(at, row_id)


def _canonical_as_before(value: str) -> bool:
    return is_uuid(value) and str(uuid.UUID(value)) == value.lower()


def test_canonical_uuid_is_what_parsing_twice_accepted() -> None:
    rng = random.Random(12)
    made = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(200)]
    values = [
        *made,
        *(v.upper() for v in made[:20]),
        *(v[:9] + v[9:].upper() for v in made[:20]),
        *(v.replace("-", "") for v in made[:5]),  # parses, not canonical
        *("{" + v + "}" for v in made[:5]),
        *("urn:uuid:" + v for v in made[:5]),
        *(v + "\n" for v in made[:5]),
        *(" " + v for v in made[:5]),
        *(v[:-1] for v in made[:5]),
        *(v + "0" for v in made[:5]),
        *(v[:8] + "_" + v[9:] for v in made[:5]),
        *(v[:4] + "_" + v[5:] for v in made[:5]),
        *(v.replace("a", "g") for v in made[:5] if "a" in v),
        *(v[:-1] + "\u0663" for v in made[:5]),  # an Arabic-Indic digit
        "",
        "me@example.test",
        "INBOX",
    ]
    for value in values:
        assert is_canonical_uuid(value) == _canonical_as_before(value), repr(value)
    assert sum(map(is_canonical_uuid, values)) == 240
