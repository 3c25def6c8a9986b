"""Every query about folders (the sync's, and the folders the API lists, creates, renames and
deletes)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from imap_tools.imap_utf7 import utf7_decode
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from pipeline.messages.placements import PlacementRepository
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

    # --- the folders a person sees and changes (pipeline.folders.service) ---------------------
    def listed(self, grant_id: str) -> list[Folder]:
        """A grant's folders as Nylas lists them: Inbox first, then the other system folders
        (those with a role), then the rest, each group by name."""
        return list(
            self.session.scalars(
                select(Folder)
                .where(Folder.grant_id == grant_id)
                .order_by(
                    # a role-less folder's ``role = 'inbox'`` is NULL, which sorts first in DESC
                    func.coalesce(Folder.role == "inbox", False).desc(),
                    Folder.role.is_(None),
                    Folder.name,
                    Folder.id,
                )
            )
        )

    def find(self, grant_id: str, id_or_name: str) -> Folder | None:
        """A grant's folder by id, or by its name as shown or as the server spells it."""
        if _is_uuid(id_or_name):
            found = self.session.scalar(
                select(Folder).where(Folder.id == id_or_name, Folder.grant_id == grant_id)
            )
            if found is not None:
                return found
        return self.session.scalar(
            select(Folder)
            .where(
                Folder.grant_id == grant_id,
                (Folder.name == id_or_name) | (Folder.raw_name == id_or_name),
            )
            .order_by(Folder.name)
            .limit(1)
        )

    def add_created(self, folder: Folder) -> Folder:
        """Store a folder created on the server (the sync may have found it first)."""
        existing = self.session.scalar(
            select(Folder).where(
                Folder.grant_id == folder.grant_id, Folder.raw_name == folder.raw_name
            )
        )
        if existing is not None:
            return existing
        self.session.add(folder)
        self.session.flush()
        return folder

    def rename_tree(
        self, grant_id: str, old_raw: str, new_raw: str, delimiter: str | None
    ) -> list[Folder]:
        """Rename a folder's row and those of its subfolders (the server renamed them all);
        returns the renamed rows."""
        folders = self.session.scalars(select(Folder).where(Folder.grant_id == grant_id)).all()
        prefix = old_raw + delimiter if delimiter else None
        renamed: list[Folder] = []
        for folder in folders:
            if folder.raw_name == old_raw:
                suffix = ""
            elif prefix and folder.raw_name.startswith(prefix):
                suffix = folder.raw_name[len(old_raw) :]
            else:
                continue
            folder.raw_name = new_raw + suffix
            folder.name = _decoded(folder.raw_name)
            renamed.append(folder)
        self.session.flush()
        return renamed

    def delete(self, folder_id: str) -> None:
        """Delete a folder and its placements; messages left in no folder go with it."""
        orphans = select(Placement.message_id).where(Placement.folder_id == folder_id)
        message_ids = [str(m) for m in self.session.scalars(orphans)]
        self.session.execute(delete(Folder).where(Folder.id == folder_id))
        placements = PlacementRepository(self.session)
        for message_id in message_ids:
            placements.delete_if_unplaced(message_id)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _decoded(raw_name: str) -> str:
    return "INBOX" if raw_name.upper() == "INBOX" else utf7_decode(raw_name.encode())
