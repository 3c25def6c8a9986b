"""The sync state enums keep the strings the database and the API hold."""

from __future__ import annotations

import pytest

from pipeline.folders.state import FolderState, run_state
from pipeline.grants.state import GrantSyncState
from pipeline.models import Folder, Grant


def test_states_are_the_stored_strings() -> None:
    assert [s.value for s in FolderState] == [
        "pending",
        "syncing",
        "synced",
        "failed",
        "reindexing",
        "stopped",
    ]
    assert [s.value for s in GrantSyncState] == ["pending", "syncing", "synced", "stopped"]
    assert FolderState("synced") is FolderState.SYNCED  # a value read back from a row
    assert f"{FolderState.STOPPED}" == "stopped"  # as logs and JSON show it


def test_new_rows_start_pending() -> None:
    # the models spell the default out (they sit below the states): it must stay the enum's
    assert Folder.__table__.c.state.default.arg == FolderState.PENDING  # type: ignore[attr-defined]
    assert Grant.__table__.c.sync_state.default.arg == GrantSyncState.PENDING  # type: ignore[attr-defined]


S = FolderState


@pytest.mark.parametrize(
    ("current", "renumbered", "reindex_pending", "synced_before", "expected"),
    [
        # (2) a new folder starts its initial sync; (6) one that failed before completing too
        (S.PENDING, False, False, False, S.SYNCING),
        (S.FAILED, False, False, False, S.SYNCING),
        (S.SYNCING, False, False, False, S.SYNCING),  # budget spent earlier: plan again
        # (7) a folder synced before resumes incrementally after a failure
        (S.FAILED, False, False, True, S.SYNCED),
        (S.SYNCED, False, False, True, S.SYNCED),  # (4)
        # (8) a new UIDVALIDITY, whatever the state: reindex
        (S.PENDING, True, False, False, S.REINDEXING),
        (S.SYNCED, True, False, True, S.REINDEXING),
        (S.FAILED, True, True, True, S.REINDEXING),
        (S.REINDEXING, True, True, True, S.REINDEXING),  # the reindex continues
        # (9) the server went back to the UIDVALIDITY held: the old view stays
        (S.REINDEXING, False, True, True, S.SYNCED),
        (S.FAILED, False, True, True, S.SYNCED),
    ],
)
def test_the_state_a_run_works_in(
    current: FolderState,
    renumbered: bool,
    reindex_pending: bool,
    synced_before: bool,
    expected: FolderState,
) -> None:
    assert (
        run_state(
            current,
            renumbered=renumbered,
            reindex_pending=reindex_pending,
            synced_before=synced_before,
        )
        is expected
    )


def test_only_syncing_and_reindexing_store_the_whole_window() -> None:
    assert {s for s in FolderState if s.initial} == {S.SYNCING, S.REINDEXING}
