"""A grant's folder with a role is chosen the same way wherever it is looked up.

Messages sit below folders (the folder routes' service deletes a folder's messages), so the
messages service reads the grant's Trash itself instead of through ``FolderRepository``; this
test holds the two reads to one choice: the first by name, then by id, of the folders that
claim the role.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.folders.repository import FolderRepository
from pipeline.messages import service
from pipeline.models import Folder
from tests.support.store import offline_grant

pytestmark = pytest.mark.services


@pytest.mark.parametrize("names", [("Trash", "Deleted", "Bin"), ("Papierkorb", "Corbeille")])
def test_the_messages_service_picks_the_trash_folder_repository_picks(
    pg_sessions: sessionmaker[Session], names: tuple[str, ...]
) -> None:
    grant_id, ids = offline_grant(pg_sessions, "roles", [("INBOX", 1), *((n, 1) for n in names)])
    with pg_sessions.begin() as db:
        assert service._trash(db, grant_id) is None  # no folder claims the role yet
        db.execute(update(Folder).where(Folder.id.in_(ids[1:])).values(role="trash"))
        chosen = FolderRepository(db).by_role(grant_id, "trash")
        assert chosen is not None and chosen.name == min(names)
        assert service._trash(db, grant_id) is chosen
