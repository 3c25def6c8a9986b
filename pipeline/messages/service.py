"""Changes to messages, written to the IMAP server first and then to Postgres (the API's
``PUT``/``DELETE`` of messages and threads call these; so can a task or the CLI).

The server is the truth for mail: a flag change, a move or a delete is sent over IMAP, and only
what the server accepted is recorded (in the caller's transaction, under the grant's advisory
lock so it does not interleave with the sync engine's writes of the same grant), with its
notification (``message.updated``/``message.deleted``) as an outbox row. A move records the
message's new UID from the server's COPYUID answer (UIDPLUS); without one, the next sync of the
target folder places the message by its identity.

The IMAP work runs while the caller waits, on a session of
:func:`pipeline.grants.interactive.grant_imap` (a slot of the account's connections at
INTERACTIVE priority, the shared rate limits). Nothing here commits; the caller commits, then
has the webhook outbox dispatched.

Raises (every function): :class:`~pipeline.errors.NotFound` when no folder holds the message
any more, :class:`~pipeline.errors.InvalidRequest` when the server refused the change,
:class:`~pipeline.limits.RateLimited` when the account's limits are used up, and
:class:`~pipeline.errors.ImapError` when the server could not be reached or refused the login.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from pipeline import notifications
from pipeline.errors import NotFound
from pipeline.grants.interactive import Interactive, grant_imap
from pipeline.imap import ImapSession
from pipeline.messages.placements import Location, PlacementRepository
from pipeline.messages.repository import MessageRepository
from pipeline.messages.roles import TRASH_ROLE, folder_with_role
from pipeline.messages.views import stored_message_views
from pipeline.models import Folder, Grant, Message

SEEN = "\\Seen"
FLAGGED = "\\Flagged"


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
    """One copy of a message moved on the server."""

    source: Location
    uidvalidity: int | None
    uid: int | None


def _move(imap: ImapSession, where: Location, target: Folder) -> Moved:
    imap.select(where.raw_name, readonly=False)
    imap.raw.untagged_responses.pop("COPYUID", None)  # a stale answer must not be read as ours
    imap.move([where.uid], target.raw_name)
    answer = copyuid(imap)
    if answer is None:
        return Moved(where, None, None)
    validity, pairs = answer
    return Moved(where, validity, pairs.get(where.uid))


def _locations(db: Session, message: Message) -> list[Location]:
    locations = PlacementRepository(db).locations(message.id)
    if not locations:
        raise NotFound("This message is no longer in any folder on the server.")
    return locations


def _flag_changes(
    message: Message, unread: bool | None, starred: bool | None
) -> tuple[list[str], list[str], list[str]]:
    """``(add, remove, flags)``: the flags to add and remove on the server, and the message's
    flags afterwards."""
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
    return add, remove, flags


def _store_flags(
    imap: ImapSession, locations: list[Location], add: list[str], remove: list[str]
) -> None:
    for where in locations:
        imap.select(where.raw_name, readonly=False)
        if add:
            imap.store_flags([where.uid], add, add=True)
        if remove:
            imap.store_flags([where.uid], remove, add=False)


def _move_one(imap: ImapSession, locations: list[Location], folder: Folder) -> list[Moved]:
    """Move one copy to ``folder`` unless a copy is there already."""
    if any(loc.folder_id == folder.id for loc in locations):
        return []  # never duplicate a copy into a folder that holds one
    return [_move(imap, locations[0], folder)]


def update_message(
    db: Session,
    access: Interactive,
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
    add, remove, flags = _flag_changes(message, unread, starred)
    moved: list[Moved] = []
    needs_move = folder is not None and any(loc.folder_id != folder.id for loc in locations)
    if not (add or remove or needs_move):
        return
    # per copy: SELECT and one STORE per direction; a move adds SELECT + MOVE
    commands = len(locations) * (1 + bool(add) + bool(remove)) + 2 * needs_move
    with grant_imap(db, access, grant, ops=commands) as imap:
        if add or remove:
            _store_flags(imap, locations, add, remove)
        if folder is not None and needs_move:
            moved = _move_one(imap, locations, folder)
    MessageRepository(db).lock_grant(grant.id)
    placements = PlacementRepository(db)
    placements.set_flags(message, flags)
    for m in moved:
        placements.move(
            message_id=message.id,
            source=m.source,
            target_folder_id=folder.id if folder is not None else m.source.folder_id,
            target_uidvalidity=m.uidvalidity,
            target_uid=m.uid,
            flags=flags,
        )
    # The sync will find the server already matching Postgres, so the notification is ours.
    notifications.messages(db, grant.id, "message.updated", stored_message_views(db, [message.id]))


def delete_message(
    db: Session, access: Interactive, grant: Grant, message: Message, *, hard: bool = False
) -> None:
    """Delete a message as Nylas does: move it to the grant's Trash (a copy already in Trash
    stays there), or, with ``hard`` or on an account with no Trash folder, expunge every copy
    (``\\Deleted`` + ``UID EXPUNGE``) and forget it (``message.deleted``)."""
    trash = None if hard else folder_with_role(db, grant.id, TRASH_ROLE)
    if trash is not None:
        update_message(db, access, grant, message, unread=None, starred=None, folder=trash)
        return
    locations = _locations(db, message)
    # per copy: SELECT, STORE \Deleted and EXPUNGE
    with grant_imap(db, access, grant, ops=3 * len(locations)) as imap:
        for where in locations:
            imap.select(where.raw_name, readonly=False)
            imap.expunge_uids([where.uid])
    MessageRepository(db).lock_grant(grant.id)
    placements = PlacementRepository(db)
    for where in locations:
        placements.remove(where)
    message_id = message.id
    if placements.delete_if_unplaced(message_id):
        notifications.messages_deleted(db, grant.id, [message_id])
