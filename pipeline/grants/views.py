"""Plain dictionaries describing grants, for the CLI's ``--json`` and the API (no secrets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.folders.repository import FolderCounts
from pipeline.models import Folder, Grant


def grant_dict(grant: Grant) -> dict[str, Any]:
    """A grant in the Nylas v3 shape (``provider`` is ``imap``; the preset is in settings)."""
    return {
        "id": grant.id,
        "provider": "imap",
        "grant_status": grant.grant_status,
        "email": grant.email,
        "scope": [],
        "created_at": int(grant.created_at.timestamp()) if grant.created_at else None,
        "updated_at": int(grant.updated_at.timestamp()) if grant.updated_at else None,
        "settings": {
            "provider_preset": grant.provider,
            "imap_host": grant.imap_host,
            "imap_port": grant.imap_port,
            "imap_tls": grant.imap_tls,
            "imap_username": grant.imap_username,
            "smtp_host": grant.smtp_host,
            "smtp_port": grant.smtp_port,
        },
        "sync_state": grant.sync_state,
        "status_detail": grant.status_detail,
        # selectable folders on the server that are not synced (over the folder cap)
        "folders_skipped": grant.folders_skipped,
        "initial_sync_completed_at": (
            int(grant.initial_sync_completed_at.timestamp())
            if grant.initial_sync_completed_at
            else None
        ),
    }


# Nylas notification codes of the grant.* types (its notification reference); the type, not the
# code, tells them apart: grant.imap_sync_completed shares 25012 with grant.created.
GRANT_NOTIFICATION_CODES = {
    "grant.created": 25012,
    "grant.updated": 25014,
    "grant.deleted": 25013,
    "grant.expired": 25009,
    "grant.imap_sync_completed": 25012,
}
REAUTHENTICATED_CODE = 25027  # grant.updated sent for a re-authentication
IMAP_CONNECTOR_ID = "imap"
"""``integration_id`` of every grant: an install has one IMAP connector, always this one."""


def grant_notification(
    type_: str, grant: Grant, *, reauthenticated: bool = False
) -> dict[str, Any]:
    """``data.object`` of a ``grant.*`` notification, in the fields Nylas sends for that type."""
    obj: dict[str, Any] = {
        "code": REAUTHENTICATED_CODE if reauthenticated else GRANT_NOTIFICATION_CODES[type_],
        "grant_id": grant.id,
        "integration_id": IMAP_CONNECTOR_ID,
        "provider": "imap",
    }
    if type_ == "grant.imap_sync_completed":
        obj["type"] = type_  # Nylas echoes the type in this object only
        return obj
    obj["email"] = grant.email
    if type_ == "grant.created":
        obj["scope"] = []
    elif type_ == "grant.updated":
        obj["reauthentication_flag"] = reauthenticated
    elif type_ == "grant.expired" and grant.updated_at is not None:
        # Nylas: the last time the grant was updated successfully before it expired
        obj["grant_updated_at"] = int(grant.updated_at.timestamp())
    return obj


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
