"""What a run does when something breaks, so that one message costs one message and a failed
run loses nothing.

- A batch the server breaks off (``BYE`` or ``NO`` on a corrupt message) is fetched again one
  message at a time on fresh sessions (:func:`fetch_each`); what the server fails on twice is
  recorded in ``sync_failures`` and skipped.
- A batch Postgres refuses (a value it will not take) is stored one message at a time
  (:func:`store_each`); what it refuses again is recorded and skipped.
- Anything else (the server, the connection, the database itself) fails the run: the folder
  becomes ``failed`` with the reason (:func:`record_run_failure`) and the next run resumes from
  what was committed (:mod:`pipeline.folders.state`, transitions 5 to 7).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import psycopg
import sqlalchemy.exc
from sqlalchemy.orm import Session, sessionmaker

from pipeline.errors import ImapProtocolError
from pipeline.folders.repository import FolderRepository
from pipeline.folders.state import FolderState
from pipeline.imap import FetchedMessage, ImapSession
from pipeline.sync.store import ERROR_TEXT_LIMIT, FailedItem, ParsedItem, WriteResult

log = logging.getLogger(__name__)

# Stores a batch in its own transaction: (parsed messages, failures, UIDs gone meanwhile).
BatchStore = Callable[[list[ParsedItem], list[FailedItem], int], WriteResult]


# What Postgres raises for a row it will not take (a value too long, bytes it cannot hold, a
# constraint, an index entry over its size limit): the batch is then stored message by message
# and the refused ones recorded. Anything else (a lost connection, a server fault) is not the
# message's doing and fails the run instead, so nothing is recorded as refused by mistake.
REFUSED_BY_DATABASE = (
    sqlalchemy.exc.DataError,
    sqlalchemy.exc.IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,  # SQLSTATE class 54, e.g. "index row size exceeds"
    UnicodeEncodeError,
)


def refused_by_database(exc: BaseException) -> bool:
    """Whether ``exc`` is Postgres refusing the data itself (see :data:`REFUSED_BY_DATABASE`);
    SQLAlchemy wraps class-54 errors as ``OperationalError``, so its cause is looked at too."""
    if isinstance(exc, REFUSED_BY_DATABASE):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and isinstance(
        exc.orig, psycopg.errors.ProgramLimitExceeded
    )


def first_line(exc: BaseException) -> str:
    """An error's first line: what went wrong, without SQLAlchemy's statement and parameters
    (which would carry message content)."""
    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def store_each(
    store: BatchStore,
    items: list[ParsedItem],
    failures: list[FailedItem],
    vanished: int,
) -> tuple[WriteResult, list[ParsedItem]]:
    """Store a batch the database refused one message at a time, each in its own transaction;
    what it refuses again is recorded in ``sync_failures`` (and not fetched again)."""
    total = WriteResult()
    stored: list[ParsedItem] = []
    refused = list(failures)
    for item in items:
        try:
            one = store([item], [], 0)
        except Exception as exc:
            if not refused_by_database(exc):
                raise
            log.warning("message refused by the database", extra={"uid": item.uid})
            error = f"The message could not be stored: {first_line(exc)}"
            refused.append(FailedItem(item.uid, error[:ERROR_TEXT_LIMIT]))
            continue
        stored.append(item)
        total.new_message_ids += one.new_message_ids
        total.existing_message_ids += one.existing_message_ids
    total.failed = store([], refused, vanished).failed
    return total, stored


def fetch_each(
    reopen: Callable[[], ImapSession], raw_name: str, uids: Sequence[int]
) -> tuple[ImapSession, list[FetchedMessage], list[FailedItem]]:
    """Fetch a batch the server broke off one message at a time, on fresh sessions.

    A message the server fails on twice, each time on a session that could select the folder,
    is recorded as unreadable (a corrupt or unreadable file on the server) and skipped. If it
    fails on every message of the batch, it is the server, not the mail: the error is raised
    and nothing is recorded.
    """

    def fresh() -> ImapSession:
        opened = reopen()
        try:
            opened.enable_condstore()  # as the dropped session had it: MODSEQ comes along
            opened.select(raw_name, readonly=True)
        except BaseException:
            opened.close()
            raise
        return opened

    session = fresh()
    fetched: list[FetchedMessage] = []
    unreadable: list[FailedItem] = []
    last_error: ImapProtocolError | None = None
    try:
        for uid in uids:
            for attempt in (1, 2):
                try:
                    fetched.extend(session.fetch_messages([uid]))
                    break
                except ImapProtocolError as exc:
                    last_error = exc
                    session.close()
                    session = fresh()
                    if attempt == 2:
                        error = f"The server could not return the message: {exc}"
                        unreadable.append(FailedItem(uid, error[:ERROR_TEXT_LIMIT]))
        if last_error is not None and len(unreadable) == len(uids):
            raise last_error
    except BaseException:
        session.close()
        raise
    for failure in unreadable:
        log.warning("message unreadable on the server", extra={"uid": failure.uid})
    return session, fetched, unreadable


def record_run_failure(sessions: sessionmaker[Session], folder_id: str, exc: Exception) -> None:
    """Mark the folder ``failed`` with the reason (best effort: the database may be the
    reason, and the original error is what the caller must see)."""
    detail = f"The last sync failed: {first_line(exc)}"[:ERROR_TEXT_LIMIT]
    log.warning("folder sync failed", extra={"folder_id": folder_id, "error": type(exc).__name__})
    try:
        with sessions.begin() as db:
            FolderRepository(db).set_state(folder_id, FolderState.FAILED, detail)
    except Exception:
        log.exception("could not record the folder's failure", extra={"folder_id": folder_id})
