"""IMAP access: connections, folder discovery and fetching, returning plain typed values.

Nothing in this package imports the ORM or Celery.
"""

from pipeline.imap.client import (
    Endpoint,
    FetchedMessage,
    FolderInfo,
    FolderStatus,
    ImapSession,
    MessageMeta,
    SelectInfo,
    open_session,
)

__all__ = [
    "Endpoint",
    "FetchedMessage",
    "FolderInfo",
    "FolderStatus",
    "ImapSession",
    "MessageMeta",
    "SelectInfo",
    "open_session",
]
