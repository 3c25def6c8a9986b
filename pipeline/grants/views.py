"""Plain dictionaries describing grants, for the CLI's ``--json`` and the API (no secrets).

A grant with its folders' sync status is :func:`pipeline.folders.views.status_dict`; the
object of a ``grant.*`` notification is :func:`pipeline.webhooks.payloads.grant_notification`.
"""

from __future__ import annotations

from typing import Any

from pipeline.models import Grant


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
