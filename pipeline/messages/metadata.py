"""Metadata on messages (and drafts): Nylas v3's key-value pairs, kept in Postgres only.

The IMAP server never sees them. Nylas' rules (developer.nylas.com, "Using metadata"): at most
:data:`MAX_PAIRS` pairs, keys up to :data:`MAX_KEY_CHARS` characters, string values up to
:data:`MAX_VALUE_CHARS`, nothing nested; a write replaces the whole object; only the reserved
keys ``key1``..``key5`` (:data:`INDEXED_KEYS`) can be filtered on (``metadata_pair=key1:value``),
served by the partial GIN index of migration 0310.

Writers: ``PUT .../messages/{id}`` (:mod:`pipeline.api.messages`), and a send or a draft stores
the metadata it was given on the message it made with :func:`store_metadata`.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, Text, cast, literal, literal_column, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from pipeline.models import Message

MAX_PAIRS = 50
MAX_KEY_CHARS = 40
MAX_VALUE_CHARS = 500
INDEXED_KEYS = ("key1", "key2", "key3", "key4", "key5")


class MetadataError(ValueError):
    """Metadata or a ``metadata_pair`` that Nylas' rules refuse; the message says which rule."""


def validated(value: object) -> dict[str, str]:
    """``value`` as a metadata object, checked against Nylas' rules.

    Raises:
        MetadataError: Not an object of at most 50 string pairs within the length limits.
    """
    if not isinstance(value, dict):
        raise MetadataError("metadata must be an object of string keys and string values.")
    if len(value) > MAX_PAIRS:
        raise MetadataError(f"metadata holds at most {MAX_PAIRS} key-value pairs.")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            raise MetadataError(f"metadata keys are 1 to {MAX_KEY_CHARS} characters.")
        if not isinstance(item, str):
            raise MetadataError(
                f"metadata[{key!r}] must be a string: metadata values are strings, not nested."
            )
        if len(item) > MAX_VALUE_CHARS:
            raise MetadataError(f"metadata[{key!r}] is longer than {MAX_VALUE_CHARS} characters.")
        if "\x00" in key or "\x00" in item:
            raise MetadataError("metadata keys and values cannot hold NUL characters.")
        out[key] = item
    return out


def parse_pair(text: str) -> tuple[str, str]:
    """A ``metadata_pair`` parameter (``key1:value``) as (key, value).

    Raises:
        MetadataError: Not ``<key>:<value>`` with one of the indexed keys.
    """
    key, colon, value = text.partition(":")
    key = key.strip()
    if not colon or key not in INDEXED_KEYS:
        raise MetadataError(
            "metadata_pair is <key>:<value> with key one of key1, key2, key3, key4, key5 "
            "(only these keys are indexed, as on Nylas), e.g. metadata_pair=key1:onboarding."
        )
    if len(value) > MAX_VALUE_CHARS:
        raise MetadataError(f"metadata_pair's value is longer than {MAX_VALUE_CHARS} characters.")
    return key, value


def pair_condition(m: Any, key: str, value: str) -> list[ColumnElement[bool]]:
    """WHERE conditions of ``metadata_pair`` on the message entity ``m``: containment, which
    ``ix_api_messages_grant_metadata`` serves (the ``<> '{}'`` term proves its partial
    predicate)."""
    return [
        m.metadata_.op("@>")(cast(literal(json.dumps({key: value}), Text), JSONB)),
        m.metadata_ != literal_column("'{}'::jsonb", JSONB),  # the index's predicate, verbatim
    ]


def store_metadata(session: Session, message_id: str, metadata: object) -> dict[str, str]:
    """Replace a message's metadata (the caller commits); returns what was stored.

    For a send or a draft: call it with the message row the send or draft made.

    Raises:
        MetadataError: ``metadata`` breaks Nylas' rules (nothing is changed).
    """
    checked = validated(metadata)
    session.execute(update(Message).where(Message.id == message_id).values(metadata_=checked))
    return checked
