"""The folder sync state machine, run by Celery tasks and called directly by tests.

A folder moves through these states (``folders.state``)::

    pending --plan--> syncing --all planned UIDs stored or failed--> synced <-----+
       ^                 |  ^                                          |           |
       |                 |  +-- worker killed / budget spent: the next |           |
       |                 |      run re-plans; stored UIDs are skipped  |           |
       |                 v                                             v           |
       +----------- failed (IMAP error; retried)       UIDVALIDITY changed         |
                                                              |                    |
                                                         reindexing --complete: switch

The checkpoint is the set of placements already stored for a UIDVALIDITY, so a run that dies
anywhere loses nothing and repeats nothing: the next run plans only what is missing.
``to_sync`` counts the UIDs in the retention window at planning time (for progress);
``synced_uid`` is the UIDNEXT the initial sync covered; incremental fetching starts there.

Reindex: when the server's UIDVALIDITY differs from the folder's, the new numbering is indexed
beside the old one (placements carry their UIDVALIDITY; readers join on the folder's current
one, so they keep the old view). Messages are matched by identity, so they keep their ids. When
the window is complete, one transaction switches the folder to the new UIDVALIDITY, drops the
old placements and deletes only the messages no folder holds any more.

Units of work: every batch commits on its own (this module owns those transactions, like a
task does); IMAP I/O and parsing happen outside transactions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
import sqlalchemy.exc
from sqlalchemy.orm import Session, sessionmaker

from pipeline import notifications
from pipeline.config import Settings
from pipeline.errors import ImapFolderError, ImapProtocolError, ImapThrottledError
from pipeline.folders.repository import FolderRepository
from pipeline.grants.repository import GrantRepository
from pipeline.imap import FetchedMessage, FolderInfo, ImapSession, MessageMeta
from pipeline.maintenance.sweep import Seen, count_seen_uidvalidity
from pipeline.messages.repository import MessageRepository
from pipeline.models import Folder, Grant
from pipeline.sync.state import GONE, SETTLED, FolderState, GrantSyncState
from pipeline.sync.store import (
    ERROR_TEXT_LIMIT,
    FailedItem,
    ParsedItem,
    WriteResult,
    parse_batch,
    write_batch,
)

log = logging.getLogger(__name__)

INLINE_SLOT_WAIT_S = 60.0  # an inline sync waits this long for a connection slot

META_SLICE = 5000  # UIDs per metadata FETCH: keeps one response line bounded
MAX_RANGES = 64  # a folder's initial sync is never split into more tasks than this
FLAG_REFRESH_LIMIT = 2000  # without CONDSTORE, re-read the flags of this many recent UIDs

ImapOpener = Callable[[Session, Grant], ImapSession]


@dataclass
class FolderChanges:
    """What a folder discovery found."""

    created: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    selectable: list[str] = field(default_factory=list)


@dataclass
class SyncOutcome:
    """What one folder sync run did."""

    folder_id: str
    state: str  # a FolderState, or GONE (the folder was deleted meanwhile)
    stored: int = 0
    failed: int = 0
    remaining: int = 0
    new_message_ids: list[str] = field(default_factory=list)
    grant_completed: bool = False
    ranges: list[tuple[int, int]] = field(default_factory=list)  # split the rest over tasks
    reindexed: bool = False  # a new UIDVALIDITY became the folder's view in this run
    deleted_message_ids: list[str] = field(default_factory=list)  # gone for good
    emitted: int = 0  # notifications written to the webhook outbox
    # The server dropped the session and ``reopen`` gave this one instead: the caller's is
    # dead, use (and later release) this one.
    replaced: ImapSession | None = None

    @property
    def more(self) -> bool:
        """True when the run stopped at its time budget with work left."""
        return self.remaining > 0


def window_start(settings: Settings, now: datetime) -> datetime:
    """The oldest INTERNALDATE kept: ``now - retention_days``."""
    return now - timedelta(days=settings.retention_days)


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
                notifications.folder(session, "folder.created", folder)
        else:
            if (folder.role, list(folder.attributes)) != (info.role, list(info.attributes)):
                folder.role = info.role
                folder.attributes = list(info.attributes)
        changes.selectable.append(folder.id)
    for raw_name, folder in existing.items():
        if raw_name not in seen:
            changes.deleted.append(folder.id)
            if live:
                notifications.folder(session, "folder.deleted", folder)
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


# What Postgres raises for a row it will not take (a value too long, bytes it cannot hold, a
# constraint, an index entry over its size limit): the batch is then stored message by message
# and the refused ones recorded. Anything else (a lost connection, a server fault) is not the
# message's doing and fails the run instead, so nothing is recorded as refused by mistake.
REFUSED_BY_DATABASE = (
    sqlalchemy.exc.DataError,
    sqlalchemy.exc.IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,  # SQLSTATE class 54, e.g. "index row size exceeds"
    UnicodeEncodeError,
)


def refused_by_database(exc: BaseException) -> bool:
    """Whether ``exc`` is Postgres refusing the data itself (see :data:`REFUSED_BY_DATABASE`);
    SQLAlchemy wraps class-54 errors as ``OperationalError``, so its cause is looked at too."""
    if isinstance(exc, REFUSED_BY_DATABASE):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and isinstance(
        exc.orig, psycopg.errors.ProgramLimitExceeded
    )


def _first_line(exc: BaseException) -> str:
    """An error's first line: what went wrong, without SQLAlchemy's statement and parameters
    (which would carry message content)."""
    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _store_each(
    store: Callable[[list[ParsedItem], list[FailedItem], int], WriteResult],
    items: list[ParsedItem],
    failures: list[FailedItem],
    vanished: int,
) -> tuple[WriteResult, list[ParsedItem]]:
    """Store a batch the database refused one message at a time, each in its own transaction;
    what it refuses again is recorded in ``sync_failures`` (and not fetched again)."""
    total = WriteResult()
    stored: list[ParsedItem] = []
    refused = list(failures)
    for item in items:
        try:
            one = store([item], [], 0)
        except Exception as exc:
            if not refused_by_database(exc):
                raise
            log.warning("message refused by the database", extra={"uid": item.uid})
            error = f"The message could not be stored: {_first_line(exc)}"
            refused.append(FailedItem(item.uid, error[:ERROR_TEXT_LIMIT]))
            continue
        stored.append(item)
        total.new_message_ids += one.new_message_ids
        total.existing_message_ids += one.existing_message_ids
    total.failed = store([], refused, vanished).failed
    return total, stored


def _fetch_each(
    reopen: Callable[[], ImapSession], raw_name: str, uids: Sequence[int]
) -> tuple[ImapSession, list[FetchedMessage], list[FailedItem]]:
    """Fetch a batch the server broke off one message at a time, on fresh sessions.

    A message the server fails on twice, each time on a session that could select the folder,
    is recorded as unreadable (a corrupt or unreadable file on the server) and skipped. If it
    fails on every message of the batch, it is the server, not the mail: the error is raised
    and nothing is recorded.
    """

    def fresh() -> ImapSession:
        opened = reopen()
        try:
            opened.enable_condstore()  # as the dropped session had it: MODSEQ comes along
            opened.select(raw_name, readonly=True)
        except BaseException:
            opened.close()
            raise
        return opened

    session = fresh()
    fetched: list[FetchedMessage] = []
    unreadable: list[FailedItem] = []
    last_error: ImapProtocolError | None = None
    try:
        for uid in uids:
            for attempt in (1, 2):
                try:
                    fetched.extend(session.fetch_messages([uid]))
                    break
                except ImapProtocolError as exc:
                    last_error = exc
                    session.close()
                    session = fresh()
                    if attempt == 2:
                        error = f"The server could not return the message: {exc}"
                        unreadable.append(FailedItem(uid, error[:ERROR_TEXT_LIMIT]))
        if last_error is not None and len(unreadable) == len(uids):
            raise last_error
    except BaseException:
        session.close()
        raise
    for failure in unreadable:
        log.warning("message unreadable on the server", extra={"uid": failure.uid})
    return session, fetched, unreadable


def sync_folder(
    sessions: sessionmaker[Session],
    settings: Settings,
    imap: ImapSession,
    grant_id: str,
    folder_id: str,
    *,
    now: datetime | None = None,
    budget_s: float | None = None,
    on_batch: Callable[[], bool] | None = None,
    uid_range: tuple[int, int] | None = None,
    range_messages: int | None = None,
    reopen: Callable[[], ImapSession] | None = None,
    finalize: bool = True,
) -> SyncOutcome:
    """Run the folder's state machine for at most ``budget_s`` seconds.

    Initial sync (state ``pending``/``syncing``/``failed``) and reindex (``reindexing``): store
    every message of the retention window not stored yet under the server's UIDVALIDITY.
    Afterwards (``synced``): store new mail (UIDs from ``synced_uid`` on).

    ``on_batch`` is called after every committed batch (the task renews its lock and its
    connection slot there); when it returns True the run stops as if its budget were spent
    (the listener or an API request waits for the connection: :mod:`pipeline.imap.connections`).

    Given ``reopen`` (a new logged-in session), a batch the server breaks off (a ``BYE`` or
    ``NO`` on one corrupt message) is fetched again message by message, and what the server
    cannot return is recorded in ``sync_failures`` instead of failing the folder for good; the
    session in use then is :attr:`SyncOutcome.replaced`.

    An incremental run ends by deleting the grant's orphans past the grace
    (:func:`finalize_orphans`); ``finalize=False`` leaves that to the caller, which syncs the
    grant's other folders first (a message moved to a folder synced later is found there).

    A large initial sync can be spread over workers: given ``range_messages``, a planning run
    with more than twice that much to fetch returns ``ranges`` of about that many UIDs instead
    of fetching, and each range is then run with ``uid_range``; the range that stores the last
    planned message marks the folder synced.

    A run that fails (the server, the connection or the database, anything but one message's
    content) leaves the folder ``failed`` with the reason in ``state_detail``, never
    ``synced`` while its newest mail is not stored; the next run resumes where it stopped (an
    already synced folder incrementally, with its notifications).

    Raises:
        ImapError: The session failed; what was committed stays, the next run resumes.
    """
    try:
        return _sync_folder(
            sessions,
            settings,
            imap,
            grant_id,
            folder_id,
            now=now,
            budget_s=budget_s,
            on_batch=on_batch,
            uid_range=uid_range,
            range_messages=range_messages,
            reopen=reopen,
            finalize=finalize,
        )
    except ImapThrottledError:
        # A throttle (the provider's, or our own login budget: RateLimited) is a later
        # reschedule, not a failure of the folder: its state stays as it was.
        raise
    except Exception as exc:
        _record_run_failure(sessions, folder_id, exc)
        raise


def _record_run_failure(sessions: sessionmaker[Session], folder_id: str, exc: Exception) -> None:
    """Mark the folder ``failed`` with the reason (best effort: the database may be the
    reason, and the original error is what the caller must see)."""
    detail = f"The last sync failed: {_first_line(exc)}"[:ERROR_TEXT_LIMIT]
    log.warning("folder sync failed", extra={"folder_id": folder_id, "error": type(exc).__name__})
    try:
        with sessions.begin() as db:
            FolderRepository(db).set_state(folder_id, FolderState.FAILED, detail)
    except Exception:
        log.exception("could not record the folder's failure", extra={"folder_id": folder_id})


def _sync_folder(
    sessions: sessionmaker[Session],
    settings: Settings,
    imap: ImapSession,
    grant_id: str,
    folder_id: str,
    *,
    now: datetime | None,
    budget_s: float | None,
    on_batch: Callable[[], bool] | None,
    uid_range: tuple[int, int] | None,
    range_messages: int | None,
    reopen: Callable[[], ImapSession] | None,
    finalize: bool,
) -> SyncOutcome:
    started = time.monotonic()
    budget = settings.sync_chunk_budget_s if budget_s is None else budget_s
    now = now or datetime.now(UTC)
    since = window_start(settings, now)
    with sessions.begin() as db:
        folder = FolderRepository(db).get(folder_id)
        if folder is None or folder.grant_id != grant_id:
            return SyncOutcome(folder_id, GONE)
        if folder.state == FolderState.STOPPED:
            # the UIDVALIDITY stop rule (pipeline.maintenance.sweep)
            return SyncOutcome(folder_id, FolderState.STOPPED)
        raw_name, synced_uid = folder.raw_name, folder.synced_uid
        state = FolderState(folder.state)
        stored_modseq, last_synced = folder.highestmodseq, folder.last_synced_at
        grant = GrantRepository(db).get(grant_id)
        live = grant is not None and grant.initial_sync_completed_at is not None
    # Notifications only once the historical sync is done, and not for mail that piled up
    # while the grant was out of service for long.
    notify = live and (last_synced is None or now - last_synced < notifications.SILENT_AFTER)
    # Without CONDSTORE the poll notices expunges and \Seen changes by STATUS MESSAGES and
    # UNSEEN (pipeline.maintenance.sweep): a STATUS before the SELECT gives this run's baseline.
    condstore = imap.enable_condstore()
    try:
        info = imap.select(raw_name, readonly=True, want_uidnext=True, want_status=not condstore)
    except ImapFolderError as exc:
        with sessions.begin() as db:
            FolderRepository(db).set_state(folder_id, FolderState.FAILED, str(exc))
        return SyncOutcome(folder_id, FolderState.FAILED)

    with sessions.begin() as db:
        folder = FolderRepository(db).get_for_update(folder_id)
        assert folder is not None
        messages = MessageRepository(db)
        if folder.uidvalidity is None:
            folder.uidvalidity = info.uidvalidity
        else:
            seen = count_seen_uidvalidity(db, grant_id, folder_id, now, status=info)
            if seen is Seen.STOPPED:
                # a new UIDVALIDITY, and the stop rule's limit (this change counts as much as
                # one a sweep or a poll saw): stopped, not reindexed once more
                log.warning(
                    "UIDVALIDITY changes on every session; folder stopped",
                    extra={"grant_id": grant_id, "folder_id": folder_id},
                )
                # (an Inbox's grant.updated: the sweep sends it)
                return SyncOutcome(folder_id, FolderState.STOPPED)
            if seen is Seen.ADOPTED:  # an empty folder's new number, taken as it is
                db.refresh(folder)
                synced_uid, stored_modseq = folder.synced_uid, folder.highestmodseq
        if folder.uidvalidity != info.uidvalidity:
            # The server renumbered the folder. Index the new UIDVALIDITY beside the old view
            # (readers keep seeing the old one) and switch at once when it is complete.
            if folder.reindex_uidvalidity != info.uidvalidity:
                log.warning(
                    "UIDVALIDITY changed; reindexing",
                    extra={"grant_id": grant_id, "folder_id": folder_id},
                )
                folder.reindex_uidvalidity = info.uidvalidity
                folder.highestmodseq = None  # modseqs of the old numbering mean nothing now
            state = FolderState.REINDEXING
        elif state == FolderState.REINDEXING or folder.reindex_uidvalidity is not None:
            # the server went back to the validity we hold (also after a failed reindex run)
            folder.reindex_uidvalidity = None
            state = FolderState.SYNCED
        if state == FolderState.FAILED and folder.last_synced_at is not None:
            state = FolderState.SYNCED  # its initial sync was complete: resume incrementally
        if state in (FolderState.PENDING, FolderState.FAILED):
            state = FolderState.SYNCING
        folder.state = state
        folder.state_detail = None
        initial = state.initial
        # Only the UIDs this run can meet: its range, or (incremental) the new ones.
        relevant: tuple[int, int | None] = (
            uid_range if uid_range else (0, None) if initial else (synced_uid, None)
        )
        placed = messages.placed_uids(folder_id, info.uidvalidity, relevant)
        failed = messages.failed_uids(folder_id, info.uidvalidity, relevant)

    if uid_range is not None:
        # A range of the initial sync, or (a synced folder) UIDs an operator asks to fetch
        # again, e.g. failures forgotten by `grants failures --retry`.
        lo, hi = uid_range
        in_range = imap.search_uids("UID", f"{lo}:{hi}")
        todo = [
            m
            for m in imap.fetch_meta([u for u in in_range if lo <= u <= hi])
            if _in_window(m, since) and m.uid not in placed and m.uid not in failed
        ]
    elif initial:
        window = _select_window(imap, since)
        todo = [m for m in window if m.uid not in placed and m.uid not in failed]
        with sessions.begin() as db:
            folder = FolderRepository(db).get(folder_id)
            assert folder is not None
            folder.to_sync = len(window)
            folder.uidnext = info.uidnext
            if folder.highestmodseq is None:
                # The baseline of the first incremental run: what changes (flags, expunges)
                # after the plan was made, also to mail stored meanwhile, is asked for then.
                folder.highestmodseq = info.highestmodseq
        if range_messages and len(todo) > 2 * range_messages:
            parts = min(-(-len(todo) // range_messages), MAX_RANGES)
            step = -(-len(todo) // parts)
            groups = [todo[i : i + step] for i in range(0, len(todo), step)]
            outcome = SyncOutcome(folder_id, state)
            outcome.ranges = [(g[0].uid, g[-1].uid) for g in groups]
            return outcome
    else:
        if info.uidnext is not None and info.uidnext <= synced_uid:
            todo = []
        else:
            new_uids = [
                u for u in imap.search_uids("UID", f"{max(synced_uid, 1)}:*") if u >= synced_uid
            ]
            todo = [
                m
                for m in imap.fetch_meta(new_uids)
                if m.uid not in placed and m.uid not in failed and _in_window(m, since)
            ]

    outcome = SyncOutcome(folder_id, state)
    refetch = uid_range is not None and not initial  # some UIDs of a synced folder, again
    if not initial and not refetch:
        _apply_flag_and_expunge_changes(
            sessions,
            settings,
            imap,
            outcome,
            grant_id,
            folder_id,
            info.uidvalidity,
            stored_modseq,
            info.highestmodseq,
            now=now,
            notify=notify,
            live=live,
        )
    # A message above the literal bound is never fetched (the client would refuse its literal
    # and close the session): it costs that message, recorded with the setting to raise.
    cap = settings.imap_max_literal_bytes
    too_large = [
        FailedItem(
            m.uid,
            f"The message is {m.size:,} bytes, above IMAP_PIPELINE_IMAP_MAX_LITERAL_BYTES "
            f"({cap:,}); raise it and retry with `grants failures --retry` to fetch it.",
        )
        for m in todo
        if m.size > cap
    ]
    todo = [m for m in todo if m.size <= cap]
    batches = list(_batches(todo, settings.sync_batch_size, settings.sync_batch_bytes))

    # A folder another client made after the grant's initial sync (periodic discovery): its
    # mail is news to the application (message.created; moved in: message.updated), unlike a
    # grant's first look or a reindex.
    new_folder = live and state == FolderState.SYNCING and last_synced is None

    def store(items: list[ParsedItem], failures: list[FailedItem], vanished: int) -> WriteResult:
        with sessions.begin() as db:
            written = write_batch(
                db,
                grant_id=grant_id,
                folder_id=folder_id,
                uidvalidity=info.uidvalidity,
                items=items,
                failures=failures,
            )
            if vanished and initial:
                FolderRepository(db).shrink_plan(folder_id, vanished)
            # a known message found here was moved or copied: same id, new folder
            MessageRepository(db).clear_orphaned(written.existing_message_ids)
            if (not initial or new_folder) and notify:
                outcome.emitted += notifications.messages(
                    db, grant_id, "message.created", written.new_message_ids
                )
                outcome.emitted += notifications.messages(
                    db, grant_id, "message.updated", written.existing_message_ids
                )
        return written

    if too_large:
        outcome.failed += store([], too_large, 0).failed
    try:
        for index, batch in enumerate(batches):
            unreadable: list[FailedItem] = []
            try:
                fetched = list((outcome.replaced or imap).fetch_messages(batch))
            except ImapProtocolError:
                if reopen is None:
                    raise
                if outcome.replaced is not None:
                    outcome.replaced.close()
                    outcome.replaced = None
                outcome.replaced, fetched, unreadable = _fetch_each(reopen, raw_name, batch)
            items, failures = parse_batch(fetched)
            failures += unreadable
            vanished = len(batch) - len(fetched) - len(unreadable)
            try:
                written = store(items, failures, vanished)
            except Exception as exc:
                if not refused_by_database(exc):
                    raise
                # One value Postgres will not take must cost that message, not the folder.
                written, items = _store_each(store, items, failures, vanished)
            outcome.stored += len(items)
            outcome.failed += written.failed
            outcome.new_message_ids.extend(written.new_message_ids)
            # e.g. renew the caller's lock; True: a higher priority wants the connection
            yield_now = on_batch() if on_batch is not None else False
            spent = time.monotonic() - started > budget
            if (spent or yield_now) and index + 1 < len(batches):
                outcome.remaining = sum(len(b) for b in batches[index + 1 :])
                log.info(
                    "sync budget spent; continuing in a new task"
                    if spent
                    else "connection wanted by the listener or the API; continuing in a new task",
                    extra={"grant_id": grant_id, "folder_id": folder_id, "left": outcome.remaining},
                )
                return outcome

    except BaseException:
        if outcome.replaced is not None:  # nobody else will close it
            outcome.replaced.close()
        raise

    if refetch:
        return outcome  # the folder's own runs keep its marks (UIDNEXT, HIGHESTMODSEQ)
    with sessions.begin() as db:
        folder = FolderRepository(db).get_for_update(folder_id)
        if folder is None:
            return outcome
        if uid_range is not None:
            done = MessageRepository(db).count_placed(folder_id, info.uidvalidity) + len(
                MessageRepository(db).failed_uids(folder_id, info.uidvalidity)
            )
            if done < folder.to_sync:
                return outcome  # other ranges are still running; the last one finishes
        top = max((m.uid for m in todo), default=0)
        planned = folder.uidnext if uid_range is not None else info.uidnext
        if state == FolderState.REINDEXING:
            # the switch: one transaction drops the old view and deletes what is really gone
            messages = MessageRepository(db)
            previous = messages.drop_other_placements(folder_id, info.uidvalidity)
            outcome.deleted_message_ids = messages.delete_unplaced(grant_id, previous)
            folder.uidvalidity = info.uidvalidity
            db.flush()  # the new view is the current one: the flags follow its copies
            messages.refresh_flags(previous)
            folder.reindex_uidvalidity = None
            folder.synced_uid = max(planned or top + 1, top + 1)
            outcome.reindexed = True
            if live:
                outcome.emitted += notifications.folder(db, "folder.updated", folder)
                outcome.emitted += notifications.messages_deleted(
                    db, grant_id, outcome.deleted_message_ids
                )
        folder.synced_uid = max(folder.synced_uid, planned or top + 1, top + 1)
        folder.uidnext = info.uidnext
        if not initial:  # an initial sync keeps the modseq of its plan (see above)
            folder.highestmodseq = info.highestmodseq
        counts = None if condstore else info.status
        folder.status_messages = counts.messages if counts else None
        folder.status_unseen = counts.unseen if counts else None
        folder.last_synced_at = now
        folder.state = outcome.state = FolderState.SYNCED
        outcome.grant_completed = _complete_grant_if_done(db, grant_id, now)
        if outcome.grant_completed:
            completed = GrantRepository(db).get(grant_id)
            assert completed is not None
            outcome.emitted += notifications.grant(db, "grant.imap_sync_completed", completed)
    if not initial and finalize:
        deleted = finalize_orphans(sessions, grant_id, now=now, grace_s=settings.orphan_grace_s)
        outcome.deleted_message_ids.extend(deleted)
        outcome.emitted += len(deleted) if live else 0
    return outcome


def _apply_flag_and_expunge_changes(
    sessions: sessionmaker[Session],
    settings: Settings,
    imap: ImapSession,
    outcome: SyncOutcome,
    grant_id: str,
    folder_id: str,
    uidvalidity: int,
    stored_modseq: int | None,
    server_modseq: int | None,
    *,
    now: datetime,
    notify: bool,
    live: bool,
) -> None:
    """Bring flags and expunges of an already synced folder up to date.

    With QRESYNC, one ``CHANGEDSINCE ... VANISHED`` fetch gives both and nothing else is read.
    Otherwise flags: CONDSTORE ``CHANGEDSINCE`` where the server has it, else a bounded refresh
    of the most recent UIDs; expunges: the stored UIDs the server no longer has. A message
    whose last placement vanished is only marked orphaned: a move shows up as an expunge here
    and an arrival elsewhere, and must keep its id (see :func:`finalize_orphans`).
    """
    # the modseq the stored flags are known to be current as of (None: unknown)
    since = stored_modseq if server_modseq is not None else None
    changes = None
    if since is not None and imap.qresync_enabled:
        # QRESYNC: HIGHESTMODSEQ moves with every flag change and expunge, and one command
        # lists both; only the placements they touch are read (not the whole folder).
        if server_modseq is not None and server_modseq <= since:
            return
        changes = imap.fetch_changes_since(since)
    if changes is not None:
        metas, vanished = changes
        with sessions.begin() as db:
            current = MessageRepository(db).placements_of(
                folder_id, uidvalidity, {m.uid for m in metas} | vanished
            )
        gone = vanished & current.keys()
    else:
        with sessions.begin() as db:
            current = MessageRepository(db).placements_of(folder_id, uidvalidity)
        if not current:
            return
        if since is not None and imap.condstore_enabled:
            moved = server_modseq is not None and server_modseq > since
            metas = imap.fetch_changed_since(since) if moved else []
        else:
            metas = imap.fetch_meta(sorted(current)[-FLAG_REFRESH_LIMIT:])
        gone = set(current) - imap.present_uids(sorted(current))
    with sessions.begin() as db:
        repo = MessageRepository(db)
        updated: list[str] = []
        for meta in metas:
            if meta.uid not in current or meta.uid in gone:
                continue
            message_id, flags = current[meta.uid]
            if sorted(meta.flags) != sorted(flags):
                repo.set_placement_flags(folder_id, uidvalidity, meta.uid, meta.flags, meta.modseq)
                updated.append(message_id)
        left = repo.drop_placements(folder_id, uidvalidity, gone)
        orphans = repo.unplaced(left)
        repo.mark_orphaned(orphans, now)
        updated.extend(m for m in left if m not in orphans)  # still held by another folder
        # the message-level flags follow every copy (combined_flags), not this folder's alone
        repo.refresh_flags(updated)
        if live and notify:
            outcome.emitted += notifications.messages(db, grant_id, "message.updated", updated)


def finalize_orphans(
    sessions: sessionmaker[Session], grant_id: str, *, now: datetime, grace_s: float
) -> list[str]:
    """Delete messages that stayed in no folder for ``grace_s`` and notify ``message.deleted``.

    Idempotent; beat's reconciliation calls it too, for grants whose folders are quiet
    (:func:`pipeline.maintenance.reconcile.finalize_quiet_orphans`).
    """
    with sessions.begin() as db:
        repo = MessageRepository(db)
        repo.lock_grant(grant_id)  # a batch re-placing a moved message commits first, or waits
        expired = repo.expired_orphans(grant_id, now - timedelta(seconds=grace_s))
        deleted = repo.delete_unplaced(grant_id, expired)
        grant = GrantRepository(db).get(grant_id)
        if deleted and grant is not None and grant.initial_sync_completed_at is not None:
            notifications.messages_deleted(db, grant_id, deleted)
    return deleted


def _complete_grant_if_done(db: Session, grant_id: str, now: datetime) -> bool:
    """Mark the grant's initial sync complete once every folder is synced (exactly once)."""
    grant = GrantRepository(db).get_for_update(grant_id)
    if grant is None or grant.initial_sync_completed_at is not None:
        return False
    folders = FolderRepository(db).for_grant(grant_id)
    if any(f.state not in SETTLED for f in folders):
        return False
    grant.initial_sync_completed_at = now
    grant.sync_state = GrantSyncState.SYNCED
    return True


def sync_grant_inline(
    sessions: sessionmaker[Session],
    settings: Settings,
    grant_id: str,
    *,
    now: datetime | None = None,
    slot_wait_s: float = INLINE_SLOT_WAIT_S,
) -> list[SyncOutcome]:
    """Discover and sync every folder of a grant in this process, one after another.

    What the Celery tasks do spread over workers, for tests, tools and small installs.
    Orphans are finalized once, after every folder was synced: a message moved from a folder
    synced first to one synced later keeps its id whatever the grace (even 0). Its sessions
    hold a BULK slot of the account's connection manager (``settings.redis_url``; none is
    counted without Redis), waiting up to ``slot_wait_s`` for one.

    Raises:
        RateLimited: no connection slot of the account came within ``slot_wait_s``.
    """
    from pipeline.grants.service import counting_pool, open_counted_session
    from pipeline.limits import Priority, RateLimiter
    from pipeline.redis import CALL_TIMEOUT_S
    from pipeline.redis import client as redis_client

    client = (
        redis_client(settings.redis_url, timeout_s=CALL_TIMEOUT_S) if settings.redis_url else None
    )
    limiter = RateLimiter(client) if client is not None else None
    pool = counting_pool(limiter, Priority.BULK)

    def opener(db: Session, settings: Settings, grant: Grant) -> ImapSession:
        return open_counted_session(db, settings, grant, pool, limiter, wait_s=slot_wait_s)

    try:
        return _sync_inline(sessions, settings, grant_id, now, opener)
    finally:
        if client is not None:
            client.close()


def _sync_inline(
    sessions: sessionmaker[Session],
    settings: Settings,
    grant_id: str,
    now: datetime | None,
    open_session: Callable[[Session, Settings, Grant], ImapSession],
) -> list[SyncOutcome]:
    with sessions.begin() as db:
        grant = GrantRepository(db).get(grant_id)
        if grant is None or grant.grant_status != "valid":
            return []
        imap = open_session(db, settings, grant)
    outcomes: list[SyncOutcome] = []
    try:
        with sessions.begin() as db:
            grant = GrantRepository(db).get(grant_id)
            assert grant is not None
            changes = discover_folders(
                db, grant, imap.list_folders(), max_folders=settings.max_folders_per_grant
            )
            if grant.sync_state == GrantSyncState.PENDING:
                grant.sync_state = GrantSyncState.SYNCING

        def reopen() -> ImapSession:
            with sessions.begin() as db:
                current = GrantRepository(db).get(grant_id)
                assert current is not None
                return open_session(db, settings, current)

        for folder_id in changes.selectable:
            while True:
                outcome = sync_folder(
                    sessions,
                    settings,
                    imap,
                    grant_id,
                    folder_id,
                    now=now,
                    reopen=reopen,
                    finalize=False,
                )
                if outcome.replaced is not None:
                    imap.close()
                    imap = outcome.replaced
                if not outcome.more:
                    break
            outcomes.append(outcome)
    finally:
        imap.close()
    if outcomes:
        deleted = finalize_orphans(
            sessions, grant_id, now=now or datetime.now(UTC), grace_s=settings.orphan_grace_s
        )
        outcomes[-1].deleted_message_ids.extend(deleted)
    return outcomes
