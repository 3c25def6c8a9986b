"""Every query about messages, placements, attachments, threads and sync failures."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Table, Text, bindparam, cast, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from pipeline.models import Attachment, Folder, Message, Placement, SyncFailure, Thread
from pipeline.pages import is_uuid


def text_key(value: str) -> str:
    """The bounded key the indexes of migration 0501 hold for a text value of any length:
    what Postgres' ``md5(text)`` gives (hex MD5 of the UTF-8 bytes). Lookups compare these
    keys, then the values themselves (a collision never joins two threads)."""
    return hashlib.md5(value.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


SEEN = "\\Seen"
FLAGGED = "\\Flagged"


def combined_flags(copies: Sequence[Sequence[str]]) -> tuple[bool, bool, list[str]]:
    """The message-level ``(unread, starred, flags)`` of a message held in several folders,
    from each copy's IMAP flags: unread if any copy is unseen (mail someone has not read in one
    folder is not read), starred if any copy is flagged (a star is never lost to another copy);
    ``flags`` is every copy's flags, ``\\Seen`` only when every copy has it, sorted. The
    same whatever the order the copies were written in.
    """
    unread = any(SEEN not in copy for copy in copies)
    starred = any(FLAGGED in copy for copy in copies)
    union = {flag for copy in copies for flag in copy}
    if unread:
        union.discard(SEEN)
    return unread, starred, sorted(union)


class MessageRepository:
    """Message-side tables; never commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # --- one message --------------------------------------------------------------------------
    def get(self, grant_id: str, message_id: str) -> Message | None:
        """One message of a grant (None when absent or not a UUID)."""
        if not is_uuid(message_id):
            return None
        return self.session.scalar(
            select(Message).where(Message.id == message_id, Message.grant_id == grant_id)
        )

    def get_many(self, grant_id: str, message_ids: Sequence[str]) -> dict[str, Message]:
        """The grant's messages among ``message_ids``, by their id in lower case (an id that is
        not a UUID matches none)."""
        ids = [i.lower() for i in message_ids if is_uuid(i)]
        if not ids:
            return {}
        found = self.session.scalars(
            select(Message).where(Message.grant_id == grant_id, Message.id.in_(ids))
        )
        return {m.id.lower(): m for m in found}

    def latest_with_header(self, grant_id: str, message_id_header: str) -> Message | None:
        """The grant's latest message whose Message-ID header is ``message_id_header``."""
        return self.session.scalar(
            select(Message)
            .where(Message.grant_id == grant_id, Message.message_id_header == message_id_header)
            .order_by(Message.date.desc())
            .limit(1)
        )

    # --- locking ------------------------------------------------------------------------------
    def lock_grant(self, grant_id: str) -> None:
        """Serialize message writes of one grant until the transaction ends.

        Concurrent chunks of the same grant would otherwise race on identity and thread
        assignment; the lock is held only for the short write phase, never during IMAP I/O.
        """
        self.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": "grant:" + grant_id},
        )

    # --- identity -----------------------------------------------------------------------------
    def ids_by_identity(
        self, grant_id: str, keys: Iterable[str]
    ) -> dict[str, tuple[str, str | None]]:
        """Existing messages of a grant by identity key: key -> (id, thread_id)."""
        keys = list(set(keys))
        if not keys:
            return {}
        rows = self.session.execute(
            select(Message.identity_key, Message.id, Message.thread_id).where(
                Message.grant_id == grant_id, Message.identity_key.in_(keys)
            )
        )
        return {key: (mid, tid) for key, mid, tid in rows}

    def ids_by_header_hash(self, grant_id: str, hashes: Iterable[str]) -> dict[str, list[str]]:
        """Existing messages of a grant by header hash (for re-mapping after a reindex)."""
        hashes = list(set(hashes))
        if not hashes:
            return {}
        out: dict[str, list[str]] = {}
        for h, mid in self.session.execute(
            select(Message.header_hash, Message.id).where(
                Message.grant_id == grant_id, Message.header_hash.in_(hashes)
            )
        ):
            out.setdefault(h, []).append(mid)
        return out

    # --- bulk writes --------------------------------------------------------------------------
    def _copy(self, model: type[Any], rows: Sequence[Mapping[str, Any]]) -> None:
        """Write rows with COPY: several times cheaper than INSERT, in Python and in Postgres.

        Rows are keyed by the model's attribute names, all alike (the first row's keys name
        the columns). As an ORM insert would, a column left out gets its Python-side default
        (server defaults apply by themselves); JSONB values are wrapped here. Raises psycopg
        errors as they come (a conflict included).
        """
        names = list(rows[0])
        defaults: dict[str, Any] = {}  # column -> a function of nothing giving its default
        for key, column in model.__mapper__.columns.items():
            default = column.default
            if key in rows[0] or default is None or column.server_default is not None:
                continue
            arg = default.arg  # type: ignore[attr-defined]
            defaults[key] = (lambda f=arg: f(None)) if default.is_callable else (lambda v=arg: v)
        names += list(defaults)
        columns = [model.__mapper__.columns[name] for name in names]
        wrap = [isinstance(c.type, JSONB) for c in columns]
        quoted = ", ".join(f'"{c.name}"' for c in columns)
        raw = self.session.connection().connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        table = model.__tablename__
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
            for row in rows:
                values = [row[n] if n in row else defaults[n]() for n in names]
                copy.write_row(
                    [
                        Jsonb(v) if w and v is not None else v
                        for v, w in zip(values, wrap, strict=True)
                    ]
                )

    def _copy_or(self, model: type[Any], rows: Sequence[Mapping[str, Any]], fallback: Any) -> None:
        """COPY in a savepoint; if a row conflicts (a race the grant lock should prevent, or
        a re-run), roll back to it and run ``fallback`` (an INSERT ... ON CONFLICT) instead."""
        try:
            with self.session.begin_nested():
                self._copy(model, rows)
        except psycopg.errors.UniqueViolation:
            self.session.execute(fallback, list(rows))

    def insert_messages(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert new messages (identity conflicts are left alone: running twice is harmless)."""
        if rows:
            self._copy_or(
                Message,
                rows,
                pg_insert(Message).on_conflict_do_nothing(constraint="uq_messages_grant_identity"),
            )

    def insert_attachments(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert attachment metadata rows (ids are new: nothing can conflict)."""
        if rows:
            self._copy(Attachment, rows)

    def upsert_placements(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record where messages sit; a UID already known is re-pointed (idempotent)."""
        if not rows:
            return
        stmt = pg_insert(Placement)
        self._copy_or(
            Placement,
            rows,
            stmt.on_conflict_do_update(
                index_elements=[Placement.folder_id, Placement.uidvalidity, Placement.uid],
                set_={
                    "message_id": stmt.excluded.message_id,
                    "flags": stmt.excluded.flags,
                    "modseq": stmt.excluded.modseq,
                },
            ),
        )

    def placed_uids(
        self, folder_id: str, uidvalidity: int, uids: tuple[int, int | None] = (0, None)
    ) -> set[int]:
        """UIDs of a folder already stored under this UIDVALIDITY (the sync checkpoint), in
        ``uids`` = (lowest, highest or None): a range task or an incremental run reads only
        its part of a large folder."""
        return self._uids(Placement, folder_id, uidvalidity, uids)

    def _uids(
        self, model: Any, folder_id: str, uidvalidity: int, uids: tuple[int, int | None]
    ) -> set[int]:
        lo, hi = uids
        query = select(model.uid).where(
            model.folder_id == folder_id, model.uidvalidity == uidvalidity, model.uid >= lo
        )
        if hi is not None:
            query = query.where(model.uid <= hi)
        return set(self.session.scalars(query))

    def count_placed(self, folder_id: str, uidvalidity: int) -> int:
        """How many messages of a folder are stored under this UIDVALIDITY."""
        return int(
            self.session.scalar(
                select(func.count()).where(
                    Placement.folder_id == folder_id, Placement.uidvalidity == uidvalidity
                )
            )
            or 0
        )

    def drop_other_placements(self, folder_id: str, uidvalidity: int) -> list[str]:
        """Forget a folder's placements under any other UIDVALIDITY; returns their messages."""
        result = self.session.execute(
            delete(Placement)
            .where(Placement.folder_id == folder_id, Placement.uidvalidity != uidvalidity)
            .returning(Placement.message_id)
        )
        return sorted({str(mid) for (mid,) in result})

    def delete_unplaced(self, grant_id: str, message_ids: Iterable[str]) -> list[str]:
        """Delete those of ``message_ids`` that no folder holds any more; returns their ids."""
        ids = list(set(message_ids))
        if not ids:
            return []
        still_placed = select(Placement.message_id).where(Placement.message_id == Message.id)
        result = self.session.execute(
            delete(Message)
            .where(Message.grant_id == grant_id, Message.id.in_(ids), ~still_placed.exists())
            .returning(Message.id)
        )
        return sorted(str(mid) for (mid,) in result)

    def current_folder_ids(self, message_ids: Iterable[str]) -> dict[str, list[str]]:
        """Folders holding each message, in each folder's current view (not a reindex's)."""
        ids = list(set(message_ids))
        out: dict[str, list[str]] = {mid: [] for mid in ids}
        if not ids:
            return out
        rows = self.session.execute(
            select(Placement.message_id, Placement.folder_id)
            .join(Folder, Folder.id == Placement.folder_id)
            .where(Placement.message_id.in_(ids), Placement.uidvalidity == Folder.uidvalidity)
            .distinct()
        ).all()
        for mid, fid in rows:
            out[str(mid)].append(str(fid))
        return out

    def with_attachments(
        self, message_ids: Iterable[str]
    ) -> list[tuple[Message, list[Attachment]]]:
        """Messages and their attachment rows."""
        ids = list(set(message_ids))
        if not ids:
            return []
        messages = self.session.scalars(select(Message).where(Message.id.in_(ids))).all()
        atts: dict[str, list[Attachment]] = {}
        for att in self.session.scalars(select(Attachment).where(Attachment.message_id.in_(ids))):
            atts.setdefault(att.message_id, []).append(att)
        return [(m, atts.get(m.id, [])) for m in messages]

    def placements_of(
        self, folder_id: str, uidvalidity: int, uids: Iterable[int] | None = None
    ) -> dict[int, tuple[str, list[str]]]:
        """A folder's placements under a UIDVALIDITY (only ``uids``, when given):
        uid -> (message id, flags)."""
        query = select(Placement.uid, Placement.message_id, Placement.flags).where(
            Placement.folder_id == folder_id, Placement.uidvalidity == uidvalidity
        )
        if uids is not None:
            query = query.where(Placement.uid.in_(list(uids)))
        rows = self.session.execute(query).all()
        return {int(uid): (str(mid), list(flags)) for uid, mid, flags in rows}

    def set_placement_flags(
        self, folder_id: str, uidvalidity: int, uid: int, flags: Sequence[str], modseq: int | None
    ) -> None:
        """Record a placement's new flags."""
        self.session.execute(
            update(Placement)
            .where(
                Placement.folder_id == folder_id,
                Placement.uidvalidity == uidvalidity,
                Placement.uid == uid,
            )
            .values(flags=list(flags), modseq=modseq)
        )

    def refresh_flags(self, message_ids: Iterable[str]) -> list[str]:
        """Recompute the messages' ``unread``/``starred``/``flags`` from their copies in every
        folder's current view (:func:`combined_flags`); a message in no folder is left as it
        is. Returns the ids whose flags changed."""
        ids = sorted(set(message_ids))
        if not ids:
            return []
        copies: dict[str, list[list[str]]] = {}
        rows = self.session.execute(
            select(Placement.message_id, Placement.flags)
            .join(Folder, Folder.id == Placement.folder_id)
            .where(Placement.message_id.in_(ids), Placement.uidvalidity == Folder.uidvalidity)
        )
        for mid, flags in rows:
            copies.setdefault(str(mid), []).append(list(flags or []))
        if not copies:
            return []
        stored = {
            str(mid): (bool(unread), bool(starred), sorted(flags or []))
            for mid, unread, starred, flags in self.session.execute(
                select(Message.id, Message.unread, Message.starred, Message.flags).where(
                    Message.id.in_(list(copies))
                )
            )
        }
        changed: list[str] = []
        for mid in sorted(copies):
            combined = combined_flags(copies[mid])
            if mid not in stored or stored[mid] == combined:
                continue
            unread, starred, flags = combined
            self.session.execute(
                update(Message)
                .where(Message.id == mid)
                .values(flags=flags, unread=unread, starred=starred, updated_at=func.now())
            )
            changed.append(mid)
        return changed

    def drop_placements(self, folder_id: str, uidvalidity: int, uids: Iterable[int]) -> list[str]:
        """Forget expunged UIDs; returns the messages they pointed at."""
        uid_list = list(uids)
        if not uid_list:
            return []
        result = self.session.execute(
            delete(Placement)
            .where(
                Placement.folder_id == folder_id,
                Placement.uidvalidity == uidvalidity,
                Placement.uid.in_(uid_list),
            )
            .returning(Placement.message_id)
        )
        return sorted({str(mid) for (mid,) in result})

    def held_by_folders(self, folder_ids: Iterable[str]) -> list[str]:
        """The messages placed in any of ``folder_ids`` (any UIDVALIDITY)."""
        ids = list(set(folder_ids))
        if not ids:
            return []
        rows = self.session.scalars(
            select(Placement.message_id).where(Placement.folder_id.in_(ids)).distinct()
        )
        return sorted(str(m) for m in rows)

    def unplaced(self, message_ids: Iterable[str]) -> list[str]:
        """Those of ``message_ids`` that no folder holds any more."""
        ids = list(set(message_ids))
        if not ids:
            return []
        still_placed = select(Placement.message_id).where(Placement.message_id == Message.id)
        return sorted(
            str(m)
            for m in self.session.scalars(
                select(Message.id).where(Message.id.in_(ids), ~still_placed.exists())
            )
        )

    def mark_orphaned(self, message_ids: Iterable[str], when: datetime) -> None:
        """Note when messages lost their last placement (a move may re-place them soon)."""
        ids = list(message_ids)
        if ids:
            self.session.execute(
                update(Message)
                .where(Message.id.in_(ids), Message.orphaned_at.is_(None))
                .values(orphaned_at=when)
            )

    def clear_orphaned(self, message_ids: Iterable[str]) -> list[str]:
        """Messages found again (moved): no longer orphans; returns those that were."""
        ids = list(message_ids)
        if not ids:
            return []
        result = self.session.execute(
            update(Message)
            .where(Message.id.in_(ids), Message.orphaned_at.is_not(None))
            .values(orphaned_at=None)
            .returning(Message.id)
        )
        return [str(m) for (m,) in result]

    def expired_orphans(self, grant_id: str, before: datetime) -> list[str]:
        """Orphans of a grant whose grace period is over, still unplaced."""
        still_placed = select(Placement.message_id).where(Placement.message_id == Message.id)
        return [
            str(m)
            for m in self.session.scalars(
                select(Message.id).where(
                    Message.grant_id == grant_id,
                    Message.orphaned_at <= before,
                    ~still_placed.exists(),
                )
            )
        ]

    # --- failures -----------------------------------------------------------------------------
    def failed_uids(
        self, folder_id: str, uidvalidity: int, uids: tuple[int, int | None] = (0, None)
    ) -> set[int]:
        """UIDs that could not be stored (recorded, skipped), in ``uids`` as for
        :meth:`placed_uids`."""
        return self._uids(SyncFailure, folder_id, uidvalidity, uids)

    def failures_of(self, grant_id: str) -> list[tuple[SyncFailure, str]]:
        """A grant's recorded failures with their folder's name, oldest first."""
        rows = self.session.execute(
            select(SyncFailure, Folder.name)
            .join(Folder, Folder.id == SyncFailure.folder_id)
            .where(SyncFailure.grant_id == grant_id)
            .order_by(SyncFailure.recorded_at, SyncFailure.uid)
        ).all()
        return [(failure, str(name)) for failure, name in rows]

    def clear_failures(self, grant_id: str) -> None:
        """Forget a grant's failures, so that a fetch of their UIDs stores them."""
        self.session.execute(delete(SyncFailure).where(SyncFailure.grant_id == grant_id))

    def record_failures(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record messages that could not be normalized."""
        if rows:
            self.session.execute(
                pg_insert(SyncFailure).on_conflict_do_nothing(constraint="uq_sync_failures_place"),
                list(rows),
            )

    # --- threads ------------------------------------------------------------------------------
    def threads_by_message_ids(self, grant_id: str, message_ids: Iterable[str]) -> dict[str, str]:
        """Thread of messages whose Message-ID header is in ``message_ids``: header -> thread."""
        ids = [m for m in set(message_ids) if m]
        if not ids:
            return {}
        rows = self.session.execute(
            select(Message.message_id_header, Message.thread_id).where(
                Message.grant_id == grant_id,
                func.md5(Message.message_id_header).in_([text_key(m) for m in ids]),
                Message.message_id_header.in_(ids),
                Message.thread_id.is_not(None),
            )
        )
        return {str(h): str(t) for h, t in rows}

    def threads_referencing(self, grant_id: str, message_ids: Iterable[str]) -> dict[str, str]:
        """Threads of stored messages that reference any of ``message_ids`` (children seen first).

        Returns:
            Referenced Message-ID -> thread id.
        """
        ids = [m for m in set(message_ids) if m]
        if not ids:
            return {}
        out: dict[str, str] = {}
        rows = self.session.execute(
            select(Message.references, Message.in_reply_to, Message.thread_id).where(
                Message.grant_id == grant_id,
                func.message_reference_keys(Message.references).op("&&")(
                    cast([text_key(m) for m in ids], ARRAY(Text))
                ),
                Message.thread_id.is_not(None),
            )
        )
        wanted = set(ids)
        for refs, _, thread_id in rows:
            for ref in refs:
                if ref in wanted:
                    out.setdefault(ref, str(thread_id))
        return out

    def threads_by_subject(self, grant_id: str, subject_keys: Iterable[str]) -> dict[str, str]:
        """Most recent thread per normalized subject."""
        keys = [k for k in set(subject_keys) if k]
        if not keys:
            return {}
        rows = self.session.execute(
            select(Thread.subject_key, Thread.id)
            .where(
                Thread.grant_id == grant_id,
                func.md5(Thread.subject_key).in_([text_key(k) for k in keys]),
                Thread.subject_key.in_(keys),
            )
            .order_by(Thread.latest_message_at.asc().nulls_first())
        )
        return {k: str(t) for k, t in rows}  # later rows (more recent) win

    def insert_threads(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert new threads (ids are new: nothing can conflict)."""
        if rows:
            self._copy(Thread, rows)

    def touch_threads(self, latest: Mapping[str, datetime]) -> None:
        """Move each thread's latest-message time forward (one executemany round trip)."""
        if not latest:
            return
        table = Thread.__table__
        assert isinstance(table, Table)
        self.session.connection().execute(
            update(table)
            .where(table.c.id == bindparam("thread_id"))
            .values(
                latest_message_at=func.greatest(table.c.latest_message_at, bindparam("latest"))
            ),
            [{"thread_id": tid, "latest": when} for tid, when in latest.items()],
        )

    def merge_threads(self, into: str, others: Iterable[str]) -> None:
        """Fold threads into one when a message turns out to link them."""
        others = [o for o in set(others) if o != into]
        if not others:
            return
        self.session.execute(
            update(Message).where(Message.thread_id.in_(others)).values(thread_id=into)
        )
        self.session.execute(delete(Thread).where(Thread.id.in_(others)))
