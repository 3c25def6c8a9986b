"""The listener's only queries: which folders of which valid grants to watch (read-only).

The single write a listener ever makes (marking a grant invalid after a refused login) goes
through :meth:`pipeline.grants.repository.GrantRepository.set_status`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.models import Folder, Grant

WATCHED_ROLES = ("inbox", "sent")


class WatchRepository:
    """Read access for listeners; never commits, never writes."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def watched(self) -> Sequence[tuple[Grant, Folder]]:
        """Every valid grant with its Inbox and Sent folder (one folder per role).

        Where several folders claim a role, the first by name wins, as in
        :meth:`pipeline.folders.repository.FolderRepository.by_role`.
        """
        rows = self.session.execute(
            select(Grant, Folder)
            .join(Folder, Folder.grant_id == Grant.id)
            .where(Grant.grant_status == "valid", Folder.role.in_(WATCHED_ROLES))
            .order_by(Grant.created_at, Grant.id, Folder.role, Folder.name)
        ).all()
        seen: set[tuple[str, str | None]] = set()
        picked: list[tuple[Grant, Folder]] = []
        for grant, folder in rows:
            if (grant.id, folder.role) in seen:
                continue
            seen.add((grant.id, folder.role))
            picked.append((grant, folder))
        return picked
