"""Every query of the periodic jobs (sweep, purge, reconcile). Never commits.

The sweep's and reconciliation's reads and writes of ``folders`` go through the table itself
(Core): their updates are bookkeeping and leave ``updated_at`` alone (:func:`_update_folders`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Select,
    Table,
    and_,
    case,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

from pipeline.folders.state import UNFINISHED, FolderState
from pipeline.grants.state import GRANT_IN_INITIAL_SYNC, GrantSyncState
from pipeline.models import Folder, Grant, Message, Placement, SyncFailure, Thread

folders = cast(Table, Folder.__table__)


def _update_folders() -> Update:
    """``UPDATE folders`` that leaves ``updated_at`` as it is, where the column's ``onupdate``
    would set it to now: reconciliation reads ``updated_at`` as a folder's last sync progress
    (:meth:`MaintenanceRepository.folders_to_retry`, ``stalled_grants``), and the sweep's
    counts, a stop, a resume or a reset for reindex never moved it."""
    return update(folders).values(updated_at=folders.c.updated_at)


@dataclass(frozen=True)
class SweptFolder:
    """What the sweep knows about one folder before it asks the server."""

    id: str
    raw_name: str
    role: str | None
    state: str
    uidvalidity: int
    swept_uidvalidity: int | None
    changes: int
    retry_at: datetime | None
    uidnext: int | None = None
    highestmodseq: int | None = None
    last_synced_at: datetime | None = None
    status_messages: int | None = None  # STATUS counts the last sync saw (no CONDSTORE)
    status_unseen: int | None = None


@dataclass(frozen=True)
class PurgeBatch:
    """What one purge batch removed."""

    messages: int
    threads: int


class MaintenanceRepository:
    """Queries of the periodic jobs; never commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # --- grants ---------------------------------------------------------------------------
    def valid_grants(self) -> list[tuple[str, str]]:
        """``(grant_id, provider)`` of every valid grant."""
        rows = self.session.execute(
            select(Grant.id, Grant.provider).where(Grant.grant_status == "valid").order_by(Grant.id)
        )
        return [(str(g), str(p)) for g, p in rows]

    def stalled_grants(self, before: datetime) -> list[tuple[str, str]]:
        """Valid grants still in their initial sync with no folder or grant change since
        ``before``: ``(grant_id, provider)``."""
        recent_folder = exists().where(Folder.grant_id == Grant.id, Folder.updated_at >= before)
        rows = self.session.execute(
            select(Grant.id, Grant.provider).where(
                Grant.grant_status == "valid",
                Grant.sync_state.in_(GRANT_IN_INITIAL_SYNC),
                Grant.updated_at < before,
                ~recent_folder,
            )
        )
        return [(str(g), str(p)) for g, p in rows]

    def folders_to_retry(self, before: datetime) -> list[tuple[str, str, str]]:
        """Folders of valid grants that failed, or were left mid-sync, before ``before``:
        ``(grant_id, folder_id, provider)``."""
        rows = self.session.execute(
            select(folders.c.grant_id, folders.c.id, Grant.provider)
            .join(Grant, Grant.id == folders.c.grant_id)
            .where(
                Grant.grant_status == "valid",
                Grant.sync_state != GrantSyncState.STOPPED,
                folders.c.state.in_(UNFINISHED),
                folders.c.updated_at < before,
            )
        )
        return [(str(g), str(f), str(p)) for g, f, p in rows]

    def grants_with_expired_orphans(self, before: datetime, limit: int) -> list[str]:
        """Grants holding a message that lost its last placement before ``before`` (at most
        ``limit``, oldest orphan first; the partial index of migration 0503 keeps this cheap)."""
        oldest = func.min(Message.orphaned_at)
        rows = self.session.execute(
            select(Message.grant_id)
            .where(Message.orphaned_at.is_not(None), Message.orphaned_at <= before)
            .group_by(Message.grant_id)
            .order_by(oldest)
            .limit(limit)
        )
        return [str(g) for (g,) in rows]

    # --- UIDVALIDITY sweep ----------------------------------------------------------------
    def sweep_candidates(self, grant_id: str, now: datetime) -> list[SweptFolder]:
        """Folders of a grant synced at least once; stopped ones only when their retry is due."""
        f = folders.c
        rows = self.session.execute(
            _swept_columns()
            .where(
                f.grant_id == grant_id,
                f.uidvalidity.is_not(None),
                or_(
                    f.state != FolderState.STOPPED, and_(f.retry_at.is_not(None), f.retry_at <= now)
                ),
            )
            .order_by(f.raw_name)
        )
        return [_swept(row) for row in rows]

    def sweep_candidates_of(
        self, grant_ids: Sequence[str], now: datetime
    ) -> dict[str, list[SweptFolder]]:
        """:meth:`sweep_candidates` of several grants in one query, by grant id (every id of
        ``grant_ids`` is a key)."""
        out: dict[str, list[SweptFolder]] = {g: [] for g in grant_ids}
        if not grant_ids:
            return out
        f = folders.c
        rows = self.session.execute(
            _swept_columns()
            .add_columns(f.grant_id)
            .where(
                f.grant_id.in_(grant_ids),
                f.uidvalidity.is_not(None),
                or_(
                    f.state != FolderState.STOPPED, and_(f.retry_at.is_not(None), f.retry_at <= now)
                ),
            )
            .order_by(f.grant_id, f.raw_name)
        )
        for row in rows:
            out.setdefault(str(row[-1]), []).append(_swept(row[:-1]))
        return out

    def lock_folder(self, folder_id: str) -> SweptFolder | None:
        """Re-read a folder under a row lock (its sync may have reindexed meanwhile)."""
        row = self.session.execute(
            _swept_columns().where(folders.c.id == folder_id).with_for_update()
        ).one_or_none()
        if row is None or row[4] is None:
            return None
        return _swept(row)

    def record_sweep(self, folder_id: str, *, seen: int, changes: int) -> None:
        """Store what a sweep saw and the resulting count of consecutive changes."""
        self.session.execute(
            _update_folders()
            .where(folders.c.id == folder_id)
            .values(swept_uidvalidity=seen, uidvalidity_changes=changes)
        )

    def note_seen(self, folder_id: str, seen: int) -> None:
        """Remember ``seen`` as the last UIDVALIDITY seen, count unchanged (a sync that found
        the folder's own value; a no-op statement when it is remembered already)."""
        self.session.execute(
            _update_folders()
            .where(
                folders.c.id == folder_id,
                folders.c.swept_uidvalidity.is_distinct_from(seen),
            )
            .values(swept_uidvalidity=seen)
        )

    def holds_messages(self, folder_id: str) -> bool:
        """Whether any message is placed in the folder (under any UIDVALIDITY)."""
        return bool(self.session.scalar(select(exists().where(Placement.folder_id == folder_id))))

    def adopt_uidvalidity(
        self, folder_id: str, seen: int, *, uidnext: int | None, messages: int | None
    ) -> None:
        """Take ``seen`` as an empty folder's UIDVALIDITY at once (nothing to reindex): the
        marks of the old numbering go (next sync looks from UID 1), the count is unchanged."""
        self.session.execute(
            _update_folders()
            .where(folders.c.id == folder_id)
            .values(
                uidvalidity=seen,
                swept_uidvalidity=seen,
                reindex_uidvalidity=None,
                synced_uid=0,
                uidnext=uidnext,
                highestmodseq=None,
                status_messages=messages,
                status_unseen=0 if messages == 0 else None,
            )
        )

    def stop_folder(self, folder_id: str, detail: str, retry_at: datetime) -> None:
        """Stop syncing a folder until ``retry_at``."""
        self.session.execute(
            _update_folders()
            .where(folders.c.id == folder_id)
            .values(state=FolderState.STOPPED, state_detail=detail, retry_at=retry_at)
        )

    def resume_folder(self, folder_id: str) -> None:
        """Let a stopped folder sync again (its next sync reindexes it: pipeline.sync.run)."""
        self.session.execute(
            _update_folders()
            .where(folders.c.id == folder_id)
            .values(
                state=FolderState.SYNCING, state_detail=None, retry_at=None, uidvalidity_changes=0
            )
        )

    # --- reindex by hand -------------------------------------------------------------------
    def reset_for_reindex(self, grant_id: str, names: Sequence[str] | None) -> list[str]:
        """Make folders of a grant re-plan their whole window at their next sync: state
        ``syncing`` from UID 0, failures forgotten (tried again), a stop lifted. Folders in the
        middle of a UIDVALIDITY reindex are left to it. Returns the folder ids."""
        f = folders.c
        where = [f.grant_id == grant_id, f.state != FolderState.REINDEXING]
        if names:
            where.append(or_(f.raw_name.in_(list(names)), f.name.in_(list(names))))
        ids = [
            str(i)
            for i in self.session.scalars(
                _update_folders()
                .where(*where)
                .values(
                    state=FolderState.SYNCING,
                    state_detail=None,
                    synced_uid=0,
                    retry_at=None,
                    uidvalidity_changes=0,
                    swept_uidvalidity=None,
                )
                .returning(f.id)
            )
        ]
        if ids:
            self.session.execute(delete(SyncFailure).where(SyncFailure.folder_id.in_(ids)))
        return ids

    def unstop_grant(self, grant_id: str) -> bool:
        """Lift a grant-wide stop; True when the grant was stopped."""
        result = self.session.execute(
            update(Grant)
            .where(Grant.id == grant_id, Grant.sync_state == GrantSyncState.STOPPED)
            .values(
                sync_state=case(
                    (Grant.initial_sync_completed_at.is_(None), GrantSyncState.SYNCING),
                    else_=GrantSyncState.SYNCED,
                ),
                status_detail=None,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # --- retention purge ------------------------------------------------------------------
    def purge_batch(self, cutoff: datetime, limit: int) -> PurgeBatch:
        """Delete up to ``limit`` messages received before ``cutoff``, oldest first, with their
        placements and attachments (ON DELETE CASCADE) and the threads they leave empty.

        Rows another transaction holds are skipped (``SKIP LOCKED``): a sync writing to a
        message is never waited for; the next batch or run takes it.
        """
        doomed = (
            select(Message.id)
            .where(Message.received_at < cutoff)
            .order_by(Message.received_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("doomed")
        )
        threads = self.session.scalars(
            delete(Message).where(Message.id.in_(select(doomed.c.id))).returning(Message.thread_id)
        ).all()
        thread_ids = sorted({t for t in threads if t is not None})
        emptied = 0
        if thread_ids:
            still_used = exists().where(Message.thread_id == Thread.id)
            result = self.session.execute(
                delete(Thread).where(Thread.id.in_(thread_ids), ~still_used)
            )
            emptied = int(result.rowcount)  # type: ignore[attr-defined]
        return PurgeBatch(messages=len(threads), threads=emptied)

    def expire_sync_failures(self, cutoff: datetime, limit: int) -> int:
        """Delete up to ``limit`` sync-failure records older than ``cutoff``."""
        doomed = (
            select(SyncFailure.id)
            .where(SyncFailure.recorded_at < cutoff)
            .order_by(SyncFailure.recorded_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("doomed")
        )
        result = self.session.execute(
            delete(SyncFailure).where(SyncFailure.id.in_(select(doomed.c.id)))
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    def set_local_timeouts(self, statement_ms: int, lock_ms: int) -> None:
        """Bound this transaction's statements and lock waits (``SET LOCAL``)."""
        self.session.execute(text(f"SET LOCAL statement_timeout = {int(statement_ms)}"))
        self.session.execute(text(f"SET LOCAL lock_timeout = {int(lock_ms)}"))

    def count_messages_before(self, cutoff: datetime) -> int:
        """How many messages were received before ``cutoff`` (for reports)."""
        return int(
            self.session.scalar(
                select(func.count()).select_from(Message).where(Message.received_at < cutoff)
            )
            or 0
        )


def _swept_columns() -> Select[Any]:
    """The columns of a :class:`SweptFolder`, in its order."""
    f = folders.c
    return select(
        f.id,
        f.raw_name,
        f.role,
        f.state,
        f.uidvalidity,
        f.swept_uidvalidity,
        f.uidvalidity_changes,
        f.retry_at,
        f.uidnext,
        f.highestmodseq,
        f.last_synced_at,
        f.status_messages,
        f.status_unseen,
    )


def _swept(row: Any) -> SweptFolder:
    i, rn, role, st, uv, suv, ch, ra, un, hms, ls, sm, su = row
    return SweptFolder(str(i), rn, role, st, int(uv), suv, int(ch or 0), ra, un, hms, ls, sm, su)
