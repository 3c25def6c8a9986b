"""The batch writer stores exactly what the parser produced, and a repeated write is harmless.

Rows go to Postgres with COPY (see ``MessageRepository._copy``); these tests pin down what that
must not change: awkward text (tabs, backslashes, newlines, quotes, non-BMP characters, text
that looks like COPY's own escapes) round-trips, JSONB and array columns keep their shape, and
a row that is already there (a re-run, a race) falls back to INSERT ... ON CONFLICT instead of
failing the batch.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.imap import FetchedMessage
from pipeline.messages.repository import MessageRepository
from pipeline.mime import parse_message
from pipeline.models import Attachment, Message, Placement, Thread
from tests.support.store import offline_grant, write_fetched

pytestmark = pytest.mark.services

AWKWARD = 'tab\there, back\\slash \\N \\. "quoted" \u00e9\u4e2d\U0001f600 line\nbreak'


def _raw(subject: str, message_id: str, *, attachment: bool = False) -> bytes:
    head = (
        f"From: =?utf-8?q?J=C3=BCrgen_\\=22Q=22?= <jurgen@example.org>\r\n"
        f'To: a@example.org, "B, with comma" <b@example.org>\r\n'
        f"Subject: =?utf-8?b?{_b64(subject)}?=\r\n"
        f"Message-ID: <{message_id}>\r\n"
        f"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
        f"X-Odd: {AWKWARD.replace(chr(10), ' ')}\r\n"
        "MIME-Version: 1.0\r\n"
    )
    if not attachment:
        body = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{AWKWARD}\r\n"
        return (head + body).encode()
    body = (
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        f"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{AWKWARD}\r\n"
        '--b1\r\nContent-Type: application/pdf; name="r\u00e9sum\u00e9 \\ 1.pdf"\r\n'
        "Content-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        "JVBERi0xLjQK\r\n--b1--\r\n"
    )
    return (head + body).encode()


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _fetched(uid: int, raw: bytes) -> FetchedMessage:
    return FetchedMessage(
        uid=uid,
        flags=("\\Seen", "$Label\\1"),
        internaldate=datetime(2026, 11, 2, 10, 0, tzinfo=UTC),
        size=len(raw),
        modseq=7,
        raw=raw,
    )


@pytest.fixture
def folder(pg_sessions: sessionmaker[Session]) -> tuple[str, str]:
    grant_id, (folder_id,) = offline_grant(pg_sessions, "w")
    return grant_id, folder_id


def test_awkward_text_and_structured_columns_round_trip(
    pg_sessions: sessionmaker[Session], folder: tuple[str, str]
) -> None:
    grant_id, folder_id = folder
    raw = _raw(AWKWARD.replace("\n", " "), "a@x", attachment=True)
    parsed = parse_message(raw)
    assert "\t" in parsed.body and "\\N" in parsed.subject  # the awkward parts survive parsing
    write_fetched(pg_sessions, grant_id, folder_id, [_fetched(1, raw)])
    with pg_sessions.begin() as db:
        message = db.scalars(select(Message)).one()
        assert message.subject == parsed.subject
        assert message.body == parsed.body
        assert message.snippet == parsed.snippet
        assert message.headers == [{"name": n, "value": v} for n, v in parsed.headers]
        assert message.from_ == [{"name": 'J\u00fcrgen \\"Q"', "email": "jurgen@example.org"}]
        assert message.to == [
            {"name": "", "email": "a@example.org"},
            {"name": "B, with comma", "email": "b@example.org"},
        ]
        assert message.flags == ["\\Seen", "$Label\\1"]
        assert message.unread is False and message.has_attachments is True
        assert message.references == []
        attachment = db.scalars(select(Attachment)).one()
        assert attachment.filename == parsed.attachments[0].filename == "r\u00e9sum\u00e9  1.pdf"
        assert attachment.message_id == message.id
        placement = db.scalars(select(Placement)).one()
        assert (placement.uid, placement.modseq, placement.message_id) == (1, 7, message.id)
        assert placement.flags == ["\\Seen", "$Label\\1"]
        thread = db.scalars(select(Thread)).one()
        assert message.thread_id == thread.id and thread.subject == parsed.subject


def test_rows_already_stored_fall_back_to_insert_on_conflict(
    pg_sessions: sessionmaker[Session], folder: tuple[str, str]
) -> None:
    grant_id, folder_id = folder
    write_fetched(pg_sessions, grant_id, folder_id, [_fetched(1, _raw("one", "one@x"))])
    with pg_sessions.begin() as db:
        first = db.scalars(select(Message)).one()
        row = {
            c: getattr(first, c)
            for c in ("grant_id", "identity_key", "header_hash", "subject", "date", "received_at")
        }
        # The same identity again (what a race past the grant lock would write): ignored.
        MessageRepository(db).insert_messages(
            [{**row, "id": "00000000-0000-4000-8000-000000000001"}]
        )
        # The same UID again pointing elsewhere (a re-run after a renumbering): re-pointed.
        other = {**row, "id": "00000000-0000-4000-8000-000000000002", "identity_key": "other"}
        MessageRepository(db).insert_messages([other])
        MessageRepository(db).upsert_placements(
            [
                {
                    "folder_id": folder_id,
                    "uidvalidity": 1,
                    "uid": 1,
                    "message_id": other["id"],
                    "flags": ["\\Flagged"],
                    "modseq": 9,
                }
            ]
        )
        # Left-out columns get their defaults, a fresh id per row among them.
        MessageRepository(db).insert_messages(
            [{**row, "identity_key": "k1"}, {**row, "identity_key": "k2"}]
        )
    with pg_sessions.begin() as db:
        assert db.scalar(select(func.count()).select_from(Message)) == 4
        assert db.scalar(select(func.count(func.distinct(Message.id)))) == 4
        added = db.scalars(select(Message).where(Message.identity_key == "k1")).one()
        assert (added.references, added.to, added.unread, added.body) == ([], [], True, "")
        placement = db.scalars(select(Placement)).one()
        assert (placement.message_id, placement.flags, placement.modseq) == (
            other["id"],
            ["\\Flagged"],
            9,
        )
