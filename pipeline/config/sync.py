"""Bounds of the mail sync: ``Settings.sync``, read by ``pipeline.sync``, the sync tasks and the
retention purge.

Most fields come from ``IMAP_PIPELINE_SYNC_<FIELD>`` (``IMAP_PIPELINE_SYNC_BATCH_SIZE=50``). Four
were named before they had a section and keep their variables (an alias each, so a deployment's
``runtime.env`` still works): ``IMAP_PIPELINE_RETENTION_DAYS``,
``IMAP_PIPELINE_MAX_FOLDERS_PER_GRANT``, ``IMAP_PIPELINE_MAX_FOLDER_TASKS_PER_GRANT`` and
``IMAP_PIPELINE_ORPHAN_GRACE_S``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SYNC_ENV_PREFIX = "IMAP_PIPELINE_SYNC_"


class SyncSettings(BaseSettings):
    """The sync window, batch sizes, task budgets and per-grant caps. Defaults work on one
    machine and for mailboxes of a few hundred thousand messages."""

    # validate_by_name: code and tests set the aliased fields by their names
    model_config = SettingsConfigDict(
        env_prefix=SYNC_ENV_PREFIX, extra="ignore", validate_by_name=True
    )

    # --- window ---------------------------------------------------------------------------
    retention_days: int = Field(
        default=90,
        ge=1,
        validation_alias="IMAP_PIPELINE_RETENTION_DAYS",
        description="Rolling window, by INTERNALDATE.",
    )
    orphan_grace_s: float = Field(
        default=300.0,
        ge=0,
        validation_alias="IMAP_PIPELINE_ORPHAN_GRACE_S",
        description="A message that vanished from its last folder is deleted (message.deleted) "
        "only after this long: a move between folders re-places it first and keeps its id. "
        "Keep it above the polling interval of folders without IDLE.",
    )

    # --- batches and tasks ----------------------------------------------------------------
    batch_size: int = Field(
        default=100, ge=1, le=2000, description="Messages fetched and committed per batch."
    )
    batch_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024 * 1024,
        description="A fetch batch is cut when the messages' RFC822.SIZE adds up to this.",
    )
    task_time_limit_s: float = Field(
        default=900.0,
        ge=60,
        le=1500,
        description="Hard time limit of every sync task (a soft limit 30 s earlier records "
        "why); below the broker's 30-minute visibility timeout.",
    )
    chunk_budget_s: float = Field(
        default=120.0,
        gt=0,
        description="A sync task works at most this long, then continues in a new task "
        "(keeps every task far below the broker's visibility timeout).",
    )
    range_messages: int = Field(
        default=400,
        ge=50,
        description="A large initial folder sync is split into UID ranges of about this many "
        "messages, each a task of its own, so every worker shares a big folder to the end.",
    )
    lock_ttl_s: int = Field(
        default=60,
        ge=5,
        le=600,
        description="A folder's sync lock lapses this long after its holder's last batch "
        "(how soon a folder whose worker died is picked up again).",
    )

    # --- per grant ------------------------------------------------------------------------
    max_folders_per_grant: int = Field(
        default=1000,
        ge=1,
        validation_alias="IMAP_PIPELINE_MAX_FOLDERS_PER_GRANT",
        description="Folders synced per grant. A server listing more keeps Inbox, Sent and the "
        "other role folders first, then the folders already synced, then the rest in LIST "
        "order; `grants status` shows how many were left out.",
    )
    max_folder_tasks_per_grant: int = Field(
        default=8,
        ge=1,
        validation_alias="IMAP_PIPELINE_MAX_FOLDER_TASKS_PER_GRANT",
        description="Folder syncs one grant has queued at once (discovery and reconciliation); "
        "the others wait in Redis and are queued as these finish, so one grant with "
        "thousands of folders cannot flood the queue ahead of every other grant.",
    )
