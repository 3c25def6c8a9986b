"""The store alone, for tests: a grant whose server nobody talks to, and fetched messages
written as a sync writes them.

``store`` is either a database URL (a test's own database: each helper commits a transaction
of its own) or a ``sessionmaker`` (the rolled-back fixture of :mod:`tests.support.rollback`,
where that commit is a savepoint release)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime

from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import session_scope
from pipeline.imap import FetchedMessage
from pipeline.models import Folder, Grant
from pipeline.sync.store import parse_batch, write_batch

Store = str | sessionmaker[Session]


@contextmanager
def unit_of_work(store: Store) -> Iterator[Session]:
    """A session whose transaction commits on success, on either kind of ``store``."""
    if isinstance(store, str):
        with session_scope(store) as db:
            yield db
    else:
        with store.begin() as db:
            yield db


def offline_grant(
    store: Store, user: str, folders: Sequence[tuple[str, int]] = (("INBOX", 1),)
) -> tuple[str, list[str]]:
    """A grant of ``user@example.org`` on a server never reached, with ``folders`` (name,
    UIDVALIDITY): the grant's id and its folders' ids in that order."""
    with unit_of_work(store) as db:
        grant = Grant(
            email=f"{user}@example.org",
            provider="generic",
            imap_host="127.0.0.1",
            imap_port=143,
            imap_tls="plain",
            imap_username=user,
            secrets_sealed="x",
        )
        db.add(grant)
        db.flush()
        rows = [
            Folder(grant_id=grant.id, name=name, raw_name=name, uidvalidity=uidvalidity)
            for name, uidvalidity in folders
        ]
        db.add_all(rows)
        db.flush()
        return grant.id, [row.id for row in rows]


def write_fetched(
    store: Store,
    grant_id: str,
    folder_id: str,
    fetched: list[FetchedMessage],
    uidvalidity: int = 1,
) -> None:
    """Parse ``fetched`` and write it into the folder in one transaction, as a sync batch."""
    items, failures = parse_batch(fetched)
    with unit_of_work(store) as db:
        write_batch(
            db,
            grant_id=grant_id,
            folder_id=folder_id,
            uidvalidity=uidvalidity,
            items=items,
            failures=failures,
        )


def letter(
    uid: int,
    subject: str,
    at: datetime,
    *,
    sender: str = "Ann <ann@example.org>",
    to: str = "Bob <bob@example.org>",
    cc: str | None = None,
    bcc: str | None = None,
    flags: Sequence[str] = (),
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    attachment: bool = False,
    internaldate: datetime | None = None,
) -> FetchedMessage:
    """A message as a server returns it at ``uid``: Date ``at`` (and INTERNALDATE, unless
    given), its Message-ID ``<uid.crc32(subject)@example.org>`` unless given; References is
    ``in_reply_to`` unless given."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    if bcc:
        msg["Bcc"] = bcc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(at)
    msg["Message-ID"] = message_id or f"<{uid}.{zlib.crc32(subject.encode())}@example.org>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references or in_reply_to:
        msg["References"] = references or in_reply_to
    msg.set_content(f"Body of {subject}")
    if attachment:
        msg.add_attachment(b"%PDF-1.4 x", maintype="application", subtype="pdf", filename="a.pdf")
    raw = msg.as_bytes()
    return FetchedMessage(
        uid=uid,
        size=len(raw),
        internaldate=internaldate or at,
        flags=tuple(flags),
        raw=raw,
    )
