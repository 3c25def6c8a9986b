"""Drafts on the server: a draft lives in the account's Drafts folder (role ``drafts``),
APPENDed with ``\\Draft`` and ``\\Seen``; Postgres holds it like any message the sync stores.
Each change is made on the server first and then recorded from what the server holds:

- :func:`append`: compose (:mod:`pipeline.drafts.mime`), APPEND, fetch the copy back and store
  it through the sync's own normalizer (the next sync recognizes it, nothing is stored twice);
- :func:`replace`: read the server's copy, apply the change, APPEND the new version with the
  same Message-ID, then expunge the old copies; the row is rewritten in place, so the draft's
  id stays the same;
- :func:`read`: the server's copy as :class:`~pipeline.drafts.mime.DraftContent` (what a send
  of the draft sends);
- :func:`expunge`: every copy expunged and the draft forgotten (a draft is not moved to Trash).

The IMAP work runs on a session of :func:`pipeline.grants.interactive.grant_imap`.
:mod:`pipeline.drafts.service` orders these steps into a change of a draft (holding one change
of a draft at a time, scheduling and sending drafts).

Errors: :class:`~pipeline.errors.InvalidRequest` (no Drafts folder; a copy that cannot be read
back), :class:`~pipeline.errors.NotFound` (the draft left the Drafts folder), and
:class:`DraftNotReadBack` (the server took the draft but did not give it back).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import make_msgid
from typing import Any

from sqlalchemy.orm import Session

from pipeline.drafts import mime, repository
from pipeline.drafts.mime import DraftContent
from pipeline.errors import InvalidRequest, NotFound, RequestError
from pipeline.grants.interactive import Interactive, grant_imap
from pipeline.imap import ImapSession
from pipeline.messages import metadata
from pipeline.messages.placements import Location, PlacementRepository
from pipeline.messages.repository import MessageRepository
from pipeline.messages.roles import folder_with_role
from pipeline.models import Folder, Grant, Message
from pipeline.sync.store import ParsedItem, parse_batch, write_batch

DRAFT_FLAGS = ("\\Draft", "\\Seen")
NO_DRAFTS_FOLDER = (
    "This account has no Drafts folder on its server: create one named Drafts "
    "(POST /v3/grants/{id}/folders) and the drafts go there."
)
GONE = "This draft is no longer in the Drafts folder on the server."


class DraftNotReadBack(RequestError):
    """The server took the draft (APPEND) but did not give it back when asked for it; it
    appears with the next sync (the API answers 502). The session that asked stays usable."""


def domain_of(grant: Grant) -> str:
    """The domain of the grant's address (for Message-IDs)."""
    return grant.email.rpartition("@")[2] or "localhost"


def _flags(starred: bool) -> list[str]:
    return [*DRAFT_FLAGS, "\\Flagged"] if starred else list(DRAFT_FLAGS)


def _read_back(
    imap: ImapSession, raw_name: str, message_id: str, after_uid: int
) -> tuple[int, Any]:
    """The UIDVALIDITY of the folder and the copy just appended (found by its Message-ID,
    the newest above ``after_uid``)."""
    info = imap.select(raw_name, readonly=False)
    uids = sorted(imap.search_uids("HEADER", "Message-ID", f'"{message_id}"'))
    newer = [u for u in uids if u > after_uid]
    fetched = list(imap.fetch_messages(newer[-1:])) if newer else []
    return info.uidvalidity, fetched


def _one(fetched: list[Any]) -> ParsedItem:
    items, _ = parse_batch(fetched)
    if not items:
        raise DraftNotReadBack(
            "The IMAP server took the draft but did not give it back when asked for it; it "
            "appears with the next sync."
        )
    return items[0]


def _drafts_folder(db: Session, grant: Grant) -> Folder:
    """The grant's Drafts folder, as every role lookup picks it (new drafts are appended to it)."""
    drafts = folder_with_role(db, grant.id, repository.DRAFTS_ROLE)
    if drafts is None:
        raise InvalidRequest(NO_DRAFTS_FOLDER)
    return drafts


def append(
    db: Session,
    access: Interactive,
    grant: Grant,
    content: DraftContent,
    *,
    starred: bool,
    pairs: dict[str, str] | None = None,
) -> Message:
    """APPEND a new draft to the Drafts folder and store the server's copy (committed: the
    server holds it already)."""
    folder = _drafts_folder(db, grant)
    message_id = make_msgid(domain=domain_of(grant))
    when = datetime.now(UTC)
    raw = mime.compose(content, sender=grant.email, message_id=message_id, when=when).as_bytes()
    # APPEND, SELECT, SEARCH, FETCH
    with grant_imap(db, access, grant, ops=4) as imap:
        imap.append(folder.raw_name, raw, flags=_flags(starred), when=when)
        uidvalidity, fetched = _read_back(imap, folder.raw_name, message_id, 0)
    item = _one(fetched)
    result = write_batch(
        db,
        grant_id=grant.id,
        folder_id=folder.id,
        uidvalidity=uidvalidity,
        items=[item],
        failures=[],
    )
    draft_id = (result.new_message_ids or result.existing_message_ids)[0]
    if pairs is not None:
        metadata.store_metadata(db, draft_id, pairs)
    db.commit()
    message = MessageRepository(db).get(grant.id, draft_id)
    assert message is not None
    return message


def location(db: Session, draft: Message) -> Location:
    """Where the draft sits in the Drafts folder.

    Raises:
        NotFound: It is no longer there.
    """
    for where in PlacementRepository(db).locations(draft.id):
        if where.role == repository.DRAFTS_ROLE:
            return where
    raise NotFound(GONE)


def _server_copy(imap: ImapSession, where: Location) -> DraftContent:
    raw = imap.fetch_raw(where.uid)
    if raw is None:
        raise NotFound(GONE)
    try:
        return mime.read(raw)
    except ValueError as exc:
        raise InvalidRequest(f"This draft cannot be read back: {exc}.") from exc


def read(db: Session, access: Interactive, grant: Grant, where: Location) -> DraftContent:
    """The server's copy of the draft at ``where``."""
    with grant_imap(db, access, grant, ops=2) as imap:  # SELECT, FETCH
        imap.select(where.raw_name, readonly=True)
        return _server_copy(imap, where)


def replace(
    db: Session,
    access: Interactive,
    grant: Grant,
    draft: Message,
    change: Callable[[DraftContent], DraftContent],
    *,
    message_id: str,
    starred: bool,
    pairs: dict[str, str] | None,
) -> DraftContent:
    """Replace the server's copy by ``change`` of it (with ``message_id``: the draft's own),
    expunge the old copies, then rewrite the draft's row in place (committed); returns the new
    content. ``pairs`` given replace the draft's metadata (None keeps it)."""
    where = location(db, draft)
    # every copy of this draft in that folder goes (the sync may have found identical ones)
    copies = PlacementRepository(db).locations(draft.id)
    stale = sorted(loc.uid for loc in copies if loc.folder_id == where.folder_id)
    when = datetime.now(UTC)
    # SELECT, FETCH, APPEND, SELECT, SEARCH, FETCH, STORE, EXPUNGE
    with grant_imap(db, access, grant, ops=8) as imap:
        imap.select(where.raw_name, readonly=False)
        content = change(_server_copy(imap, where))
        raw = mime.compose(content, sender=grant.email, message_id=message_id, when=when)
        imap.append(where.raw_name, raw.as_bytes(), flags=_flags(starred), when=when)
        uidvalidity, fetched = _read_back(imap, where.raw_name, message_id, where.uid)
        item = _one(fetched)  # the old copies stay unless the new one is there
        imap.expunge_uids(stale)
    repository.replace_content(db, draft, item, folder_id=where.folder_id, uidvalidity=uidvalidity)
    if pairs is not None:  # left out: the draft keeps its metadata (the row stays)
        metadata.store_metadata(db, draft.id, pairs)
    db.commit()
    return content


def expunge(db: Session, access: Interactive, grant: Grant, draft: Message) -> None:
    """Expunge every copy of the draft and forget it (the caller commits)."""
    locations = PlacementRepository(db).locations(draft.id)
    if locations:
        # per copy: SELECT, STORE \Deleted, EXPUNGE
        with grant_imap(db, access, grant, ops=3 * len(locations)) as imap:
            for where in locations:
                imap.select(where.raw_name, readonly=False)
                imap.expunge_uids([where.uid])
    repository.forget_draft(db, draft.id)
