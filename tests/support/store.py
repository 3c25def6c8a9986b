"""The store alone, for tests: a grant whose server nobody talks to, and fetched messages
written as a sync writes them."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.db import session_scope
from pipeline.imap import FetchedMessage
from pipeline.models import Folder, Grant
from pipeline.sync.store import parse_batch, write_batch


def offline_grant(
    database_url: str, user: str, folders: Sequence[tuple[str, int]] = (("INBOX", 1),)
) -> tuple[str, list[str]]:
    """A grant of ``user@example.org`` on a server never reached, with ``folders`` (name,
    UIDVALIDITY): the grant's id and its folders' ids in that order."""
    with session_scope(database_url) as db:
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
    database_url: str,
    grant_id: str,
    folder_id: str,
    fetched: list[FetchedMessage],
    uidvalidity: int = 1,
) -> None:
    """Parse ``fetched`` and write it into the folder in one transaction, as a sync batch."""
    items, failures = parse_batch(fetched)
    with session_scope(database_url) as db:
        write_batch(
            db,
            grant_id=grant_id,
            folder_id=folder_id,
            uidvalidity=uidvalidity,
            items=items,
            failures=failures,
        )
