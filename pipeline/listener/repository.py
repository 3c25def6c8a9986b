"""The listener's only queries: which folders of which valid grants to watch (read-only).

The single write a listener ever makes (marking a grant invalid after a refused login) goes
through :meth:`pipeline.grants.repository.GrantRepository.set_status`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.messages.roles import ROLE_PREFERENCE
from pipeline.models import Folder, Grant

WATCHED_ROLES = ("inbox", "sent")


@dataclass(frozen=True)
class WatchRow:
    """One watched folder with what it takes to connect to its grant's server."""

    grant_id: str
    provider: str
    imap_host: str
    imap_port: int
    imap_tls: str
    imap_username: str
    verify_tls: bool
    secrets_sealed: str
    folder_id: str
    role: str
    raw_name: str
    uidvalidity: int | None
    uidnext: int | None
    highestmodseq: int | None


class WatchRepository:
    """Read access for listeners; never commits, never writes."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def watched(self) -> list[WatchRow]:
        """Every valid grant's Inbox and Sent folder (one folder per role).

        Plain rows, not ORM objects: a listener re-reads this for every grant every few
        seconds. Where several folders claim a role, the first by name, then id, wins
        (:data:`~pipeline.messages.roles.ROLE_PREFERENCE`), as in every role lookup.
        """
        rows: Sequence[tuple[object, ...]] = self.session.execute(
            select(
                Grant.id,
                Grant.provider,
                Grant.imap_host,
                Grant.imap_port,
                Grant.imap_tls,
                Grant.imap_username,
                Grant.verify_tls,
                Grant.secrets_sealed,
                Folder.id,
                Folder.role,
                Folder.raw_name,
                Folder.uidvalidity,
                Folder.uidnext,
                Folder.highestmodseq,
            )
            .join(Folder, Folder.grant_id == Grant.id)
            .where(Grant.grant_status == "valid", Folder.role.in_(WATCHED_ROLES))
            .order_by(Grant.created_at, Grant.id, Folder.role, *ROLE_PREFERENCE)
        ).all()
        seen: set[tuple[object, object]] = set()
        picked: list[WatchRow] = []
        for row in rows:
            if (row[0], row[9]) in seen:
                continue
            seen.add((row[0], row[9]))
            picked.append(WatchRow(*row))  # type: ignore[arg-type]
        return picked
