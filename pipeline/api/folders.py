"""Folders: list, get, create, rename (PUT) and delete, mirrored on the IMAP server.

``{folder_id}`` is the folder's id or its name. A folder's counts are the messages stored for its
current UIDVALIDITY (the retention window), not the server's totals.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from pipeline import notifications
from pipeline.api import queries
from pipeline.api.deps import Db, LiveGrant, State, notify_after_commit, ok, page
from pipeline.api.errors import invalid_request, not_found, request_id_of
from pipeline.api.messages import apply_select, parse_select
from pipeline.api.pagination import MAX_LIMIT, MAX_TOKEN_CHARS
from pipeline.grants.interactive import grant_imap
from pipeline.messages.repository import MessageRepository
from pipeline.models import Folder, Grant
from pipeline.sync.state import FolderState

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
    views = folder_views(db, grant, queries.list_folders(db, grant.id))
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


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or any(ch in name for ch in "\r\n\x00*%"):
        raise invalid_request("A folder name may not be empty or contain *, %, NUL or line breaks.")
    return name


def _delimiter(db: Session, grant: Grant) -> str | None:
    for folder in queries.list_folders(db, grant.id):
        if folder.delimiter:
            return folder.delimiter
    return None


@router.post("/grants/{grant_id}/folders", summary="Create a folder")
def create_folder(
    request: Request, db: Db, api: State, grant: LiveGrant, body: FolderCreate
) -> dict[str, Any]:
    """Create the folder on the server (CREATE), then record it."""
    name = _check_name(body.name)
    if body.parent_id:
        parent = path_folder(db, grant, body.parent_id)
        delimiter = parent.delimiter or _delimiter(db, grant)
        if not delimiter:
            raise invalid_request("This server has no folder hierarchy: create a top folder.")
        name = parent.name + delimiter + name
    if queries.find_folder(db, grant.id, name) is not None:
        raise invalid_request(f"A folder named {name!r} exists already.")
    with grant_imap(db, api, grant, ops=2) as imap:
        raw_name = imap.create_folder(name)
        listed = {f.raw_name: f for f in imap.list_folders()}
    info = listed.get(raw_name)
    folder = queries.add_folder(
        db,
        Folder(
            grant_id=grant.id,
            name=info.name if info else name,
            raw_name=raw_name,
            delimiter=info.delimiter if info else _delimiter(db, grant),
            role=info.role if info else None,
            attributes=list(info.attributes) if info else [],
            state=FolderState.PENDING,
        ),
    )
    notifications.folder(db, "folder.created", folder)
    db.commit()
    notify_after_commit(api)
    (view,) = folder_views(db, grant, [folder])
    return ok(request, view)


def _new_name(db: Session, grant: Grant, folder: Folder, body: FolderUpdate) -> str:
    """The full name a rename/move asks for. ``name`` renames the folder where it is (a name
    holding the hierarchy delimiter is a full path, as on create); ``parent_id`` puts it under
    that folder, joined with the server's delimiter."""
    delimiter = folder.delimiter or _delimiter(db, grant)
    current_parent = _parent_name(folder)
    leaf = (
        folder.name
        if current_parent is None
        else folder.name[len(current_parent) + len(folder.delimiter or "") :]
    )
    new_leaf = leaf if body.name is None else _check_name(body.name)
    if body.parent_id is not None:
        parent = path_folder(db, grant, body.parent_id)
        if not delimiter:
            raise invalid_request("This server has no folder hierarchy: folders cannot nest.")
        if parent.id == folder.id or parent.name.startswith(folder.name + delimiter):
            raise invalid_request("A folder cannot be moved into itself or its subfolders.")
        return parent.name + delimiter + new_leaf
    if current_parent is not None and delimiter and delimiter not in new_leaf:
        return current_parent + delimiter + new_leaf
    return new_leaf


@router.put("/grants/{grant_id}/folders/{folder_id}", summary="Rename or move a folder")
def rename_folder(
    request: Request, db: Db, api: State, grant: LiveGrant, folder_id: str, body: FolderUpdate
) -> dict[str, Any]:
    """Rename and/or move the folder on the server (RENAME), then record it with its
    subfolders."""
    folder = path_folder(db, grant, folder_id)
    if body.name is None and body.parent_id is None:
        (view,) = folder_views(db, grant, [folder])
        return ok(request, view)
    if folder.role == "inbox":
        raise invalid_request("The Inbox cannot be renamed or moved.")
    name = _new_name(db, grant, folder, body)
    if name == folder.name:
        (view,) = folder_views(db, grant, [folder])
        return ok(request, view)
    if queries.find_folder(db, grant.id, name) is not None:
        raise invalid_request(f"A folder named {name!r} exists already.")
    old_raw = folder.raw_name
    with grant_imap(db, api, grant, ops=1) as imap:
        new_raw = imap.rename_folder(old_raw, name)
    for renamed in queries.rename_folder_rows(db, grant.id, old_raw, new_raw, folder.delimiter):
        notifications.folder(db, "folder.updated", renamed)
    db.commit()
    notify_after_commit(api)
    (view,) = folder_views(db, grant, [folder])
    return ok(request, view)


@router.delete("/grants/{grant_id}/folders/{folder_id}", summary="Delete a folder")
def delete_folder(
    request: Request, db: Db, api: State, grant: LiveGrant, folder_id: str
) -> dict[str, Any]:
    """Delete the folder on the server (DELETE), then forget it and its placements."""
    folder = path_folder(db, grant, folder_id)
    if folder.role == "inbox":
        raise invalid_request("The Inbox cannot be deleted.")
    with grant_imap(db, api, grant, ops=1) as imap:
        imap.delete_folder(folder.raw_name)
    notifications.folder(db, "folder.deleted", folder)
    MessageRepository(db).lock_grant(grant.id)
    queries.delete_folder_row(db, folder.id)
    db.commit()
    notify_after_commit(api)
    return {"request_id": request_id_of(request)}
