"""What a folder sync run is asked to do and what it plans to fetch.

- :class:`FolderRun`: the arguments of one run (:func:`pipeline.sync.run.sync_folder`), given
  once and handed to every step; :class:`Opened`: the folder as the run found it (its row and
  the server's SELECT).
- :func:`discover_folders`: which folders a grant syncs, most important first (LIST).
- :func:`plan`: which UIDs a run fetches: the retention window's UIDs not stored or recorded as
  failed yet (initial sync and reindex), the new ones from ``synced_uid`` on (incremental), or
  a UID range; a large initial sync is split into ranges for several tasks instead.
- :func:`batches`: the fetch batches, bounded in count and bytes; a message over the IMAP
  literal bound is recorded as too large instead of fetched.

Planning reads the server (SEARCH, metadata FETCH) outside transactions; only the initial
sync's plan writes (``to_sync`` for progress, the baseline UIDNEXT and HIGHESTMODSEQ).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from pipeline import notifications
from pipeline.config import Settings
from pipeline.folders.repository import FolderRepository
from pipeline.folders.state import FolderState
from pipeline.folders.views import stored_folder_view
from pipeline.imap import FolderInfo, ImapSession, MessageMeta, SelectInfo
from pipeline.messages.repository import MessageRepository
from pipeline.models import Folder, Grant
from pipeline.sync.store import FailedItem

log = logging.getLogger(__name__)

META_SLICE = 5000  # UIDs per metadata FETCH: keeps one response line bounded
MAX_RANGES = 64  # a folder's initial sync is never split into more tasks than this


@dataclass
class FolderRun:
    """One run of a folder's state machine: the arguments of
    :func:`pipeline.sync.run.sync_folder`, which every step of the run reads."""

    sessions: sessionmaker[Session]
    settings: Settings
    imap: ImapSession
    grant_id: str
    folder_id: str
    now: datetime
    budget_s: float  # stop after the batch that spends it
    on_batch: Callable[[], bool] | None = None  # after each batch; True: yield the connection
    uid_range: tuple[int, int] | None = None  # only these UIDs (a range task, or a refetch)
    range_messages: int | None = None  # split a larger initial sync into ranges of about this
    reopen: Callable[[], ImapSession] | None = None  # a fresh session when the server drops one
    finalize: bool = True  # delete expired orphans at the end of an incremental run
    started: float = field(default_factory=time.monotonic)

    @property
    def since(self) -> datetime:
        """The oldest INTERNALDATE the run keeps."""
        return window_start(self.settings, self.now)

    def spent(self) -> bool:
        """Whether the run's time budget is spent."""
        return time.monotonic() - self.started > self.budget_s


@dataclass(frozen=True)
class Opened:
    """The folder as a run found it: its row before the run and the server's SELECT."""

    raw_name: str
    state: FolderState  # the state the run works in (:func:`pipeline.folders.state.run_state`)
    synced_uid: int
    stored_modseq: int | None  # the modseq the stored flags are current as of
    last_synced: datetime | None
    live: bool  # the grant's initial sync is complete: changes are notified
    notify: bool  # live, and not back from a long outage (notifications.SILENT_AFTER)
    condstore: bool
    info: SelectInfo
    placed: frozenset[int]  # UIDs of this UIDVALIDITY the run can meet that are stored
    failed: frozenset[int]  # ... or recorded as failed

    @property
    def initial(self) -> bool:
        """Whether the run stores the whole window (initial sync or reindex)."""
        return self.state.initial

    @property
    def new_folder(self) -> bool:
        """A folder another client made after the grant's initial sync (periodic discovery):
        its mail is news to the application (``message.created``; moved in:
        ``message.updated``), unlike a grant's first look or a reindex."""
        return self.live and self.state == FolderState.SYNCING and self.last_synced is None

    def wanted(self, uid: int) -> bool:
        """Whether ``uid`` is neither stored nor recorded as failed."""
        return uid not in self.placed and uid not in self.failed


def notify_after(live: bool, last_synced: datetime | None, now: datetime) -> bool:
    """Notifications only once the historical sync is done, and not for mail that piled up
    while the grant was out of service for long."""
    return live and (last_synced is None or now - last_synced < notifications.SILENT_AFTER)


@dataclass
class FolderChanges:
    """What a folder discovery found."""

    created: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    selectable: list[str] = field(default_factory=list)


def window_start(settings: Settings, now: datetime) -> datetime:
    """The oldest INTERNALDATE kept: ``now - retention_days``."""
    return now - timedelta(days=settings.sync.retention_days)


# A folder name longer than this is not kept (the name is a key of a unique index, whose
# entries must stay under about 2.7 KB; real servers allow a few hundred characters).
MAX_FOLDER_NAME_CHARS = 1000
# The order folders are kept in when a server lists more than the cap: these roles first.
ROLE_PRIORITY = {"inbox": 0, "sent": 1}
OTHER_ROLE_PRIORITY = 2
NO_ROLE_PRIORITY = 3


def _kept_folders(
    listed: Sequence[FolderInfo], existing: set[str], max_folders: int
) -> tuple[list[FolderInfo], int]:
    """The selectable folders to sync, most important first, and how many are left out.

    Order: Inbox, Sent, the other role folders, then folders already synced (so raising the
    count the server lists does not swap folders out), then the rest in LIST order.
    """
    candidates = [
        (index, info)
        for index, info in enumerate(listed)
        if info.selectable and len(info.raw_name) <= MAX_FOLDER_NAME_CHARS
    ]
    selectable = sum(1 for info in listed if info.selectable)

    def rank(pair: tuple[int, FolderInfo]) -> tuple[int, int, int]:
        index, info = pair
        if info.role is None:
            priority = NO_ROLE_PRIORITY
        else:
            priority = ROLE_PRIORITY.get(info.role, OTHER_ROLE_PRIORITY)
        return priority, 0 if info.raw_name in existing else 1, index

    kept = [info for _, info in sorted(candidates, key=rank)[:max_folders]]
    return kept, selectable - len(kept)


def discover_folders(
    session: Session, grant: Grant, listed: Sequence[FolderInfo], *, max_folders: int
) -> FolderChanges:
    """Bring the grant's folder rows in line with the server's LIST. Never commits.

    ``\\Noselect`` folders are kept out; a folder gone from the server is deleted with its
    placements, and the messages it leaves in no folder are marked orphaned (deleted with
    ``message.deleted`` after the orphan grace, unless a folder found later holds them: a
    renamed folder keeps its messages' ids). At most
    ``max_folders`` are kept (see :func:`_kept_folders`); the others count in
    ``grant.folders_skipped`` and are treated as absent. ``changes.selectable`` lists the kept
    folders most important first (Inbox, Sent, other roles…): the order to sync them in.
    """
    changes = FolderChanges()
    live = grant.initial_sync_completed_at is not None  # no notifications for the first look
    existing = {f.raw_name: f for f in FolderRepository(session).for_grant(grant.id)}
    existing_by_id = {f.id: f for f in existing.values()}
    kept, skipped = _kept_folders(listed, set(existing), max_folders)
    if skipped:
        log.warning(
            "folders over the cap are not synced",
            extra={"grant_id": grant.id, "skipped": skipped, "kept": len(kept)},
        )
    grant.folders_skipped = skipped
    seen: set[str] = set()
    for info in kept:
        seen.add(info.raw_name)
        folder = existing.get(info.raw_name)
        if folder is None:
            folder = Folder(
                grant_id=grant.id,
                raw_name=info.raw_name,
                name=info.name,
                delimiter=info.delimiter,
                role=info.role,
                attributes=list(info.attributes),
                state=FolderState.PENDING,
            )
            session.add(folder)
            session.flush()
            changes.created.append(folder.id)
            if live:
                notifications.folder(session, "folder.created", stored_folder_view(session, folder))
        else:
            if (folder.role, list(folder.attributes)) != (info.role, list(info.attributes)):
                folder.role = info.role
                folder.attributes = list(info.attributes)
        changes.selectable.append(folder.id)
    for raw_name, folder in existing.items():
        if raw_name not in seen:
            changes.deleted.append(folder.id)
            if live:
                notifications.folder(session, "folder.deleted", stored_folder_view(session, folder))
    if changes.deleted:
        messages = MessageRepository(session)
        held = messages.held_by_folders(changes.deleted)
        for folder_id in changes.deleted:
            session.delete(existing_by_id[folder_id])
        session.flush()
        messages.mark_orphaned(messages.unplaced(held), datetime.now(UTC))
    session.flush()
    return changes


def _select_window(imap: ImapSession, since: datetime) -> list[MessageMeta]:
    # SEARCH SINCE has day granularity in the server's time zone: ask a day early, then keep
    # exactly what lies in the window by INTERNALDATE.
    uids = imap.uids_since((since - timedelta(days=1)).date())
    metas: list[MessageMeta] = []
    for start in range(0, len(uids), META_SLICE):
        metas.extend(imap.fetch_meta(uids[start : start + META_SLICE]))
    return [m for m in metas if _in_window(m, since)]


def _in_window(meta: MessageMeta, since: datetime) -> bool:
    """Whether a message arrived within the retention window. One whose INTERNALDATE the
    server garbled is kept (stored with its Date header as its arrival; the purge then
    judges it by that)."""
    return meta.internaldate is None or meta.internaldate >= since


def _batches(metas: Sequence[MessageMeta], count: int, max_bytes: int) -> Iterator[list[int]]:
    batch: list[int] = []
    size = 0
    for meta in metas:
        if batch and (len(batch) >= count or size + meta.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(meta.uid)
        size += meta.size
    if batch:
        yield batch


@dataclass(frozen=True)
class Plan:
    """What a run fetches, or (``ranges``) how a large initial sync is split over tasks."""

    todo: list[MessageMeta]
    ranges: list[tuple[int, int]] = field(default_factory=list)


def plan(run: FolderRun, opened: Opened) -> Plan:
    """The messages the run fetches (see the module docstring)."""
    imap, since = run.imap, run.since
    if run.uid_range is not None:
        # A range of the initial sync, or (a synced folder) UIDs an operator asks to fetch
        # again, e.g. failures forgotten by `grants failures --retry`.
        lo, hi = run.uid_range
        in_range = imap.search_uids("UID", f"{lo}:{hi}")
        return Plan(
            [
                m
                for m in imap.fetch_meta([u for u in in_range if lo <= u <= hi])
                if _in_window(m, since) and opened.wanted(m.uid)
            ]
        )
    if opened.initial:
        return _plan_window(run, opened)
    info, synced_uid = opened.info, opened.synced_uid
    if info.uidnext is not None and info.uidnext <= synced_uid:
        return Plan([])
    new_uids = [u for u in imap.search_uids("UID", f"{max(synced_uid, 1)}:*") if u >= synced_uid]
    return Plan(
        [m for m in imap.fetch_meta(new_uids) if opened.wanted(m.uid) and _in_window(m, since)]
    )


def _plan_window(run: FolderRun, opened: Opened) -> Plan:
    """The initial sync's (or a reindex's) plan: the window's UIDs not done yet, recorded for
    progress; split into ranges when ``run.range_messages`` asks and it is large."""
    window = _select_window(run.imap, run.since)
    todo = [m for m in window if opened.wanted(m.uid)]
    with run.sessions.begin() as db:
        folder = FolderRepository(db).get(run.folder_id)
        assert folder is not None
        folder.to_sync = len(window)
        folder.uidnext = opened.info.uidnext
        if folder.highestmodseq is None:
            # The baseline of the first incremental run: what changes (flags, expunges)
            # after the plan was made, also to mail stored meanwhile, is asked for then.
            folder.highestmodseq = opened.info.highestmodseq
    size = run.range_messages
    if size and len(todo) > 2 * size:
        parts = min(-(-len(todo) // size), MAX_RANGES)
        step = -(-len(todo) // parts)
        groups = [todo[i : i + step] for i in range(0, len(todo), step)]
        return Plan(todo, [(g[0].uid, g[-1].uid) for g in groups])
    return Plan(todo)


def batches(
    settings: Settings, todo: Sequence[MessageMeta]
) -> tuple[list[list[int]], list[FailedItem]]:
    """The fetch batches of ``todo``, and the messages too large to fetch.

    A message above the literal bound is never fetched (the client would refuse its literal and
    close the session): it costs that message, recorded with the setting to raise.
    """
    cap = settings.imap.max_literal_bytes
    too_large = [
        FailedItem(
            m.uid,
            f"The message is {m.size:,} bytes, above IMAP_PIPELINE_IMAP_MAX_LITERAL_BYTES "
            f"({cap:,}); raise it and retry with `grants failures --retry` to fetch it.",
        )
        for m in todo
        if m.size > cap
    ]
    fits = [m for m in todo if m.size <= cap]
    return list(_batches(fits, settings.sync.batch_size, settings.sync.batch_bytes)), too_large
