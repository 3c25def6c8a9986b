"""A grant on the scriptable fake IMAP session (:mod:`tests.support.fake_session`) with the real
store in a rolled-back transaction (:mod:`tests.support.rollback`): the sync state machine's
tests (tests/unit/sync) drive it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.config import Settings, SyncSettings
from pipeline.imap import ImapSession
from pipeline.models import Folder, Grant, Message
from pipeline.sync.plan import discover_folders
from pipeline.sync.run import SyncOutcome, sync_folder, sync_grant_with
from pipeline.webhooks.models import OutboxEvent
from tests.support.fake_session import FakeMailbox
from tests.support.mail import make_message
from tests.support.rollback import offline_settings
from tests.support.store import offline_grant


@dataclass
class Account:
    """A grant on a fake server, and the way to sync it."""

    settings: Settings
    sessions: sessionmaker[Session]
    grant_id: str
    mailbox: FakeMailbox

    def sync(self, now: datetime | None = None) -> list[SyncOutcome]:
        """Discover and sync every folder, as ``sync_grant_inline`` does."""
        return sync_grant_with(
            self.sessions, self.settings, self.grant_id, lambda *_: self.mailbox.session(), now=now
        )

    def folder(self, raw_name: str) -> Folder:
        with self.sessions() as db:
            row = db.scalars(
                select(Folder).where(Folder.grant_id == self.grant_id, Folder.raw_name == raw_name)
            ).one()
            db.expunge(row)
            return row

    def sync_folder(self, raw_name: str, **kwargs: Any) -> SyncOutcome:
        """One run of one folder on a fresh session (discovered first)."""
        imap: ImapSession = self.mailbox.session()  # type: ignore[assignment]
        with self.sessions.begin() as db:
            grant = db.get(Grant, self.grant_id)
            assert grant is not None
            discover_folders(db, grant, imap.list_folders(), max_folders=10)
        folder_id = self.folder(raw_name).id
        return sync_folder(self.sessions, self.settings, imap, self.grant_id, folder_id, **kwargs)

    def grant(self) -> Grant:
        with self.sessions() as db:
            row = db.get(Grant, self.grant_id)
            assert row is not None
            db.expunge(row)
            return row

    def subjects(self) -> list[str]:
        with self.sessions() as db:
            return sorted(
                db.scalars(select(Message.subject).where(Message.grant_id == self.grant_id))
            )

    def message_ids(self) -> set[str]:
        with self.sessions() as db:
            return set(db.scalars(select(Message.id).where(Message.grant_id == self.grant_id)))

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        with self.sessions() as db:
            rows = db.execute(
                select(OutboxEvent.type, OutboxEvent.object).order_by(OutboxEvent.seq)
            )
            return [(t, dict(o)) for t, o in rows]

    def types(self) -> list[str]:
        return [t for t, _ in self.events()]


def fake_account(
    sessions: sessionmaker[Session], *, orphan_grace_s: int = 0, batch_size: int = 2
) -> Account:
    """A grant whose server has an empty INBOX and Sent, synced in batches of ``batch_size``
    messages (two: runs of a few messages cross batches)."""
    grant_id, _ = offline_grant(sessions, "fake", folders=())
    mailbox = FakeMailbox()
    mailbox.add_folder("INBOX", role="inbox")
    mailbox.add_folder("Sent", role="sent")
    sync = SyncSettings(batch_size=batch_size, orphan_grace_s=orphan_grace_s)
    settings = offline_settings(sync=sync)
    return Account(settings, sessions, grant_id, mailbox)


def deliver(account: Account, subject: str, **kwargs: Any) -> int:
    return account.mailbox.deliver("INBOX", make_message(subject), **kwargs)
