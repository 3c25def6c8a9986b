"""Changes made through the API, written to the IMAP server first and then to Postgres.

The server is the truth for mail: a flag change, a move or a folder operation is sent over IMAP,
and only what the server accepted is recorded (in the request's transaction, under the grant's
advisory lock so it does not interleave with the sync engine's writes of the same grant). A
move records the message's new UID from the server's COPYUID answer (UIDPLUS); without one, the
next sync of the target folder places the message by its identity.

The IMAP work runs in the request (the response waits for the server's answer); it does not
yet go through a shared per-account rate limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.orm import Session

from pipeline.api import queries
from pipeline.api.errors import ApiError, invalid_request, not_found
from pipeline.config import Settings
from pipeline.errors import ImapAuthError, ImapProtocolError
from pipeline.grants.service import open_grant_session
from pipeline.imap import ImapSession
from pipeline.models import Folder, Grant, Message

SEEN = "\\Seen"
FLAGGED = "\\Flagged"


@contextlib.contextmanager
def grant_imap(db: Session, settings: Settings, grant: Grant) -> Iterator[ImapSession]:
    """A logged-in session for the grant, closed afterwards.

    A refused login marks the grant invalid and that is committed before the error propagates.
    A NO/BAD answer to a change becomes a 400 that quotes the server.
    """
    try:
        imap = open_grant_session(db, settings, grant)
    except ImapAuthError:
        db.commit()
        raise
    try:
        yield imap
    except ImapProtocolError as exc:
        text = str(exc)
        if " answered NO" in text or " answered BAD" in text or " failed: " in text:
            raise invalid_request(f"The IMAP server refused the change: {text}") from exc
        raise
    finally:
        imap.close()


def _uid_list(value: str) -> list[int]:
    out: list[int] = []
    for part in value.split(","):
        if ":" in part:
            low, high = (int(x) for x in part.split(":", 1))
            out.extend(range(min(low, high), max(low, high) + 1))
        elif part:
            out.append(int(part))
    return out


def copyuid(imap: ImapSession) -> tuple[int, dict[int, int]] | None:
    """The last COPYUID answer (RFC 4315): destination UIDVALIDITY and source -> new UID."""
    _, values = imap.raw.response("COPYUID")
    for value in reversed(values or []):
        if not value:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        try:
            validity, sources, targets = text.split()[:3]
            pairs = dict(zip(_uid_list(sources), _uid_list(targets), strict=True))
            return int(validity), pairs
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class Moved:
    """One copy of a message moved by the API."""

    source: queries.Location
    uidvalidity: int | None
    uid: int | None


def _move(imap: ImapSession, where: queries.Location, target: Folder) -> Moved:
    imap.select(where.raw_name, readonly=False)
    imap.raw.untagged_responses.pop("COPYUID", None)  # a stale answer must not be read as ours
    imap.move([where.uid], target.raw_name)
    answer = copyuid(imap)
    if answer is None:
        return Moved(where, None, None)
    validity, pairs = answer
    return Moved(where, validity, pairs.get(where.uid))


def _locations(db: Session, message: Message) -> list[queries.Location]:
    locations = queries.locations_of(db, message.id)
    if not locations:
        raise not_found("This message is no longer in any folder on the server.")
    return locations


def update_message(
    db: Session,
    settings: Settings,
    grant: Grant,
    message: Message,
    *,
    unread: bool | None,
    starred: bool | None,
    folder: Folder | None,
) -> None:
    """Apply unread/starred (STORE on every copy) and a move (MOVE), on the server, then in
    Postgres. A move takes one copy to ``folder`` unless a copy is there already; copies in
    other folders stay where they are."""
    locations = _locations(db, message)
    flags = list(message.flags)
    add: list[str] = []
    remove: list[str] = []
    for flag, wanted in ((SEEN, None if unread is None else not unread), (FLAGGED, starred)):
        if wanted is None:
            continue
        if wanted and flag not in flags:
            add.append(flag)
            flags.append(flag)
        elif not wanted and flag in flags:
            remove.append(flag)
            flags.remove(flag)
    moved: list[Moved] = []
    needs_move = folder is not None and any(loc.folder_id != folder.id for loc in locations)
    if add or remove or needs_move:
        with grant_imap(db, settings, grant) as imap:
            if add or remove:
                for where in locations:
                    imap.select(where.raw_name, readonly=False)
                    if add:
                        imap.store_flags([where.uid], add, add=True)
                    if remove:
                        imap.store_flags([where.uid], remove, add=False)
            if folder is not None and needs_move:
                already_there = any(loc.folder_id == folder.id for loc in locations)
                for where in locations:
                    if where.folder_id == folder.id:
                        continue
                    if already_there:
                        continue  # never duplicate a copy into a folder that holds one
                    moved.append(_move(imap, where, folder))
                    already_there = True
    queries.lock_grant_messages(db, grant.id)
    queries.set_message_flags(db, message, flags)
    for m in moved:
        queries.move_placement(
            db,
            message_id=message.id,
            source=m.source,
            target_folder_id=folder.id if folder is not None else m.source.folder_id,
            target_uidvalidity=m.uidvalidity,
            target_uid=m.uid,
            flags=flags,
        )


def trash_message(db: Session, settings: Settings, grant: Grant, message: Message) -> None:
    """Move a message to the grant's Trash (a copy already in Trash stays there).

    Raises:
        ApiError: 400 when the account has no Trash folder.
    """
    trash = queries.folder_by_role(db, grant.id, "trash")
    if trash is None:
        raise ApiError(
            400,
            "invalid_request_error",
            "This account has no Trash folder, so the message cannot be moved there.",
        )
    update_message(db, settings, grant, message, unread=None, starred=None, folder=trash)
