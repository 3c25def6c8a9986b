"""IMAP access: connections, folder discovery and fetching, returning plain typed values.

Nothing in this package imports the ORM or Celery.
"""

from pipeline.imap.bounded import ImapLimits
from pipeline.imap.client import (
    Endpoint,
    FetchedMessage,
    FolderInfo,
    FolderStatus,
    ImapSession,
    MessageMeta,
    SelectInfo,
    folder_name_bytes,
    open_session,
)

__all__ = [
    "Endpoint",
    "FetchedMessage",
    "FolderInfo",
    "FolderStatus",
    "ImapLimits",
    "ImapSession",
    "MessageMeta",
    "SelectInfo",
    "folder_name_bytes",
    "open_session",
]
