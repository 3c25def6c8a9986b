"""The sync states of a folder (``folders.state``), owned here, below the sync that moves
them (:mod:`pipeline.sync`), so folder changes made through the API, beat's maintenance and the
workers name them without importing the sync.

The values are the strings stored in Postgres and shown by the API and the CLI; the enums are
``StrEnum`` so a member is equal to (and stored as) its string, and a value read back from the
database compares equal to the member. A grant's sync state, which follows its folders', is
:mod:`pipeline.grants.state`.

A folder's state machine (one run of it: :func:`pipeline.sync.run.sync_folder`)::

                 (1)            (2)              (3)
    discovered -----> PENDING -----> SYNCING ----------> SYNCED <---+
                         |             |  ^                |  |     | (4)
                         |         (5) |  | (6)        (5) |  +-----+
                         |             v  |                v
                         +---(5)---> FAILED -----------(7)------> SYNCED

    PENDING, SYNCING, SYNCED, FAILED ---(8)---> REINDEXING ---(9)---> SYNCED
    any state ---(10)---> STOPPED ---(11)---> SYNCING

    (1)  the server's LIST shows a new folder (:func:`pipeline.sync.plan.discover_folders`).
    (2)  a run plans the initial sync: the UIDs of the retention window not stored yet.
    (3)  every planned UID is stored or recorded as failed. A run that spends its budget or
         whose worker is killed leaves the folder SYNCING; the next one plans only what is
         missing, so nothing is lost and nothing fetched twice.
    (4)  incremental runs: new mail from ``synced_uid`` on, flag changes, expunges.
    (5)  a run fails (the server, the connection, the database; the folder not selectable):
         the reason is in ``state_detail``. One message's content never fails a run.
    (6)  the next run of a folder never synced plans again.
    (7)  the next run of a folder synced before resumes incrementally.
    (8)  SELECT shows a UIDVALIDITY other than the folder's: the new numbering is indexed
         beside the old view (readers keep the old one; messages keep their ids).
    (9)  the new numbering's window is complete and one transaction switches the view, or the
         server went back to the UIDVALIDITY held.
    (10) the 5th UIDVALIDITY change in a row, whether a sweep, a poll or a run saw it
         (:mod:`pipeline.maintenance.sweep`); ``state_detail`` says so.
    (11) ``retry_at`` passed (the sweep resumes it) or ``grants reindex``, which also puts any
         folder but a REINDEXING one back to SYNCING from UID 0.

A folder gone from the server's LIST is deleted (its messages orphaned, then deleted after a
grace unless another folder holds them).
"""

from __future__ import annotations

from enum import StrEnum


class FolderState(StrEnum):
    """Where a folder is in its sync (``folders.state``); drawn in the module docstring."""

    PENDING = "pending"  # discovered, never synced
    SYNCING = "syncing"  # its initial sync is running (or will resume)
    SYNCED = "synced"  # the window is stored; runs fetch new mail and changes
    FAILED = "failed"  # the last run failed (``state_detail`` says why); the next retries
    REINDEXING = "reindexing"  # a new UIDVALIDITY is indexed beside the old view
    STOPPED = "stopped"  # given up on purpose until ``retry_at`` (``state_detail`` says why)

    @property
    def initial(self) -> bool:
        """Whether a run in this state stores the whole window (not only what is new)."""
        return self in (FolderState.SYNCING, FolderState.REINDEXING)


# Folders in these states have not finished their sync: beat's reconciliation retries those
# left untouched for long (pipeline.maintenance.reconcile).
UNFINISHED = (
    FolderState.FAILED,
    FolderState.SYNCING,
    FolderState.REINDEXING,
    FolderState.PENDING,
)
# A grant's initial sync is complete once every folder is in one of these.
SETTLED = (FolderState.SYNCED, FolderState.STOPPED)


def run_state(
    current: FolderState, *, renumbered: bool, reindex_pending: bool, synced_before: bool
) -> FolderState:
    """The state a run works in, from the folder's state when it starts (transitions 2, 6, 7,
    8 and the second half of 9 in the drawing).

    Args:
        current: The folder's stored state.
        renumbered: The server's UIDVALIDITY differs from the folder's.
        reindex_pending: The folder holds a reindex UIDVALIDITY (a reindex started).
        synced_before: The folder's initial sync completed once (``last_synced_at`` set).
    """
    if renumbered:
        return FolderState.REINDEXING
    state = current
    if state == FolderState.REINDEXING or reindex_pending:
        state = FolderState.SYNCED  # the server went back to the UIDVALIDITY held
    if state == FolderState.FAILED and synced_before:
        return FolderState.SYNCED  # resume incrementally
    if state in (FolderState.PENDING, FolderState.FAILED):
        return FolderState.SYNCING
    return state
