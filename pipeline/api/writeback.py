"""Changes made through the API, written to the IMAP server first and then to Postgres.

The server is the truth for mail: a flag change, a move or a folder operation is sent over IMAP,
and only what the server accepted is recorded (in the request's transaction, under the grant's
advisory lock so it does not interleave with the sync engine's writes of the same grant). A
move records the message's new UID from the server's COPYUID answer (UIDPLUS); without one, the
next sync of the target folder places the message by its identity.

The IMAP work runs in the request (the response waits for the server's answer) on a session of
the account's connection manager at INTERACTIVE priority (:mod:`pipeline.imap.connections`):
the request gets a connection slot within a second (a reserved one, or one bulk sync makes room
for), a new login takes a login token, and the request operation tokens
(:mod:`pipeline.limits`, through :mod:`pipeline.api.limits`). A short wait for a token is
absorbed; no slot within ``INTERACTIVE_WAIT_S``, a longer wait for a token, or a throttling
answer of the provider, is a 429 with Retry-After. The session stays pooled for the next
request while nobody else needs its slot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy.orm import Session

from pipeline import notifications
from pipeline.api import queries
from pipeline.api.deps import ApiState, notify_after_commit
from pipeline.api.errors import ApiError, invalid_request, not_found
from pipeline.api.limits import rate_limited, take, take_login
from pipeline.errors import ImapAuthError, ImapProtocolError, ImapThrottledError
from pipeline.grants.service import open_grant_session
from pipeline.imap import ImapSession
from pipeline.imap.connections import INTERACTIVE_WAIT_S, NoSlot
from pipeline.models import Folder, Grant, Message

SEEN = "\\Seen"
FLAGGED = "\\Flagged"


NO_SLOT_RETRY_S = 5  # Retry-After when every connection of the account is in use


def _login(db: Session, api: ApiState, grant: Grant) -> ImapSession:
    """A new session under the account's connection cap and login rate."""
    limiter = api.limiter
    cap = limiter.limits(grant.provider).max_connections if limiter is not None else 1
    try:
        holder = api.imap_pool.slot(grant.id, cap, wait_s=INTERACTIVE_WAIT_S)
    except NoSlot as exc:
        raise rate_limited(
            f"All {exc.cap} IMAP connections of this account are in use; retry shortly.",
            NO_SLOT_RETRY_S,
        ) from exc
    try:
        take_login(api, grant.provider, grant.imap_host, grant.id, "logins")
        try:
            imap = open_grant_session(db, api.settings, grant, api.settings.mail_address_policy)
        except ImapAuthError:
            db.commit()  # keep the grant marked invalid (and its grant.expired event)
            notify_after_commit(api)
            raise
    except BaseException:
        api.imap_pool.unslot(grant.id, holder)
        raise
    if limiter is not None:
        limiter.recovered(grant.id)
    return api.imap_pool.admit(grant.id, holder, imap)


def _throttled(api: ApiState, grant: Grant, exc: ImapThrottledError) -> NoReturn:
    """The provider throttled us: the account backs off, the request gets a 429."""
    if api.limiter is None:
        raise exc
    backoff = api.limiter.throttled(grant.provider, grant.imap_host, grant.id)
    raise rate_limited("The mail provider is limiting this account; retry later.", backoff) from exc


@contextlib.contextmanager
def grant_imap(db: Session, api: ApiState, grant: Grant, *, ops: int) -> Iterator[ImapSession]:
    """A logged-in session for the grant under the shared limits (pooled by the connection
    manager, :mod:`pipeline.imap.connections`).

    The session holds one of the account's connection slots (counted with the listener's and
    the workers', at INTERACTIVE priority); a new login takes a login token; ``ops`` operation
    tokens are taken up front.
    A refused login marks the grant invalid (committed before the error propagates); a
    throttling answer puts the account in back-off and becomes a 429; a NO/BAD answer to a
    change becomes a 400 that quotes the server.
    """
    limiter = api.limiter
    try:
        imap = api.imap_pool.take(grant.id) or _login(db, api, grant)
    except ImapThrottledError as exc:
        _throttled(api, grant, exc)
    healthy = False
    try:
        if limiter is not None:
            take(
                lambda: limiter.try_ops(grant.provider, grant.imap_host, grant.id, ops),
                "IMAP commands",
            )
        try:
            yield imap
        except ImapProtocolError as exc:
            text = str(exc)
            if " answered NO" in text or " answered BAD" in text or " failed: " in text:
                healthy = True  # the server said no; the session is fine
                raise invalid_request(f"The IMAP server refused the change: {text}") from exc
            raise
        healthy = True
    except ImapThrottledError as exc:
        _throttled(api, grant, exc)
    except ApiError:
        healthy = True
        raise
    finally:
        api.imap_pool.give_back(imap, healthy=healthy)


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
    api: ApiState,
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
        # per copy: SELECT and one STORE per direction; a move adds SELECT + MOVE
        commands = len(locations) * (1 + bool(add) + bool(remove)) + 2 * needs_move
        with grant_imap(db, api, grant, ops=commands) as imap:
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
    if not (add or remove or needs_move):
        return
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
    # The sync will find the server already matching Postgres, so the notification is ours.
    notifications.messages(db, grant.id, "message.updated", [message.id])


def delete_message(
    db: Session, api: ApiState, grant: Grant, message: Message, *, hard: bool = False
) -> None:
    """Delete a message as Nylas does: move it to the grant's Trash (a copy already in Trash
    stays there), or, with ``hard`` or on an account with no Trash folder, expunge every copy
    (``\\Deleted`` + ``UID EXPUNGE``) and forget it (``message.deleted``)."""
    trash = None if hard else queries.folder_by_role(db, grant.id, "trash")
    if trash is not None:
        update_message(db, api, grant, message, unread=None, starred=None, folder=trash)
        return
    locations = _locations(db, message)
    # per copy: SELECT, STORE \Deleted and EXPUNGE
    with grant_imap(db, api, grant, ops=3 * len(locations)) as imap:
        for where in locations:
            imap.select(where.raw_name, readonly=False)
            imap.expunge_uids([where.uid])
    queries.lock_grant_messages(db, grant.id)
    for where in locations:
        queries.remove_placement(db, where)
    message_id = message.id
    if queries.delete_message_if_unplaced(db, message_id):
        notifications.messages_deleted(db, grant.id, [message_id])
