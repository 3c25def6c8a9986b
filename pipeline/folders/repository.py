"""Every query about folders (the sync's, and the folders the API lists, creates, renames and
deletes)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from imap_tools.imap_utf7 import utf7_decode
from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.orm import Session

from pipeline.messages.placements import PlacementRepository
from pipeline.messages.roles import folder_with_role
from pipeline.models import Folder, Message, Placement, SyncFailure
from pipeline.pages import is_uuid


@dataclass(frozen=True)
class FolderCounts:
    """How much of a folder is stored."""

    folder_id: str
    stored: int
    failed: int


@dataclass(frozen=True)
class FolderTotals:
    """Messages and unread messages of one folder."""

    total: int
    unread: int


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
        """A grant's folder with ``role`` (the first by name, then id, if several claim it:
        :func:`pipeline.messages.roles.folder_with_role`, which every role lookup asks)."""
        return folder_with_role(self.session, grant_id, role)

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
        if is_uuid(id_or_name):
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

    def totals(self, folder_ids: Sequence[str]) -> dict[str, FolderTotals]:
        """Stored and unread message counts per folder (current UIDVALIDITY only)."""
        if not folder_ids:
            return {}
        rows = self.session.execute(
            select(
                Placement.folder_id,
                func.count(),
                func.count().filter(Message.unread.is_(True)),
            )
            .join(Message, Message.id == Placement.message_id)
            .join(Folder, Folder.id == Placement.folder_id)
            .where(Placement.folder_id.in_(folder_ids), Placement.uidvalidity == Folder.uidvalidity)
            .group_by(Placement.folder_id)
        )
        return {str(fid): FolderTotals(int(t), int(u)) for fid, t, u in rows}


def resolve_folder_ids(
    conn: Connection, grant_id: str, ids_or_names: Sequence[str]
) -> list[str | None]:
    """The id of the grant's folder each value names, as ``FolderRepository.find`` finds it
    (:mod:`pipeline.folders.repository`: an id first, else the first by name whose name or
    server name it is; None: no such folder), in one query for them all (no ORM objects)."""
    values = list(dict.fromkeys(ids_or_names))
    ids = [v for v in values if is_uuid(v)]
    folders = Folder.__table__
    matches = (folders.c.name.in_(values)) | (folders.c.raw_name.in_(values))
    if ids:
        matches = matches | folders.c.id.in_(ids)
    rows = conn.execute(
        select(folders.c.id, folders.c.name, folders.c.raw_name)
        .where(folders.c.grant_id == grant_id, matches)
        .order_by(folders.c.name)
    )
    by_id: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for folder_id, name, raw_name in rows:
        by_id[str(folder_id)] = str(folder_id)
        for key in (name, raw_name):
            # the first by name, as FolderRepository.find's LIMIT 1
            by_name.setdefault(key, str(folder_id))
    out: list[str | None] = []
    for value in ids_or_names:
        found = by_id.get(str(uuid.UUID(value))) if is_uuid(value) else None
        out.append(found or by_name.get(value))
    return out


def _decoded(raw_name: str) -> str:
    return "INBOX" if raw_name.upper() == "INBOX" else utf7_decode(raw_name.encode())
