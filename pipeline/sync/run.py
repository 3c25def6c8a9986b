"""One run of a folder's state machine (:mod:`pipeline.folders.state` draws it), run by Celery
tasks and called directly by tests; and a whole grant synced in this process.

A run (:func:`sync_folder`) goes through these steps, each its own unit of work::

    load     the folder's row (gone or STOPPED: nothing to do)
    select   EXAMINE the folder on the server (not selectable: FAILED)
    open     one transaction: the UIDVALIDITY stop rule, the state the run works in
             (:func:`pipeline.folders.state.run_state`), the UIDs already stored or failed
    plan     what to fetch (:mod:`pipeline.sync.plan`), or ranges for several tasks
    changes  an incremental run: flags, expunges and moves (:mod:`pipeline.sync.changes`)
    batches  fetch, parse and store each batch in its own transaction; a run whose budget is
             spent stops here and a new task continues (:mod:`pipeline.sync.recovery` when the
             server or the database refuses one message)
    finish   one transaction: a reindex's switch to the new view, the folder's marks (UIDNEXT,
             HIGHESTMODSEQ), SYNCED, and the grant's initial sync complete with the last folder
    orphans  an incremental run deletes the grant's messages in no folder past the grace

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from pipeline import notifications
from pipeline.config import Settings
from pipeline.errors import ImapFolderError, ImapProtocolError, ImapThrottledError
from pipeline.folders.repository import FolderRepository
from pipeline.folders.state import SETTLED, FolderState, run_state
from pipeline.folders.views import stored_folder_view
from pipeline.grants.repository import GrantRepository
from pipeline.grants.state import GrantSyncState
from pipeline.imap import ImapSession, SelectInfo
from pipeline.maintenance.sweep import Seen, count_seen_uidvalidity
from pipeline.messages.orphans import finalize_orphans
from pipeline.messages.repository import MessageRepository
from pipeline.messages.views import stored_message_views
from pipeline.models import Folder, Grant
from pipeline.sync.changes import apply_changes
from pipeline.sync.plan import FolderRun, Opened, batches, discover_folders, notify_after, plan
from pipeline.sync.recovery import (
    BatchStore,
    fetch_each,
    record_run_failure,
    refused_by_database,
    store_each,
)
from pipeline.sync.store import FailedItem, ParsedItem, WriteResult, parse_batch, write_batch

log = logging.getLogger(__name__)

INLINE_SLOT_WAIT_S = 60.0  # an inline sync waits this long for a connection slot
# Not a folder state: what a run reports for a folder deleted (or not the grant's) meanwhile.
GONE = "gone"


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
    run = FolderRun(
        sessions,
        settings,
        imap,
        grant_id,
        folder_id,
        now=now or datetime.now(UTC),
        budget_s=settings.sync.chunk_budget_s if budget_s is None else budget_s,
        on_batch=on_batch,
        uid_range=uid_range,
        range_messages=range_messages,
        reopen=reopen,
        finalize=finalize,
    )
    try:
        return _run(run)
    except ImapThrottledError:
        # A throttle (the provider's, or our own login budget: RateLimited) is a later
        # reschedule, not a failure of the folder: its state stays as it was.
        raise
    except Exception as exc:
        record_run_failure(sessions, folder_id, exc)
        raise


def _run(run: FolderRun) -> SyncOutcome:
    """The steps of a run (see the module docstring)."""
    row = _load(run)
    if isinstance(row, SyncOutcome):
        return row
    # Without CONDSTORE the poll notices expunges and \Seen changes by STATUS MESSAGES and
    # UNSEEN (pipeline.maintenance.sweep): a STATUS before the SELECT gives this run's baseline.
    condstore = run.imap.enable_condstore()
    try:
        info = run.imap.select(
            row.raw_name, readonly=True, want_uidnext=True, want_status=not condstore
        )
    except ImapFolderError as exc:
        with run.sessions.begin() as db:
            FolderRepository(db).set_state(run.folder_id, FolderState.FAILED, str(exc))
        return SyncOutcome(run.folder_id, FolderState.FAILED)
    opened = _open(run, row, info, condstore)
    if isinstance(opened, SyncOutcome):
        return opened
    planned = plan(run, opened)
    outcome = SyncOutcome(run.folder_id, opened.state)
    if planned.ranges:
        outcome.ranges = planned.ranges
        return outcome
    refetch = run.uid_range is not None and not opened.initial  # some UIDs of a synced folder
    if not opened.initial and not refetch:
        outcome.emitted += apply_changes(run, opened)
    todo, too_large = batches(run.settings, planned.todo)
    if not _fetch_and_store(run, opened, todo, too_large, outcome):
        return outcome  # stopped early: a new task continues
    if refetch:
        return outcome  # the folder's own runs keep its marks (UIDNEXT, HIGHESTMODSEQ)
    if not _finish(run, opened, max((uid for batch in todo for uid in batch), default=0), outcome):
        return outcome  # the folder is gone, or other ranges still run
    if not opened.initial and run.finalize:
        deleted = finalize_orphans(
            run.sessions, run.grant_id, now=run.now, grace_s=run.settings.sync.orphan_grace_s
        )
        outcome.deleted_message_ids.extend(deleted)
        outcome.emitted += len(deleted) if opened.live else 0
    return outcome


@dataclass(frozen=True)
class _Row:
    """The folder's row as the run's first transaction read it."""

    raw_name: str
    state: FolderState
    synced_uid: int
    stored_modseq: int | None
    last_synced: datetime | None
    live: bool  # the grant's initial sync is complete


def _load(run: FolderRun) -> _Row | SyncOutcome:
    """The folder's row, or the outcome of a run with nothing to do."""
    with run.sessions.begin() as db:
        folder = FolderRepository(db).get(run.folder_id)
        if folder is None or folder.grant_id != run.grant_id:
            return SyncOutcome(run.folder_id, GONE)
        if folder.state == FolderState.STOPPED:
            # the UIDVALIDITY stop rule (pipeline.maintenance.sweep)
            return SyncOutcome(run.folder_id, FolderState.STOPPED)
        grant = GrantRepository(db).get(run.grant_id)
        return _Row(
            raw_name=folder.raw_name,
            state=FolderState(folder.state),
            synced_uid=folder.synced_uid,
            stored_modseq=folder.highestmodseq,
            last_synced=folder.last_synced_at,
            live=grant is not None and grant.initial_sync_completed_at is not None,
        )


def _open(run: FolderRun, row: _Row, info: SelectInfo, condstore: bool) -> Opened | SyncOutcome:
    """The run's transition (:func:`pipeline.folders.state.run_state`), in one transaction with
    the stop rule and what the run can meet that is stored or failed already."""
    grant_id, folder_id = run.grant_id, run.folder_id
    synced_uid, stored_modseq = row.synced_uid, row.stored_modseq
    with run.sessions.begin() as db:
        folder = FolderRepository(db).get_for_update(folder_id)
        assert folder is not None
        if folder.uidvalidity is None:
            folder.uidvalidity = info.uidvalidity
        else:
            seen = count_seen_uidvalidity(db, grant_id, folder_id, run.now, status=info)
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
        renumbered = folder.uidvalidity != info.uidvalidity
        state = run_state(
            row.state,
            renumbered=renumbered,
            reindex_pending=folder.reindex_uidvalidity is not None,
            synced_before=folder.last_synced_at is not None,
        )
        if renumbered:
            # The server renumbered the folder. Index the new UIDVALIDITY beside the old view
            # (readers keep seeing the old one) and switch at once when it is complete.
            if folder.reindex_uidvalidity != info.uidvalidity:
                log.warning(
                    "UIDVALIDITY changed; reindexing",
                    extra={"grant_id": grant_id, "folder_id": folder_id},
                )
                folder.reindex_uidvalidity = info.uidvalidity
                folder.highestmodseq = None  # modseqs of the old numbering mean nothing now
        else:
            # the server went back to the validity we hold (also after a failed reindex run)
            folder.reindex_uidvalidity = None
        folder.state = state
        folder.state_detail = None
        # Only the UIDs this run can meet: its range, or (incremental) the new ones.
        relevant: tuple[int, int | None] = (
            run.uid_range if run.uid_range else (0, None) if state.initial else (synced_uid, None)
        )
        messages = MessageRepository(db)
        placed = messages.placed_uids(folder_id, info.uidvalidity, relevant)
        failed = messages.failed_uids(folder_id, info.uidvalidity, relevant)
    return Opened(
        raw_name=row.raw_name,
        state=state,
        synced_uid=synced_uid,
        stored_modseq=stored_modseq,
        last_synced=row.last_synced,
        live=row.live,
        notify=notify_after(row.live, row.last_synced, run.now),
        condstore=condstore,
        info=info,
        placed=frozenset(placed),
        failed=frozenset(failed),
    )


def _fetch_and_store(
    run: FolderRun,
    opened: Opened,
    todo: list[list[int]],
    too_large: list[FailedItem],
    outcome: SyncOutcome,
) -> bool:
    """Fetch, parse and store every batch; False when the run stopped early (its budget spent,
    or the connection wanted by the listener or the API), with ``outcome.remaining`` left."""
    store = _batch_store(run, opened, outcome)
    if too_large:
        outcome.failed += store([], too_large, 0).failed
    try:
        for index, batch in enumerate(todo):
            _fetch_and_store_batch(run, opened, batch, store, outcome)
            # e.g. renew the caller's lock; True: a higher priority wants the connection
            yield_now = run.on_batch() if run.on_batch is not None else False
            spent = run.spent()
            if (spent or yield_now) and index + 1 < len(todo):
                outcome.remaining = sum(len(b) for b in todo[index + 1 :])
                log.info(
                    "sync budget spent; continuing in a new task"
                    if spent
                    else "connection wanted by the listener or the API; continuing in a new task",
                    extra={
                        "grant_id": run.grant_id,
                        "folder_id": run.folder_id,
                        "left": outcome.remaining,
                    },
                )
                return False
    except BaseException:
        if outcome.replaced is not None:  # nobody else will close it
            outcome.replaced.close()
        raise
    return True


def _fetch_and_store_batch(
    run: FolderRun, opened: Opened, batch: list[int], store: BatchStore, outcome: SyncOutcome
) -> None:
    """One batch: fetched (again one by one on a fresh session if the server breaks it off),
    parsed, stored (one by one if the database refuses it)."""
    unreadable: list[FailedItem] = []
    try:
        fetched = list((outcome.replaced or run.imap).fetch_messages(batch))
    except ImapProtocolError:
        if run.reopen is None:
            raise
        if outcome.replaced is not None:
            outcome.replaced.close()
            outcome.replaced = None
        outcome.replaced, fetched, unreadable = fetch_each(run.reopen, opened.raw_name, batch)
    items, failures = parse_batch(fetched)
    failures += unreadable
    vanished = len(batch) - len(fetched) - len(unreadable)
    try:
        written = store(items, failures, vanished)
    except Exception as exc:
        if not refused_by_database(exc):
            raise
        # One value Postgres will not take must cost that message, not the folder.
        written, items = store_each(store, items, failures, vanished)
    outcome.stored += len(items)
    outcome.failed += written.failed
    outcome.new_message_ids.extend(written.new_message_ids)


def _batch_store(run: FolderRun, opened: Opened, outcome: SyncOutcome) -> BatchStore:
    """Stores one batch in its own transaction, with its notifications."""
    grant_id, folder_id = run.grant_id, run.folder_id
    notify = (not opened.initial or opened.new_folder) and opened.notify

    def store(items: list[ParsedItem], failures: list[FailedItem], vanished: int) -> WriteResult:
        with run.sessions.begin() as db:
            written = write_batch(
                db,
                grant_id=grant_id,
                folder_id=folder_id,
                uidvalidity=opened.info.uidvalidity,
                items=items,
                failures=failures,
            )
            if vanished and opened.initial:
                FolderRepository(db).shrink_plan(folder_id, vanished)
            # a known message found here was moved or copied: same id, new folder
            MessageRepository(db).clear_orphaned(written.existing_message_ids)
            if notify:
                outcome.emitted += notifications.messages(
                    db,
                    grant_id,
                    "message.created",
                    stored_message_views(db, written.new_message_ids),
                )
                outcome.emitted += notifications.messages(
                    db,
                    grant_id,
                    "message.updated",
                    stored_message_views(db, written.existing_message_ids),
                )
        return written

    return store


def _finish(run: FolderRun, opened: Opened, top: int, outcome: SyncOutcome) -> bool:
    """Mark the folder SYNCED (after a reindex's switch) and the grant complete with its last
    folder; a range that is not the last to finish leaves that to the last. False when the
    folder was not marked (gone meanwhile, or other ranges still running)."""
    info = opened.info
    with run.sessions.begin() as db:
        folder = FolderRepository(db).get_for_update(run.folder_id)
        if folder is None:
            return False
        if run.uid_range is not None:
            messages = MessageRepository(db)
            done = messages.count_placed(run.folder_id, info.uidvalidity) + len(
                messages.failed_uids(run.folder_id, info.uidvalidity)
            )
            if done < folder.to_sync:
                return False  # other ranges are still running; the last one finishes
        planned = folder.uidnext if run.uid_range is not None else info.uidnext
        if opened.state == FolderState.REINDEXING:
            _switch(db, run, opened, folder, max(planned or top + 1, top + 1), outcome)
        folder.synced_uid = max(folder.synced_uid, planned or top + 1, top + 1)
        folder.uidnext = info.uidnext
        if not opened.initial:  # an initial sync keeps the modseq of its plan (see above)
            folder.highestmodseq = info.highestmodseq
        counts = None if opened.condstore else info.status
        folder.status_messages = counts.messages if counts else None
        folder.status_unseen = counts.unseen if counts else None
        folder.last_synced_at = run.now
        folder.state = outcome.state = FolderState.SYNCED
        outcome.grant_completed = _complete_grant_if_done(db, run.grant_id, run.now)
        if outcome.grant_completed:
            completed = GrantRepository(db).get(run.grant_id)
            assert completed is not None
            outcome.emitted += notifications.grant(db, "grant.imap_sync_completed", completed)
    return True


def _switch(
    db: Session,
    run: FolderRun,
    opened: Opened,
    folder: Folder,
    synced_uid: int,
    outcome: SyncOutcome,
) -> None:
    """A reindex's switch: one transaction drops the old view and deletes what is really gone."""
    uidvalidity = opened.info.uidvalidity
    messages = MessageRepository(db)
    previous = messages.drop_other_placements(run.folder_id, uidvalidity)
    outcome.deleted_message_ids = messages.delete_unplaced(run.grant_id, previous)
    folder.uidvalidity = uidvalidity
    db.flush()  # the new view is the current one: the flags follow its copies
    messages.refresh_flags(previous)
    folder.reindex_uidvalidity = None
    folder.synced_uid = synced_uid
    outcome.reindexed = True
    if opened.live:
        outcome.emitted += notifications.folder(
            db, "folder.updated", stored_folder_view(db, folder)
        )
        outcome.emitted += notifications.messages_deleted(
            db, run.grant_id, outcome.deleted_message_ids
        )


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
        return sync_grant_with(sessions, settings, grant_id, opener, now=now)
    finally:
        if client is not None:
            client.close()


def sync_grant_with(
    sessions: sessionmaker[Session],
    settings: Settings,
    grant_id: str,
    open_session: Callable[[Session, Settings, Grant], ImapSession],
    *,
    now: datetime | None = None,
) -> list[SyncOutcome]:
    """:func:`sync_grant_inline` on the sessions ``open_session`` gives (tests hand in a fake)."""
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
                db, grant, imap.list_folders(), max_folders=settings.sync.max_folders_per_grant
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
            sessions, grant_id, now=now or datetime.now(UTC), grace_s=settings.sync.orphan_grace_s
        )
        outcomes[-1].deleted_message_ids.extend(deleted)
    return outcomes
