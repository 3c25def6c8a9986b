"""Pages of stored objects: the keyset position a page starts after (:class:`Cursor`; the API's
page tokens encode it, ``pipeline.api.pagination``) and the test every object id passes before it
is looked up (:func:`is_uuid`)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Cursor:
    """The position after which the next page starts."""

    at: datetime
    id: str


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID (ids of every object); other strings never match a row."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


_CANONICAL = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def is_canonical_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID as the API writes them, in either case (what
    ``is_uuid(value) and str(uuid.UUID(value)) == value.lower()`` tells, with one regular
    expression instead of parsing it twice: every list request asks it of its grant id)."""
    return _CANONICAL.fullmatch(value) is not None
