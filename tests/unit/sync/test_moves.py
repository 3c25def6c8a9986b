"""Moves and copies between folders on the fake IMAP session and the rolled-back store: a
message is one row however many folders hold it, keeps its id when a client moves it (to a
folder synced before or after its old one), and goes only when no folder has held it for the
orphan grace period.

How real servers report a move (MOVE, COPY + EXPUNGE on Courier) is
tests/integration/test_incremental_sync.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.models import Folder, Message, Placement
from tests.support.mail import make_message
from tests.support.sync_account import Account, deliver, fake_account

pytestmark = pytest.mark.services


@pytest.fixture
def account(pg_sessions: sessionmaker[Session]) -> Account:
    """A grant whose server also has an Archive (synced after the INBOX, by name)."""
    box = fake_account(pg_sessions)
    box.mailbox.add_folder("Archive")
    return box


def holders(account: Account, message_id: str) -> list[str]:
    """The names of the folders holding a copy of the message."""
    with account.sessions() as db:
        return sorted(
            db.scalars(
                select(Folder.name)
                .join(Placement, Placement.folder_id == Folder.id)
                .where(Placement.message_id == message_id)
            )
        )


def updated(account: Account) -> list[dict[str, object]]:
    return [o for t, o in account.events() if t == "message.updated"]


@pytest.mark.parametrize(("source", "target"), [("INBOX", "Archive"), ("Archive", "INBOX")])
def test_a_move_keeps_the_id_and_is_message_updated(
    account: Account, source: str, target: str
) -> None:
    uid = deliver(account, "mover")
    if source == "Archive":
        uid = account.mailbox.move("INBOX", uid, "Archive")
    account.sync()
    (message_id,) = account.message_ids()
    assert holders(account, message_id) == [source]

    account.mailbox.move(source, uid, target)
    account.sync()  # no grace: the move is seen within one run of every folder

    assert account.message_ids() == {message_id}
    assert holders(account, message_id) == [target]
    assert "message.created" not in account.types()
    assert "message.deleted" not in account.types()
    target_id = account.folder(target).id
    assert updated(account) and updated(account)[-1]["folders"] == [target_id]


def test_a_copy_is_one_message_in_two_folders_unread_while_one_copy_is(
    account: Account,
) -> None:
    uid = deliver(account, "copied", flags=["\\Seen"])
    account.sync()
    (message_id,) = account.message_ids()

    copy = account.mailbox.move("INBOX", uid, "Archive", expunge=False)
    account.mailbox.set_flags("Archive", copy, [])
    account.sync()

    assert account.message_ids() == {message_id}
    assert holders(account, message_id) == ["Archive", "INBOX"]
    with account.sessions() as db:
        assert db.scalar(select(Message.unread).where(Message.id == message_id)) is True
    account.mailbox.set_flags("Archive", copy, ["\\Seen"])
    account.sync()
    with account.sessions() as db:
        assert db.scalar(select(Message.unread).where(Message.id == message_id)) is False


def test_an_orphan_waits_out_its_grace_and_a_copy_back_within_it_keeps_it(
    pg_sessions: sessionmaker[Session],
) -> None:
    account = fake_account(pg_sessions, orphan_grace_s=3600)
    account.mailbox.add_folder("Archive")
    now = datetime.now(UTC)
    returning = make_message("comes back")
    gone = deliver(account, "gone")
    back = account.mailbox.deliver("INBOX", returning)
    account.sync(now)
    ids = account.message_ids()

    account.mailbox.expunge("INBOX", gone)
    account.mailbox.expunge("INBOX", back)
    account.sync(now)
    assert account.message_ids() == ids  # orphaned, not deleted: a move could re-place them
    assert "message.deleted" not in account.types()

    account.mailbox.deliver("Archive", returning)  # another client puts it back, later
    account.sync(now + timedelta(minutes=30))  # within the grace: re-placed, same id
    account.sync(now + timedelta(hours=2))  # past it: the one no folder holds goes

    assert account.subjects() == ["comes back"]
    assert account.message_ids() < ids
    with account.sessions() as db:
        assert db.scalars(select(Message.orphaned_at)).all() == [None]
    deleted = [o["id"] for t, o in account.events() if t == "message.deleted"]
    assert deleted == list(ids - account.message_ids())
