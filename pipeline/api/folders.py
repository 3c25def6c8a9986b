"""Folders: ``GET /v3/grants/{grant_id}/folders`` and ``.../folders/{folder_id}``.

``{folder_id}`` is the folder's id or its name. A folder's counts are the messages stored for its
current UIDVALIDITY (the retention window), not the server's totals.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session

from pipeline.api import queries
from pipeline.api.deps import Db, PathGrant, ok, page
from pipeline.api.errors import not_found
from pipeline.models import Folder, Grant

router = APIRouter(tags=["folders"])


def _parent_name(folder: Folder) -> str | None:
    if not folder.delimiter or folder.delimiter not in folder.name:
        return None
    return folder.name.rsplit(folder.delimiter, 1)[0]


def folder_views(db: Session, grant: Grant, folders: list[Folder]) -> list[dict[str, Any]]:
    """Folders in the Nylas v3 shape, with counts, parents and child counts."""
    everything = queries.list_folders(db, grant.id)
    by_name = {f.name: f for f in everything}
    children: dict[str, int] = {}
    for f in everything:
        parent = by_name.get(_parent_name(f) or "")
        if parent is not None:
            children[parent.id] = children.get(parent.id, 0) + 1
    totals = queries.folder_totals(db, [f.id for f in folders])
    views = []
    for f in folders:
        parent = by_name.get(_parent_name(f) or "")
        counts = totals.get(f.id, queries.FolderTotals(0, 0))
        views.append(
            {
                "id": f.id,
                "grant_id": f.grant_id,
                "object": "folder",
                "name": f.name,
                "parent_id": parent.id if parent is not None else None,
                "attributes": list(f.attributes),
                "role": f.role,
                "system_folder": f.role is not None,
                "child_count": children.get(f.id, 0),
                "total_count": counts.total,
                "unread_count": counts.unread,
                "sync_state": f.state,
            }
        )
    return views


def path_folder(db: Session, grant: Grant, folder_id: str) -> Folder:
    """The grant's folder named in the path (id or name), or a 404."""
    folder = queries.find_folder(db, grant.id, folder_id)
    if folder is None:
        raise not_found(f"No folder {folder_id!r} for this grant: GET .../folders lists them.")
    return folder


@router.get("/grants/{grant_id}/folders", summary="List folders")
def list_folders(request: Request, db: Db, grant: PathGrant) -> dict[str, Any]:
    """Every folder of the grant (one page: accounts have few folders)."""
    return page(request, folder_views(db, grant, queries.list_folders(db, grant.id)), None)


@router.get("/grants/{grant_id}/folders/{folder_id}", summary="Get a folder")
def get_folder(request: Request, db: Db, grant: PathGrant, folder_id: str) -> dict[str, Any]:
    """One folder, by id or name."""
    (view,) = folder_views(db, grant, [path_folder(db, grant, folder_id)])
    return ok(request, view)
