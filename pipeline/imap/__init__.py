"""IMAP access: connections, folder discovery and fetching, returning plain typed values.

Modules: :mod:`~pipeline.imap.login` (connect and log in: :func:`open_session`),
:mod:`~pipeline.imap.client` (the session's commands), :mod:`~pipeline.imap.bounded` (imaplib
with bounded reads and deadlines), :mod:`~pipeline.imap.responses` (answers read into typed
values), :mod:`~pipeline.imap.roles` (folder roles), :mod:`~pipeline.imap.connections` (the
per-account connection manager), :mod:`~pipeline.imap.aio` (the asyncio client the listener
IDLEs with) and :mod:`~pipeline.imap.transport` (its TLS and socket settings).

Nothing in this package imports the ORM or Celery.
"""

from pipeline.imap.bounded import ImapLimits
from pipeline.imap.client import Endpoint, ImapSession
from pipeline.imap.login import open_session
from pipeline.imap.responses import (
    FetchedMessage,
    FolderInfo,
    FolderStatus,
    MessageMeta,
    SelectInfo,
    folder_name_bytes,
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
