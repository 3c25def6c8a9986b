"""Folders as API objects (Nylas v3 shape), for webhooks, and their sync status for the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from pipeline.folders.repository import FolderCounts, FolderRepository
from pipeline.grants.views import grant_dict
from pipeline.models import Folder, Grant


def folder_view(folder: Folder, parent_id: str | None = None) -> dict[str, Any]:
    """A folder in the Nylas v3 shape (``parent_id``: the folder above it, if any)."""
    return {
        "id": folder.id,
        "grant_id": folder.grant_id,
        "object": "folder",
        "name": folder.name,
        "attributes": list(folder.attributes),
        "system_folder": folder.role is not None,
        "parent_id": parent_id,
    }


def stored_folder_view(session: Session, folder: Folder) -> dict[str, Any]:
    """:func:`folder_view` with its parent looked up, as a ``folder.*`` notification carries
    it (:func:`pipeline.notifications.folder`)."""
    return folder_view(folder, _parent_id(session, folder))


def _parent_id(session: Session, row: Folder) -> str | None:
    """The id of the folder above ``row`` by the server's hierarchy delimiter, as the API
    shows it (``pipeline.api.folders``), or None at the top level."""
    if not row.delimiter or row.delimiter not in row.name:
        return None
    parent = FolderRepository(session).by_name(row.grant_id, row.name.rsplit(row.delimiter, 1)[0])
    return parent.id if parent is not None else None


def folder_status_dict(folder: Folder, counts: FolderCounts | None) -> dict[str, Any]:
    """One folder's sync status."""
    return {
        "id": folder.id,
        "name": folder.name,
        "role": folder.role,
        "uidvalidity": folder.uidvalidity,
        "stored": counts.stored if counts else 0,
        "failed": counts.failed if counts else 0,
        "in_window": folder.to_sync,
        "state": folder.state,
        "state_detail": folder.state_detail,
    }


def status_dict(
    grant: Grant, folders: Sequence[Folder], counts: dict[str, FolderCounts]
) -> dict[str, Any]:
    """A grant with per-folder sync status."""
    out = grant_dict(grant)
    out["folders"] = [folder_status_dict(f, counts.get(f.id)) for f in folders]
    return out
