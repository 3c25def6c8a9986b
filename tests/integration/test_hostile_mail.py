"""Hostile mail through a real Dovecot and the real sync path: one message costs one message.

Long values are stored whole (the indexes key them by a hash or a prefix), what Postgres still
refuses is recorded in ``sync_failures`` while the rest of the folder is stored, and a folder
never reads ``synced`` while its newest mail is not stored.
"""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, text

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant
from pipeline.messages.repository import text_key
from pipeline.mime import MAX_MIME_DEPTH
from pipeline.models import Attachment, Folder, Message, SyncFailure, Thread
from pipeline.sync.run import sync_grant_inline
from pipeline.webhooks.models import OutboxEvent
from tests.support.fake_imap import FakeFolder, FakeImapConfig, FakeImapServer, sample_message
from tests.support.grants import connect, sessions_for
from tests.support.mail import append, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services

# Postgres refuses a B-tree entry above about a third of a page (2,704 bytes), after
# compression: random words do not compress below that, repeated letters would.
WORDS = [
    "".join(random.Random(seed).choices("abcdefghijklmnopqrstuvwxyz", k=7)) for seed in range(500)
]


def words(count: int, seed: int = 0) -> str:
    """``count`` pseudo-random words (incompressible enough to defeat index compression)."""
    rnd = random.Random(seed)
    return " ".join(rnd.choice(WORDS) + str(rnd.randrange(10_000)) for _ in range(count))


def raw_message(subject_field: bytes, *, extra: bytes = b"", body: bytes = b"Hi\r\n") -> bytes:
    """A message with the given raw Subject field value (folded by the caller if needed)."""
    return (
        b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\n"
        b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <" + random.randbytes(8).hex().encode() + b"@example.test>\r\n"
        b"Subject: " + subject_field + b"\r\n" + extra + b"\r\n" + body
    )


def encoded_subject(chars: int) -> tuple[bytes, str]:
    """An RFC 2047 subject of at least ``chars`` decoded characters, folded in 76-character
    encoded-words as mailers write them; returns (raw field value, decoded text)."""
    plain = words(chars // 10 + 1, seed=7) + " ü"
    data = plain.encode()
    encoded = [
        b"=?utf-8?b?" + base64.b64encode(data[i : i + 45]) + b"?=" for i in range(0, len(data), 45)
    ]
    return b"\r\n ".join(encoded), plain


def state(settings: Settings, grant_id: str) -> dict[str, Any]:
    """Subjects stored, failures recorded and the Inbox's state."""
    with session_scope(settings.require_database_url()) as db:
        inbox = db.scalars(
            select(Folder).where(Folder.grant_id == grant_id, Folder.raw_name == "INBOX")
        ).one()
        return {
            "subjects": sorted(db.scalars(select(Message.subject))),
            "failures": [(f.uid, f.error) for f in db.scalars(select(SyncFailure))],
            "inbox": (inbox.state, inbox.state_detail),
        }


def synced_grant(settings: Settings, user: MailUser) -> str:
    append(user.server, user.name, user.password, make_message("first"))
    grant_id = connect(settings, user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert state(settings, grant_id)["inbox"] == ("synced", None)
    return grant_id


@pytest.mark.parametrize("live", [False, True], ids=["initial", "incremental"])
def test_a_9000_character_subject_is_stored_and_so_is_the_mail_after_it(
    settings: Settings, mail_user: MailUser, live: bool
) -> None:
    server, user, password = mail_user.server, mail_user.name, mail_user.password
    long_subject = words(1200)[:9000]
    grant_id = synced_grant(settings, mail_user) if live else ""
    append(server, user, password, raw_message(long_subject.encode()))
    append(server, user, password, make_message("after"))
    grant_id = grant_id or connect(settings, mail_user)

    sync_grant_inline(sessions_for(settings), settings, grant_id)

    found = state(settings, grant_id)
    expected = ["first", "after", long_subject] if live else ["after", long_subject]
    assert sorted(found["subjects"]) == sorted(expected)
    assert found["failures"] == []
    assert found["inbox"] == ("synced", None)
    with session_scope(settings.require_database_url()) as db:  # the thread keeps it whole too
        assert long_subject in set(db.scalars(select(Thread.subject)))


def test_a_200000_character_encoded_word_subject_is_stored(
    settings: Settings, mail_user: MailUser
) -> None:
    grant_id = synced_grant(settings, mail_user)
    field, plain = encoded_subject(200_000)
    assert len(field) > 200_000
    append(mail_user.server, mail_user.name, mail_user.password, raw_message(field))
    append(mail_user.server, mail_user.name, mail_user.password, make_message("after"))

    sync_grant_inline(sessions_for(settings), settings, grant_id)

    found = state(settings, grant_id)
    assert sorted(found["subjects"]) == sorted(["first", "after", plain])
    assert found["failures"] == [] and found["inbox"] == ("synced", None)


def test_long_message_ids_references_and_addresses_are_stored_and_thread(
    settings: Settings, mail_user: MailUser
) -> None:
    # Every indexed text column: Message-ID (B-tree), References (GIN), the participants'
    # address keys (GIN) and the thread's subject key (B-tree).
    server, user, password = mail_user.server, mail_user.name, mail_user.password
    long_id = "<" + words(800, seed=1).replace(" ", ".") + "@example.test>"
    long_address = words(800, seed=2).replace(" ", ".") + "@example.test"
    parent = (
        b"From: Someone <" + long_address.encode() + b">\r\nTo: bob@example.test\r\n"
        b"Message-ID: " + long_id.encode() + b"\r\nSubject: parent\r\n\r\nparent\r\n"
    )
    child = (
        b"From: Bob <bob@example.test>\r\nTo: " + long_address.encode() + b"\r\n"
        b"Message-ID: <child@example.test>\r\nIn-Reply-To: " + long_id.encode() + b"\r\n"
        b"References: " + long_id.encode() + b"\r\nSubject: Re: parent\r\n\r\nchild\r\n"
    )
    append(server, user, password, parent)
    append(server, user, password, child)
    append(server, user, password, make_message("after"))
    grant_id = connect(settings, mail_user)

    sync_grant_inline(sessions_for(settings), settings, grant_id)

    found = state(settings, grant_id)
    assert found["failures"] == [] and found["inbox"] == ("synced", None)
    assert sorted(found["subjects"]) == ["Re: parent", "after", "parent"]
    with session_scope(settings.require_database_url()) as db:
        rows = {m.subject: m for m in db.scalars(select(Message))}
        assert rows["parent"].message_id_header == long_id
        assert rows["Re: parent"].references == [long_id]
        assert rows["parent"].from_[0]["email"] == long_address
        assert rows["Re: parent"].thread_id == rows["parent"].thread_id
        # the API's address filter finds both by the long address (its index keys are bounded)
        found_ids = db.scalars(
            text(
                "SELECT id FROM messages WHERE api_participant_keys(grant_id, "
                '"from" || "to" || cc || bcc) @> ARRAY[:key]'
            ),
            {"key": f"{grant_id}:{text_key(long_address)}"},
        ).all()
        assert len(found_ids) == 2


def test_what_postgres_still_refuses_costs_one_message_with_the_reason(
    settings: Settings, mail_user: MailUser
) -> None:
    # An index an operator added on the body: Postgres refuses a long body with
    # ProgramLimitExceeded ("index row size ... exceeds maximum"), which is not a DataError.
    with session_scope(settings.require_database_url()) as db:
        db.execute(text("CREATE INDEX t_body ON messages (body)"))
    grant_id = synced_grant(settings, mail_user)
    server, user, password = mail_user.server, mail_user.name, mail_user.password
    append(server, user, password, make_message("before"))
    append(server, user, password, make_message("huge body", body=words(2000)))
    append(server, user, password, make_message("after"))

    sync_grant_inline(sessions_for(settings), settings, grant_id)

    found = state(settings, grant_id)
    assert sorted(found["subjects"]) == ["after", "before", "first"]
    ((uid, error),) = found["failures"]
    assert uid == 3 and error.startswith("The message could not be stored:")
    assert "index row requires" in error
    assert found["inbox"] == ("synced", None)


def test_a_folder_whose_new_mail_cannot_be_stored_does_not_read_synced(
    settings: Settings, mail_user: MailUser
) -> None:
    # An error that is not about the message (here a trigger's exception, as a database fault
    # would be) fails the run: the folder must say so, and the next run must store the mail
    # and notify it as new.
    grant_id = synced_grant(settings, mail_user)
    with session_scope(settings.require_database_url()) as db:
        db.execute(
            text(
                "CREATE FUNCTION t_fail() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'database fault'; END $$"
            )
        )
        db.execute(
            text("CREATE TRIGGER t_fail BEFORE INSERT ON placements EXECUTE FUNCTION t_fail()")
        )
    append(mail_user.server, mail_user.name, mail_user.password, make_message("new"))
    sessions = sessions_for(settings)

    with pytest.raises(Exception, match="database fault"):
        sync_grant_inline(sessions, settings, grant_id)

    inbox_state, detail = state(settings, grant_id)["inbox"]
    assert inbox_state == "failed"
    assert detail is not None and "database fault" in detail

    with session_scope(settings.require_database_url()) as db:
        db.execute(text("DROP TRIGGER t_fail ON placements"))
    sync_grant_inline(sessions, settings, grant_id)

    found = state(settings, grant_id)
    assert found["subjects"] == ["first", "new"] and found["inbox"] == ("synced", None)
    with session_scope(settings.require_database_url()) as db:
        created = db.scalars(
            select(func.count()).where(OutboxEvent.type == "message.created")
        ).one()
    assert created == 1  # still an incremental run: the new mail is announced


# --- hostile MIME through the real sync path -------------------------------------------------


def nested(depth: int, *, enclosed: bool) -> bytes:
    """A message whose text sits ``depth`` multiparts (or enclosed messages) deep."""
    inner = b"Content-Type: text/plain\r\n\r\ndeep text\r\n"
    for level in range(depth):
        if enclosed:
            inner = b"Content-Type: message/rfc822\r\n\r\nSubject: level\r\n" + inner
        else:
            b = f"b{level}".encode()
            inner = (
                b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b + b"\r\n"
                + inner + b"\r\n--" + b + b"--\r\n"
            )  # fmt: skip
    return raw_message(
        b"deep " + str(depth).encode(),
        extra=inner.split(b"\r\n\r\n", 1)[0] + b"\r\n",
        body=inner.split(b"\r\n\r\n", 1)[1],
    )


def test_deeply_nested_mail_and_encoded_word_floods_are_stored(
    settings: Settings, mail_user: MailUser
) -> None:
    server, user, password = mail_user.server, mail_user.name, mail_user.password
    append(server, user, password, nested(500, enclosed=False))
    append(server, user, password, nested(1000, enclosed=True))
    flood = b" ".join([b"=?utf-8?q?ab?="] * 200_000)  # 3 MB of encoded-words
    append(server, user, password, raw_message(flood))
    append(server, user, password, make_message("after"))
    grant_id = connect(settings, mail_user)

    sync_grant_inline(sessions_for(settings), settings, grant_id)

    found = state(settings, grant_id)
    assert found["failures"] == [] and found["inbox"] == ("synced", None)
    assert sorted(found["subjects"], key=len) == ["after", "deep 500", "deep 1000", "ab" * 200_000]
    with session_scope(settings.require_database_url()) as db:
        kinds = sorted(
            (a.content_type, len(a.part_path.split("."))) for a in db.scalars(select(Attachment))
        )
    # the multipart's deep part kept whole at the depth cap; the enclosed message as one part
    assert kinds == [("application/octet-stream", MAX_MIME_DEPTH), ("message/rfc822", 1)]


@pytest.mark.parametrize(
    "date",
    [
        "Fri, 31 Dec 9999 23:59:59 -1400",
        "0001-01-01T00:00:00+14:00",
        "Mon, 05 Oct 99999999999999999999 00:19:00 +0000",
        "yesterday (" + "(" * 5000,
    ],
)
def test_a_message_with_an_unreadable_date_is_stored_dated_by_its_arrival(
    settings: Settings, mail_user: MailUser, date: str
) -> None:
    server, user, password = mail_user.server, mail_user.name, mail_user.password
    arrived = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    bad = raw_message(b"bad date").replace(
        b"Date: Mon, 30 Nov 2026 10:00:00 +0000", b"Date: " + date.encode()
    )
    append(server, user, password, bad, when=arrived)
    append(server, user, password, make_message("after"))
    grant_id = connect(settings, mail_user)

    sync_grant_inline(sessions_for(settings), settings, grant_id, now=arrived)

    found = state(settings, grant_id)
    assert sorted(found["subjects"]) == ["after", "bad date"]
    assert found["failures"] == [] and found["inbox"] == ("synced", None)
    with session_scope(settings.require_database_url()) as db:
        stored = db.scalars(select(Message).where(Message.subject == "bad date")).one()
        assert stored.date == arrived and stored.received_at == arrived


@pytest.mark.parametrize("internaldate", [b"31-Feb-2026 25:61:00 +9999", b"yesterday", b""])
def test_a_message_whose_internaldate_is_unreadable_is_stored(
    settings: Settings, internaldate: bytes
) -> None:
    # Dovecot always answers a readable INTERNALDATE (from the file's mtime), so the fake
    # server plays the one that does not, for UID 2 of 3.
    messages = [sample_message(n) for n in (1, 2, 3)]
    inbox = FakeFolder(b"INBOX", messages, raw_internaldates={2: internaldate})
    with FakeImapServer(FakeImapConfig(folders=[inbox])) as server:
        request = GrantRequest(
            email="fake@fake.test",
            password="any",  # type: ignore[arg-type]
            imap_host="127.0.0.1",
            imap_port=server.port,
            imap_tls="plain",
            allow_plaintext=True,
            imap_username="fake",
        )
        with session_scope(settings.require_database_url()) as db:
            grant_id = create_grant(db, settings, request).grant.id
        sync_grant_inline(sessions_for(settings), settings, grant_id)

    found = state(settings, grant_id)
    assert found["subjects"] == ["Fake message 1", "Fake message 2", "Fake message 3"]
    assert found["failures"] == [] and found["inbox"] == ("synced", None)
    with session_scope(settings.require_database_url()) as db:
        undated = db.scalars(select(Message).where(Message.subject == "Fake message 2")).one()
        # no arrival time from the server: the Date header stands in for it
        assert undated.received_at == datetime(2026, 1, 1, 14, 0, tzinfo=UTC)
