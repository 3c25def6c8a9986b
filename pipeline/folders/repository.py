"""Every query about folders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pipeline.models import Folder, Placement, SyncFailure


@dataclass(frozen=True)
class FolderCounts:
    """How much of a folder is stored."""

    folder_id: str
    stored: int
    failed: int


class FolderRepository:
    """Folders table access; never commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, folder_id: str) -> Folder | None:
        """A folder by id."""
        return self.session.get(Folder, folder_id)

    def get_for_update(self, folder_id: str) -> Folder | None:
        """A folder, row-locked until the transaction ends."""
        return self.session.scalar(select(Folder).where(Folder.id == folder_id).with_for_update())

    def for_grant(self, grant_id: str) -> Sequence[Folder]:
        """A grant's folders, Inbox first, then by name."""
        return self.session.scalars(
            select(Folder)
            .where(Folder.grant_id == grant_id)
            .order_by((Folder.role == "inbox").desc(), (Folder.role == "sent").desc(), Folder.name)
        ).all()

    def by_name(self, grant_id: str, name: str) -> Folder | None:
        """A grant's folder with exactly that name, or None."""
        return self.session.scalar(
            select(Folder).where(Folder.grant_id == grant_id, Folder.name == name).limit(1)
        )

    def by_role(self, grant_id: str, role: str) -> Folder | None:
        """A grant's folder with ``role`` (the first by name if several claim it)."""
        return self.session.scalar(
            select(Folder)
            .where(Folder.grant_id == grant_id, Folder.role == role)
            .order_by(Folder.name)
            .limit(1)
        )

    def counts(self, grant_id: str) -> dict[str, FolderCounts]:
        """Stored and failed message counts per folder of a grant."""
        stored = dict(
            self.session.execute(
                select(Placement.folder_id, func.count())
                .join(Folder, Folder.id == Placement.folder_id)
                .where(Folder.grant_id == grant_id, Placement.uidvalidity == Folder.uidvalidity)
                .group_by(Placement.folder_id)
            ).all()
        )
        failed = dict(
            self.session.execute(
                select(SyncFailure.folder_id, func.count())
                .where(SyncFailure.grant_id == grant_id)
                .group_by(SyncFailure.folder_id)
            ).all()
        )
        ids = set(stored) | set(failed)
        return {
            fid: FolderCounts(str(fid), int(stored.get(fid, 0)), int(failed.get(fid, 0)))
            for fid in ids
        }

    def set_state(self, folder_id: str, state: str, detail: str | None = None) -> None:
        """Set a folder's sync state and its human-readable reason."""
        self.session.execute(
            update(Folder).where(Folder.id == folder_id).values(state=state, state_detail=detail)
        )

    def shrink_plan(self, folder_id: str, by: int) -> None:
        """Planned messages that vanished before we fetched them no longer count."""
        if by:
            self.session.execute(
                update(Folder)
                .where(Folder.id == folder_id)
                .values(to_sync=func.greatest(Folder.to_sync - by, 0))
            )
