"""The store alone, for tests: a grant whose server nobody talks to, and fetched messages
written as a sync writes them.

``store`` is either a database URL (a test's own database: each helper commits a transaction
of its own) or a ``sessionmaker`` (the rolled-back fixture of :mod:`tests.support.rollback`,
where that commit is a savepoint release)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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
