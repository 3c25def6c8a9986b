"""A grant's folder with a role is chosen the same way wherever it is looked up.

Every role lookup asks :func:`pipeline.messages.roles.folder_with_role` (messages sit below
folders, so the query lives there) or orders by its ``ROLE_PREFERENCE``:
``FolderRepository.by_role``, the Trash a deleted message moves to, the Sent folder a sent
message's copy is filed in, the Drafts folder a ``use_draft`` send's copy leaves, the Drafts a
new draft goes to, and the Inbox and Sent the listener watches. When several folders claim the
role, all of them choose the first by name, then by id.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.drafts import repository as drafts_repository
from pipeline.drafts import server as drafts_server
from pipeline.folders.repository import FolderRepository
from pipeline.listener.repository import WatchRepository
from pipeline.messages import service as message_service
from pipeline.messages.roles import DRAFTS_ROLE, SENT_ROLE, TRASH_ROLE, folder_with_role
from pipeline.models import Folder
from pipeline.outbound import sent_copy
from tests.support.store import offline_grant

pytestmark = pytest.mark.services

# Raw names, or "raw=name" where the name the API shows differs (a modified UTF-7 name is
# decoded): the first written, and the first by raw name, is never the first by name, so
# neither the order of the rows nor an index on raw names wins; in the last, two folders share
# a name and the id decides.
NAMES = [
    ("Trash", "Deleted", "Bin"),
    ("A=Papierkorb", "B=Corbeille"),
    ("Q=Zz", "R=Aa", "S=Aa"),
]


class _Drafts:
    """The IMAP session `_remove_from_drafts` is handed: records the folder it selects."""

    def __init__(self) -> None:
        self.selected: list[str] = []

    def select(self, name: str, readonly: bool) -> None:
        self.selected.append(name)

    def search_uids(self, *criteria: str) -> list[int]:
        return []


def _grant(pg_sessions: sessionmaker[Session], raw_names: tuple[str, ...]) -> tuple[str, list[str]]:
    """A grant with Inbox and these folders (:data:`NAMES`)."""
    folders = [("INBOX", 1), *((n.split("=")[0], 1) for n in raw_names)]
    grant_id, ids = offline_grant(pg_sessions, "roles", folders)
    with pg_sessions.begin() as db:
        for folder_id, raw in zip(ids[1:], raw_names, strict=True):
            db.execute(update(Folder).where(Folder.id == folder_id).values(name=raw.split("=")[-1]))
    return grant_id, ids


def _claim(db: Session, ids: list[str], role: str) -> None:
    """The folders claim the role one by one, in the order given (the order a query without
    an ORDER BY would likely meet them in)."""
    for folder_id in ids:
        db.execute(update(Folder).where(Folder.id == folder_id).values(role=role))


@pytest.mark.parametrize("role", [TRASH_ROLE, SENT_ROLE, DRAFTS_ROLE])
@pytest.mark.parametrize("names", NAMES)
def test_the_role_lookup_and_folder_repository_pick_the_first_by_name_then_id(
    pg_sessions: sessionmaker[Session], names: tuple[str, ...], role: str
) -> None:
    grant_id, ids = _grant(pg_sessions, names)
    with pg_sessions.begin() as db:
        assert folder_with_role(db, grant_id, role) is None  # no folder claims the role yet
        assert FolderRepository(db).by_role(grant_id, role) is None
        _claim(db, ids[1:], role)
        claimants = sorted((db.get_one(Folder, i) for i in ids[1:]), key=_name_then_id)
        assert folder_with_role(db, grant_id, role) is claimants[0]
        assert FolderRepository(db).by_role(grant_id, role) is claimants[0]


@pytest.mark.parametrize("names", NAMES)
def test_a_deleted_message_moves_to_the_trash_folder_repository_picks(
    pg_sessions: sessionmaker[Session], names: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    moved_to: list[Any] = []
    monkeypatch.setattr(
        message_service, "update_message", lambda *a, folder, **k: moved_to.append(folder)
    )
    grant_id, ids = _grant(pg_sessions, names)
    with pg_sessions.begin() as db:
        _claim(db, ids[1:], TRASH_ROLE)
        grant = SimpleNamespace(id=grant_id)
        message_service.delete_message(db, Any, grant, SimpleNamespace(id="m"))  # type: ignore[arg-type]
        assert moved_to == [FolderRepository(db).by_role(grant_id, TRASH_ROLE)]


@pytest.mark.parametrize("names", NAMES)
def test_a_use_draft_send_removes_its_copy_from_the_drafts_folder_repository_picks(
    pg_sessions: sessionmaker[Session], names: tuple[str, ...]
) -> None:
    grant_id, ids = _grant(pg_sessions, names)
    imap = _Drafts()
    with pg_sessions.begin() as db:
        _claim(db, ids[1:], DRAFTS_ROLE)
        row = SimpleNamespace(message_id_header="<a@example.org>")
        sent_copy._remove_from_drafts(db, SimpleNamespace(id=grant_id), row, imap)  # type: ignore[arg-type]
        chosen = FolderRepository(db).by_role(grant_id, DRAFTS_ROLE)
        assert chosen is not None and imap.selected == [chosen.raw_name]


@pytest.mark.parametrize("role", ["inbox", SENT_ROLE])
@pytest.mark.parametrize("names", NAMES)
def test_the_listener_watches_the_folder_repository_picks(
    pg_sessions: sessionmaker[Session], names: tuple[str, ...], role: str
) -> None:
    grant_id, ids = _grant(pg_sessions, names)
    with pg_sessions.begin() as db:
        _claim(db, ids[1:], role)
        watched = [w.folder_id for w in WatchRepository(db).watched() if w.grant_id == grant_id]
        chosen = FolderRepository(db).by_role(grant_id, role)
        assert chosen is not None and watched == [chosen.id]


@pytest.mark.parametrize("names", NAMES)
def test_a_new_draft_goes_to_the_drafts_folder_repository_picks(
    pg_sessions: sessionmaker[Session], names: tuple[str, ...]
) -> None:
    grant_id, ids = _grant(pg_sessions, names)
    with pg_sessions.begin() as db:
        _claim(db, ids[1:], DRAFTS_ROLE)
        grant = SimpleNamespace(id=grant_id)
        chosen = FolderRepository(db).by_role(grant_id, DRAFTS_ROLE)
        assert drafts_server._drafts_folder(db, grant) is chosen  # type: ignore[arg-type]
        assert drafts_repository.drafts_folders(db, grant_id)[0] is chosen


def _name_then_id(folder: Folder) -> tuple[str, str]:
    return (folder.name, str(folder.id))
