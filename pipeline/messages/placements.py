"""Where a message sits on the server, as Postgres records it, and the changes the engine's own
write-back makes to that record (:mod:`pipeline.messages.service`) after the server accepted
them; nothing here commits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from pipeline.models import Folder, Message, Placement


@dataclass(frozen=True)
class Location:
    """Where a message sits on the server right now."""

    folder_id: str
    raw_name: str
    uidvalidity: int
    uid: int
    role: str | None


class PlacementRepository:
    """The placements of messages: read, moved, removed; never commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def locations(self, message_id: str) -> list[Location]:
        """Current placements of a message (UIDs of the folder's current UIDVALIDITY), Inbox
        first."""
        rows = self.session.execute(
            select(Folder.id, Folder.raw_name, Placement.uidvalidity, Placement.uid, Folder.role)
            .join(Folder, Folder.id == Placement.folder_id)
            .where(Placement.message_id == message_id, Placement.uidvalidity == Folder.uidvalidity)
            .order_by((Folder.role == "inbox").desc(), Folder.raw_name)
        )
        return [Location(str(f), str(r), int(v), int(u), role) for f, r, v, u, role in rows]

    def set_flags(self, message: Message, flags: Sequence[str]) -> None:
        """Store a message's flags and the unread/starred they imply, on it and its
        placements."""
        message.flags = list(flags)
        message.unread = "\\Seen" not in flags
        message.starred = "\\Flagged" in flags
        self.session.execute(
            update(Placement).where(Placement.message_id == message.id).values(flags=list(flags))
        )

    def move(
        self,
        *,
        message_id: str,
        source: Location,
        target_folder_id: str,
        target_uidvalidity: int | None,
        target_uid: int | None,
        flags: Sequence[str],
    ) -> None:
        """A message left ``source``; record where it landed when the server said so
        (COPYUID). Without COPYUID the next sync of the target folder finds the copy by
        identity and places it."""
        self.remove(source)
        if target_uid is not None and target_uidvalidity is not None:
            stmt = pg_insert(Placement).values(
                folder_id=target_folder_id,
                uid=target_uid,
                uidvalidity=target_uidvalidity,
                message_id=message_id,
                flags=list(flags),
            )
            self.session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[Placement.folder_id, Placement.uidvalidity, Placement.uid],
                    set_={"message_id": message_id, "flags": list(flags)},
                )
            )

    def remove(self, location: Location) -> None:
        """Forget one placement (the copy was expunged)."""
        self.session.execute(
            delete(Placement).where(
                Placement.folder_id == location.folder_id,
                Placement.uidvalidity == location.uidvalidity,
                Placement.uid == location.uid,
            )
        )

    def delete_if_unplaced(self, message_id: str) -> bool:
        """Delete a message that no folder holds any more; True if it was deleted."""
        placed = self.session.scalar(select(exists().where(Placement.message_id == message_id)))
        if placed:
            return False
        self.session.execute(delete(Message).where(Message.id == message_id))
        return True
