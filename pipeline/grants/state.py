"""The sync state of a grant (``grants.sync_state``), owned here, below the sync that moves it
(:mod:`pipeline.sync`), so beat's maintenance, the CLI and the workers name it without importing
the sync.

The values are the strings stored in Postgres and shown by the API and the CLI (a ``StrEnum``:
a member is equal to, and stored as, its string). A folder's states, which this one follows,
are drawn in :mod:`pipeline.folders.state`.

A grant's ``sync_state`` follows its folders::

    PENDING --first discovery--> SYNCING --every folder SYNCED or STOPPED--> SYNCED
                                    |  ^                                     |
                  the Inbox STOPPED |  | resumed, initial sync    the Inbox  |
                                    v  | not complete             STOPPED    |
                                   STOPPED <---------------------------------+
                                      |
                                      +--- resumed, initial sync complete ---> SYNCED
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, TypeGuard

if TYPE_CHECKING:
    from pipeline.models import Grant


class GrantSyncState(StrEnum):
    """Where a grant is in its sync (``grants.sync_state``); drawn in the module docstring."""

    PENDING = "pending"  # created, no folder discovered yet
    SYNCING = "syncing"  # its initial sync is running
    SYNCED = "synced"  # every folder synced (or stopped) once
    STOPPED = "stopped"  # the Inbox is stopped (UIDVALIDITY stop rule); nothing is synced


# Grants whose initial sync has not completed (beat looks for those that stalled).
GRANT_IN_INITIAL_SYNC = (GrantSyncState.PENDING, GrantSyncState.SYNCING)


def grant_syncs(grant: Grant | None) -> TypeGuard[Grant]:
    """The grant exists, its login works (``grant_status`` valid) and it is not stopped: work
    for it may go on (a task that finds otherwise does nothing)."""
    return (
        grant is not None
        and grant.grant_status == "valid"
        and grant.sync_state != GrantSyncState.STOPPED
    )
