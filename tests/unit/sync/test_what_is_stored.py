"""What the sync makes of the messages it fetches, on the fake IMAP session and the rolled-back
store: threads by References then subject (a reply fetched before its parent included), a
stable identity for messages without a Message-ID, and an attachment however deep it sits.

The same messages from real servers are tests/integration/test_initial_sync.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.models import Attachment, Folder, Message, Placement
from tests.support.mail import make_message
from tests.support.sync_account import Account, fake_account

pytestmark = pytest.mark.services

NOW = datetime.now(UTC)


def test_threads_by_references_then_subject(pg_sessions: sessionmaker[Session]) -> None:
    account = fake_account(pg_sessions, batch_size=20)  # one batch, as a first sync fetches
    root = make_message("Plans", message_id="<root@example.test>", date=NOW - timedelta(hours=3))
    reply = make_message(
        "Re: Plans",
        message_id="<reply@example.test>",
        in_reply_to="<root@example.test>",
        date=NOW - timedelta(hours=2),
    )
    # a reply whose parent we never saw, matched by subject
    orphan = make_message(
        "RE: plans", message_id="<orphan@example.test>", date=NOW - timedelta(hours=1)
    )
    unrelated = make_message("Plans for lunch", message_id="<other@example.test>")
    for raw in (reply, root, orphan, unrelated):  # child before parent on purpose
        account.mailbox.deliver("INBOX", raw)
    account.sync()
    with account.sessions() as db:
        thread_of = dict(db.execute(select(Message.message_id_header, Message.thread_id)).all())
    assert thread_of["<root@example.test>"] == thread_of["<reply@example.test>"]
    assert thread_of["<orphan@example.test>"] == thread_of["<root@example.test>"]
    assert thread_of["<other@example.test>"] != thread_of["<root@example.test>"]


def test_messages_without_message_id_get_a_stable_identity(account: Account) -> None:
    account.mailbox.deliver("INBOX", make_message("no id 1", message_id=None))
    account.mailbox.deliver("INBOX", make_message("no id 2", message_id=None))
    account.sync()
    with account.sessions.begin() as db:
        first = dict(db.execute(select(Message.subject, Message.identity_key)).all())
        mine = select(Folder.id).where(Folder.grant_id == account.grant_id)
        db.execute(update(Folder).where(Folder.id.in_(mine)).values(state="syncing"))
        db.execute(delete(Placement).where(Placement.folder_id.in_(mine)))
    account.sync()
    with account.sessions() as db:
        again = dict(db.execute(select(Message.subject, Message.identity_key)).all())
    assert set(first) == {"no id 1", "no id 2"}
    assert first["no id 1"] != first["no id 2"]
    assert again == first


def _nested(depth: int) -> bytes:
    """A message whose attachment sits ``depth`` multiparts deep (a section number that long
    does not fit the attachments table)."""
    inner = (
        b'Content-Type: application/octet-stream; name="x.bin"\r\n'
        b"Content-Disposition: attachment\r\n\r\nxyz\r\n"
    )
    for level in range(depth):
        b = f"level{level}".encode()
        inner = (
            b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b
            + b"\r\nContent-Type: text/plain\r\n\r\nt\r\n--" + b + b"\r\n" + inner
            + b"\r\n--" + b + b"--\r\n"
        )  # fmt: skip
    return b"From: a@example.test\r\nSubject: deep\r\nMessage-ID: <deep@example.test>\r\n" + inner


def test_an_attachment_forty_multiparts_deep_is_stored(account: Account) -> None:
    account.mailbox.deliver("INBOX", _nested(40))
    account.sync()
    with account.sessions() as db:
        (attachment,) = db.scalars(select(Attachment)).all()
        assert attachment.part_path == ".".join(["2"] * 40)
        assert attachment.filename == "x.bin"
