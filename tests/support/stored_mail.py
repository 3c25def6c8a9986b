"""A small account in the rolled-back store for the query tests: a grant with an Inbox, an
Archive and a Drafts folder, and messages written as a sync writes them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.imap import FetchedMessage
from pipeline.models import Folder, Message
from tests.support.store import letter, offline_grant, write_fetched

T = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)  # "now" of every mailbox here


@dataclass
class Mailbox:
    """A grant in the rolled-back store and its folders by name."""

    sessions: sessionmaker[Session]
    conn: Connection
    grant_id: str
    folders: dict[str, str]  # name -> id
    next_uid: int = 1
    _pending: dict[str, list[FetchedMessage]] | None = field(default=None, repr=False)

    def put(self, folder: str, *messages: FetchedMessage) -> None:
        write_fetched(self.sessions, self.grant_id, self.folders[folder], list(messages))

    def add(self, folder: str, subject: str, minutes_ago: float, **kwargs: Any) -> None:
        """One message ``minutes_ago`` before :data:`T` (Date and INTERNALDATE) in ``folder``
        (written at once, or with the others of a :meth:`batch`)."""
        message = self.letter(subject, minutes_ago, **kwargs)
        if self._pending is None:
            self.put(folder, message)
        else:
            self._pending.setdefault(folder, []).append(message)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Write the messages :meth:`add`-ed inside in one batch per folder, as a sync's batch
        (one transaction and one COPY instead of one each: a fixture's mail costs less)."""
        self._pending = {}
        try:
            yield
            pending = self._pending
        finally:
            self._pending = None
        for folder, messages in pending.items():
            self.put(folder, *messages)

    def letter(self, subject: str, minutes_ago: float, **kwargs: Any) -> FetchedMessage:
        """A message at the next UID, ``minutes_ago`` before :data:`T`, to :meth:`put`."""
        self.next_uid += 1
        return letter(self.next_uid, subject, T - timedelta(minutes=minutes_ago), **kwargs)

    def ids(self) -> dict[str, str]:
        """Message id by subject."""
        rows = self.conn.execute(
            select(Message.subject, Message.id).where(Message.grant_id == self.grant_id)
        )
        return {subject: str(id_) for subject, id_ in rows}

    def thread_of(self, subject: str) -> str:
        thread = self.conn.scalar(
            select(Message.thread_id).where(
                Message.grant_id == self.grant_id, Message.subject == subject
            )
        )
        assert thread is not None
        return str(thread)

    def set_metadata(self, subject: str, metadata: dict[str, str]) -> None:
        with self.sessions.begin() as db:
            db.execute(
                update(Message)
                .where(Message.grant_id == self.grant_id, Message.subject == subject)
                .values(metadata_=metadata)
            )


def mailbox(
    sessions: sessionmaker[Session],
    conn: Connection,
    user: str = "reader",
    folders: Sequence[tuple[str, str | None]] = (
        ("INBOX", "inbox"),
        ("Archive", None),
        ("Drafts", "drafts"),
    ),
) -> Mailbox:
    """An empty mailbox with ``folders`` (name, role)."""
    grant_id, ids = offline_grant(sessions, user, [(name, 1) for name, _ in folders])
    with sessions.begin() as db:
        for (_, role), folder_id in zip(folders, ids, strict=True):
            db.execute(update(Folder).where(Folder.id == folder_id).values(role=role))
    names = [name for name, _ in folders]
    return Mailbox(sessions, conn, grant_id, dict(zip(names, ids, strict=True)))
