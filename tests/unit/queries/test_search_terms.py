"""Text keys of ``search_query_native`` answered by the store match their term literally.

The store compares a folded term with ``LIKE`` on the folded stored text
(``pipeline.search.store``): ``%``, ``_`` and ``\\`` in a term are characters to find, as
Dovecot's SEARCH finds them, never wildcards or escapes; and folding applies to the term as to
the text (``cafe`` finds ``Café``, ``CAFÉ`` finds ``café``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.imap import FetchedMessage
from pipeline.models import Message
from pipeline.search import criteria, store
from tests.support.store import offline_grant, write_fetched

pytestmark = pytest.mark.services

SENT = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
SUBJECTS = (
    "Sale 100% off",
    "Sale 1000 items",
    "file a_b.txt",
    "file axb.txt",
    "path c:\\dir",
    "path c:dir",
    "Café crème",
    "cafe au lait",
)


def _raw(subject: str, n: int) -> bytes:
    return (
        f"From: Ann <ann@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
        f"Date: Mon, 2 Nov 2026 10:0{n}:00 +0000\r\nMessage-ID: <{n}@example.org>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n"
    ).encode()


def _subjects(pg_sessions: sessionmaker[Session], grant_id: str, query: str) -> set[str]:
    node = criteria.parse(query)
    assert store.answerable(node), query
    with pg_sessions.begin() as db:
        cond = store.condition(node, None, grant_id=grant_id)
        rows = db.scalars(
            select(Message.subject).where(Message.grant_id == grant_id, cond(Message))
        )
        return set(rows)


def test_wildcards_and_escapes_in_a_term_are_literal(pg_sessions: sessionmaker[Session]) -> None:
    grant_id, (folder_id,) = offline_grant(pg_sessions, "s")
    fetched = [
        FetchedMessage(
            uid=n,
            flags=(),
            internaldate=SENT + timedelta(minutes=n),
            size=100,
            modseq=None,
            raw=_raw(subject, n),
        )
        for n, subject in enumerate(SUBJECTS, start=1)
    ]
    write_fetched(pg_sessions, grant_id, folder_id, fetched)
    assert _subjects(pg_sessions, grant_id, 'SUBJECT "100%"') == {"Sale 100% off"}
    assert _subjects(pg_sessions, grant_id, 'SUBJECT "0%"') == {"Sale 100% off"}
    assert _subjects(pg_sessions, grant_id, "SUBJECT %") == {"Sale 100% off"}
    assert _subjects(pg_sessions, grant_id, "SUBJECT a_b") == {"file a_b.txt"}
    assert _subjects(pg_sessions, grant_id, "SUBJECT _") == {"file a_b.txt"}
    assert _subjects(pg_sessions, grant_id, 'SUBJECT "c:\\\\dir"') == {"path c:\\dir"}
    assert _subjects(pg_sessions, grant_id, 'SUBJECT "\\\\"') == {"path c:\\dir"}
    assert _subjects(pg_sessions, grant_id, "SUBJECT cafe") == {"Café crème", "cafe au lait"}
    assert _subjects(pg_sessions, grant_id, 'SUBJECT "CAFÉ "') == {"Café crème"}
    assert _subjects(pg_sessions, grant_id, 'SUBJECT "é"') == {"Café crème"}
