"""Folders: list, get, create, rename (PUT) and delete, mirrored on the IMAP server.

``{folder_id}`` is the folder's id or its name. A folder's counts are the messages stored for its
current UIDVALIDITY (the retention window), not the server's totals. Create, rename and delete
are made on the server by :mod:`pipeline.folders.service`; the routes find the folders the path
and body name, commit, and answer.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from pipeline.api.deps import Db, LiveGrant, State, notify_after_commit, ok, page
from pipeline.api.errors import invalid_request, not_found, request_id_of
from pipeline.api.messages import apply_select, parse_select
from pipeline.api.pagination import MAX_LIMIT, MAX_TOKEN_CHARS
from pipeline.folders import service
from pipeline.folders.repository import FolderRepository, FolderTotals
from pipeline.models import Folder, Grant

router = APIRouter(tags=["folders"])


def folder_views(db: Session, grant: Grant, folders: list[Folder]) -> list[dict[str, Any]]:
    """Folders in the Nylas v3 shape, with counts, parents and child counts."""
    everything = FolderRepository(db).listed(grant.id)
    by_name = {f.name: f for f in everything}
    children: dict[str, int] = {}
    for f in everything:
        parent = by_name.get(service.parent_name(f) or "")
        if parent is not None:
            children[parent.id] = children.get(parent.id, 0) + 1
    totals = FolderRepository(db).totals([f.id for f in folders])
    views = []
    for f in folders:
        parent = by_name.get(service.parent_name(f) or "")
        counts = totals.get(f.id, FolderTotals(0, 0))
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
    folder = FolderRepository(db).find(grant.id, folder_id)
    if folder is None:
        raise not_found(f"No folder {folder_id!r} for this grant: GET .../folders lists them.")
    return folder


FOLDER_TOKEN_VERSION = 1


def _folder_token(offset: int) -> str:
    raw = json.dumps({"v": FOLDER_TOKEN_VERSION, "o": offset}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def _folder_offset(token: str) -> int:
    """The position a folders page token names; 400 for anything this API did not make."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if raw.get("v") == FOLDER_TOKEN_VERSION and set(raw) == {"v", "o"}:
            offset = raw["o"]
            if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
                return offset
    except (ValueError, TypeError, AttributeError, binascii.Error):
        pass
    raise invalid_request("page_token is not a token this API returned.")


@router.get("/grants/{grant_id}/folders", summary="List folders")
def list_folders(
    request: Request,
    db: Db,
    grant: LiveGrant,
    limit: Annotated[int | None, Query(ge=1, le=MAX_LIMIT)] = None,
    page_token: Annotated[str | None, Query(max_length=MAX_TOKEN_CHARS)] = None,
    select: Annotated[str | None, Query(max_length=1000)] = None,
    parent_id: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """The grant's folders: Inbox, the other system folders, then the rest. One page unless
    ``limit`` is given (accounts have few folders); ``page_token`` is a position in that order
    (a folder created or deleted between pages can shift it by one). ``parent_id`` keeps the
    children of that folder."""
    views = folder_views(db, grant, FolderRepository(db).listed(grant.id))
    if parent_id is not None:
        parent = path_folder(db, grant, parent_id)
        views = [v for v in views if v["parent_id"] == parent.id]
    start = _folder_offset(page_token) if page_token is not None else 0
    end = len(views) if limit is None else start + limit
    next_cursor = _folder_token(end) if end < len(views) else None
    selected = parse_select(select)
    return page(request, [apply_select(v, selected) for v in views[start:end]], next_cursor)


@router.get("/grants/{grant_id}/folders/{folder_id}", summary="Get a folder")
def get_folder(
    request: Request,
    db: Db,
    grant: LiveGrant,
    folder_id: str,
    select: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """One folder, by id or name."""
    (view,) = folder_views(db, grant, [path_folder(db, grant, folder_id)])
    return ok(request, apply_select(view, parse_select(select)))


class FolderCreate(BaseModel):
    """Body of ``POST /v3/grants/{grant_id}/folders``."""

    model_config = ConfigDict(extra="ignore")  # Google/Microsoft-only colors are ignored

    name: str = Field(min_length=1, max_length=255)
    parent_id: str | None = Field(default=None, max_length=64)


class FolderUpdate(BaseModel):
    """Body of ``PUT /v3/grants/{grant_id}/folders/{folder_id}``."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, min_length=1, max_length=255)
    parent_id: str | None = Field(default=None, max_length=1000)


@router.post("/grants/{grant_id}/folders", summary="Create a folder")
def create_folder(
    request: Request, db: Db, api: State, grant: LiveGrant, body: FolderCreate
) -> dict[str, Any]:
    """Create the folder on the server (CREATE), then record it."""
    service.checked_name(body.name)  # a bad name is answered before an unknown parent
    parent = path_folder(db, grant, body.parent_id) if body.parent_id else None
    folder = service.create_folder(db, api, grant, body.name, parent)
    db.commit()
    notify_after_commit(api)
    (view,) = folder_views(db, grant, [folder])
    return ok(request, view)


@router.put("/grants/{grant_id}/folders/{folder_id}", summary="Rename or move a folder")
def rename_folder(
    request: Request, db: Db, api: State, grant: LiveGrant, folder_id: str, body: FolderUpdate
) -> dict[str, Any]:
    """Rename and/or move the folder on the server (RENAME), then record it with its
    subfolders."""
    folder = path_folder(db, grant, folder_id)
    if body.name is not None or body.parent_id is not None:
        service.check_rename(folder, body.name)  # answered before an unknown parent
        parent = path_folder(db, grant, body.parent_id) if body.parent_id is not None else None
        if service.rename_folder(db, api, grant, folder, body.name, parent):
            db.commit()
            notify_after_commit(api)
    (view,) = folder_views(db, grant, [folder])
    return ok(request, view)


@router.delete("/grants/{grant_id}/folders/{folder_id}", summary="Delete a folder")
def delete_folder(
    request: Request, db: Db, api: State, grant: LiveGrant, folder_id: str
) -> dict[str, Any]:
    """Delete the folder on the server (DELETE), then forget it and its placements."""
    service.delete_folder(db, api, grant, path_folder(db, grant, folder_id))
    db.commit()
    notify_after_commit(api)
    return {"request_id": request_id_of(request)}
