"""The sync state enums keep the strings the database and the API hold."""

from __future__ import annotations

from pipeline.models import Folder, Grant
from pipeline.sync.state import FolderState, GrantSyncState


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
    # the models spell the default out (they sit below pipeline.sync): it must stay the enum's
    assert Folder.__table__.c.state.default.arg == FolderState.PENDING  # type: ignore[attr-defined]
    assert Grant.__table__.c.sync_state.default.arg == GrantSyncState.PENDING  # type: ignore[attr-defined]
