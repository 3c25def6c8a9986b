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
