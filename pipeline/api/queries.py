"""Every query the HTTP API runs (the API's repository); nothing here commits.

Message lists are keyset-paginated on ``(date DESC, id DESC)`` and every filter is written so that
an index of migration 0301 (or of the foundation) can serve it:

- no filter, ``received_before/after``: ``ix_messages_grant_date`` scanned backwards;
- ``unread``: ``ix_api_messages_grant_unread_date``; ``starred`` and ``has_attachment``: partial
  indexes on ``(grant_id, date, id)``;
- ``from/to/cc/bcc/any_email``: the GIN index on ``<grant>:<address>`` keys of all four headers
  (migration 0303; the expression below must stay identical to the index's);
- ``subject``: the trigram GIN index on ``(grant_id, subject)`` (migration 0304;
  case-insensitive substring);
- ``in``: EXISTS on placements by message id; ``thread_id``: ``ix_messages_thread``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    case,
    cast,
    delete,
    distinct,
    exists,
    false,
    func,
    literal,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, aliased, defer

from pipeline.api.pagination import Cursor
from pipeline.api.tables import auth_codes, redirect_uris
from pipeline.messages.repository import MessageRepository, text_key
from pipeline.models import Attachment, Folder, Grant, Message, Placement, Thread


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID (ids of every object); other strings never match a row."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# --- filters -----------------------------------------------------------------------------------


@dataclass
class MessageFilter:
    """The list filters of ``GET /messages`` (and of threads, applied to their messages)."""

    folder_ids: list[str] | None = None
    unread: bool | None = None
    starred: bool | None = None
    subject: str | None = None
    from_: list[str] = field(default_factory=list)
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    any_email: list[str] = field(default_factory=list)
    thread_id: str | None = None
    received_before: datetime | None = None
    received_after: datetime | None = None
    has_attachment: bool | None = None


_EMAILS_PATH: ColumnElement[Any] = literal_column("'$[*].email'::jsonpath")


def _emails(addresses: Any) -> ColumnElement[Any]:
    """Lower-cased addresses of a JSONB participants column, as a JSONB array of strings."""
    return func.jsonb_path_query_array(  # type: ignore[no-any-return]
        cast(func.lower(cast(addresses, Text)), JSONB), _EMAILS_PATH
    )


def participant_keys(m: Any) -> ColumnElement[Any]:
    """``<grant>:md5(<address>)`` of everyone in From, To, Cc and Bcc: the GIN-indexed
    expression of migrations 0303 and 0501 (keep the two identical)."""
    people = m.from_.op("||")(m.to).op("||")(m.cc).op("||")(m.bcc)
    return func.api_participant_keys(m.grant_id, people)  # type: ignore[no-any-return]


def _lowered(emails: Sequence[str]) -> list[str]:
    return sorted({e.strip().lower() for e in emails if e.strip()})


def _any_of(expr: ColumnElement[Any], emails: Sequence[str]) -> ColumnElement[bool]:
    return expr.op("?|")(cast(_lowered(emails), ARRAY(Text)))  # type: ignore[no-any-return]


def _keys_overlap(m: Any, grant_id: str, emails: Sequence[str]) -> ColumnElement[bool]:
    keys = [f"{grant_id}:{text_key(e)}" for e in _lowered(emails)]
    return participant_keys(m).op("&&")(cast(keys, ARRAY(Text)))  # type: ignore[no-any-return]


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def message_conditions(m: Any, grant_id: str, flt: MessageFilter) -> list[ColumnElement[bool]]:
    """WHERE conditions of a filter, on the message entity (or alias) ``m`` of ``grant_id``."""
    conds: list[ColumnElement[bool]] = []
    if flt.folder_ids is not None:
        conds.append(
            exists().where(Placement.message_id == m.id, Placement.folder_id.in_(flt.folder_ids))
        )
    if flt.unread is not None:
        conds.append(m.unread == flt.unread)  # `= true` (not IS TRUE) proves partial indexes
    if flt.starred is not None:
        conds.append(m.starred == flt.starred)
    if flt.has_attachment is not None:
        conds.append(m.has_attachments == flt.has_attachment)
    if flt.subject:
        conds.append(m.subject.ilike("%" + _like_escape(flt.subject) + "%", escape="\\"))
    if flt.thread_id is not None:
        conds.append(m.thread_id == flt.thread_id if is_uuid(flt.thread_id) else false())
    if flt.received_before is not None:
        conds.append(m.date < flt.received_before)
    if flt.received_after is not None:
        conds.append(m.date > flt.received_after)
    for column, emails in (
        (None, flt.any_email),
        (m.from_, flt.from_),
        (m.to, flt.to),
        (m.cc, flt.cc),
        (m.bcc, flt.bcc),
    ):
        if not emails:
            continue
        # The indexed keys narrow the rows to the grant's matches; the header is checked after.
        conds.append(_keys_overlap(m, grant_id, emails))
        if column is not None:
            conds.append(_any_of(_emails(column), emails))
    return conds


# --- messages ----------------------------------------------------------------------------------


def _position(after: Cursor, at_column: Any, id_column: Any) -> ColumnElement[Any]:
    """A cursor as a row value typed like the columns it is compared with (uuid, timestamptz)."""
    return tuple_(literal(after.at, type_=at_column.type), literal(after.id, type_=id_column.type))


def attachment_json(a: Any) -> ColumnElement[Any]:
    """An attachment's API view built in SQL (the same keys as ``messages.attachment_view``)."""
    return func.jsonb_build_object(
        "id",
        a.id,
        "grant_id",
        a.grant_id,
        "message_id",
        a.message_id,
        "filename",
        a.filename,
        "content_type",
        a.content_type,
        "size",
        a.size,
        "content_id",
        a.content_id,
        "content_disposition",
        case((a.is_inline, "inline"), else_="attachment"),
        "is_inline",
        a.is_inline,
    )


def list_messages_query(
    grant_id: str,
    flt: MessageFilter,
    limit: int,
    after: Cursor | None,
    *,
    include_headers: bool = False,
) -> Select[Message, list[str] | None, list[dict[str, Any]] | None]:
    """The page query: ``limit`` messages after ``after``, newest first, each with its folder
    ids and attachment views from correlated subqueries (Postgres evaluates those after the
    LIMIT, so a page costs one round trip)."""
    folders = (
        select(func.array_agg(distinct(cast(Placement.folder_id, Text))))
        .where(Placement.message_id == Message.id)
        .scalar_subquery()
    )
    attachments = (
        select(
            func.jsonb_agg(aggregate_order_by(attachment_json(Attachment), Attachment.part_path))
        )
        .where(Attachment.message_id == Message.id)
        .scalar_subquery()
    )
    query = select(Message, folders, attachments).where(
        Message.grant_id == grant_id, *message_conditions(Message, grant_id, flt)
    )
    if not include_headers:
        query = query.options(defer(Message.headers))
    if after is not None:
        query = query.where(
            tuple_(Message.date, Message.id) < _position(after, Message.date, Message.id)
        )
    return query.order_by(Message.date.desc(), Message.id.desc()).limit(limit)


@dataclass(frozen=True)
class ListedMessage:
    """A message of a list page with its folder ids and attachment views."""

    message: Message
    folder_ids: list[str]
    attachments: list[dict[str, Any]]


def list_messages(
    session: Session,
    grant_id: str,
    flt: MessageFilter,
    limit: int,
    after: Cursor | None,
    *,
    include_headers: bool = False,
) -> list[ListedMessage]:
    """Up to ``limit`` messages of a grant after the cursor, newest first, in one query."""
    rows = session.execute(
        list_messages_query(grant_id, flt, limit, after, include_headers=include_headers)
    )
    return [
        ListedMessage(message, sorted(folders or []), attachments or [])
        for message, folders, attachments in rows
    ]


def get_message(session: Session, grant_id: str, message_id: str) -> Message | None:
    """One message of a grant (None when absent or not a UUID)."""
    if not is_uuid(message_id):
        return None
    return session.scalar(
        select(Message).where(Message.id == message_id, Message.grant_id == grant_id)
    )


def folder_ids_of(session: Session, message_ids: Sequence[str]) -> dict[str, list[str]]:
    """The folders holding each message: message id -> folder ids (sorted)."""
    out: dict[str, list[str]] = {mid: [] for mid in message_ids}
    if not message_ids:
        return out
    rows = session.execute(
        select(Placement.message_id, Placement.folder_id)
        .where(Placement.message_id.in_(message_ids))
        .distinct()
        .order_by(Placement.message_id, Placement.folder_id)
    )
    for mid, fid in rows:
        out.setdefault(str(mid), []).append(str(fid))
    return out


def attachments_of(session: Session, message_ids: Sequence[str]) -> dict[str, list[Attachment]]:
    """Attachment metadata of each message, in MIME order."""
    out: dict[str, list[Attachment]] = {mid: [] for mid in message_ids}
    if not message_ids:
        return out
    rows = session.scalars(
        select(Attachment)
        .where(Attachment.message_id.in_(message_ids))
        .order_by(Attachment.message_id, Attachment.part_path)
    )
    for att in rows:
        out.setdefault(str(att.message_id), []).append(att)
    return out


@dataclass(frozen=True)
class Location:
    """Where a message sits on the server right now."""

    folder_id: str
    raw_name: str
    uidvalidity: int
    uid: int
    role: str | None


def locations_of(session: Session, message_id: str) -> list[Location]:
    """Current placements of a message (UIDs of the folder's current UIDVALIDITY), Inbox first."""
    rows = session.execute(
        select(Folder.id, Folder.raw_name, Placement.uidvalidity, Placement.uid, Folder.role)
        .join(Folder, Folder.id == Placement.folder_id)
        .where(Placement.message_id == message_id, Placement.uidvalidity == Folder.uidvalidity)
        .order_by((Folder.role == "inbox").desc(), Folder.raw_name)
    )
    return [Location(str(f), str(r), int(v), int(u), role) for f, r, v, u, role in rows]


# --- folders -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderTotals:
    """Messages and unread messages of one folder."""

    total: int
    unread: int


def folder_totals(session: Session, folder_ids: Sequence[str]) -> dict[str, FolderTotals]:
    """Stored and unread message counts per folder (current UIDVALIDITY only)."""
    if not folder_ids:
        return {}
    rows = session.execute(
        select(
            Placement.folder_id,
            func.count(),
            func.count().filter(Message.unread.is_(True)),
        )
        .join(Message, Message.id == Placement.message_id)
        .join(Folder, Folder.id == Placement.folder_id)
        .where(Placement.folder_id.in_(folder_ids), Placement.uidvalidity == Folder.uidvalidity)
        .group_by(Placement.folder_id)
    )
    return {str(fid): FolderTotals(int(t), int(u)) for fid, t, u in rows}


def list_folders(session: Session, grant_id: str) -> list[Folder]:
    """A grant's folders as Nylas lists them: Inbox first, then the other system folders (those
    with a role), then the rest, each group by name."""
    return list(
        session.scalars(
            select(Folder)
            .where(Folder.grant_id == grant_id)
            .order_by(
                # a role-less folder's ``role = 'inbox'`` is NULL, which sorts first in DESC
                func.coalesce(Folder.role == "inbox", False).desc(),
                Folder.role.is_(None),
                Folder.name,
                Folder.id,
            )
        )
    )


def find_folder(session: Session, grant_id: str, id_or_name: str) -> Folder | None:
    """A grant's folder by id, or by its name as shown or as the server spells it."""
    if is_uuid(id_or_name):
        found = session.scalar(
            select(Folder).where(Folder.id == id_or_name, Folder.grant_id == grant_id)
        )
        if found is not None:
            return found
    return session.scalar(
        select(Folder)
        .where(
            Folder.grant_id == grant_id,
            (Folder.name == id_or_name) | (Folder.raw_name == id_or_name),
        )
        .order_by(Folder.name)
        .limit(1)
    )


# --- threads -----------------------------------------------------------------------------------


def list_threads(
    session: Session,
    grant_id: str,
    flt: MessageFilter,
    limit: int,
    after: Cursor | None,
    *,
    latest_before: datetime | None = None,
    latest_after: datetime | None = None,
) -> list[Thread]:
    """Up to ``limit`` threads with a message matching ``flt`` (and whose latest message is in
    the given window), most recent first."""
    m = aliased(Message, name="tm")
    query = select(Thread).where(
        Thread.grant_id == grant_id,
        Thread.latest_message_at.is_not(None),
        exists().where(m.thread_id == Thread.id, *message_conditions(m, grant_id, flt)),
    )
    if latest_before is not None:
        query = query.where(Thread.latest_message_at < latest_before)
    if latest_after is not None:
        query = query.where(Thread.latest_message_at > latest_after)
    if after is not None:
        query = query.where(
            tuple_(Thread.latest_message_at, Thread.id)
            < _position(after, Thread.latest_message_at, Thread.id)
        )
    query = query.order_by(Thread.latest_message_at.desc(), Thread.id.desc()).limit(limit)
    return list(session.scalars(query))


def get_thread(session: Session, grant_id: str, thread_id: str) -> Thread | None:
    """One thread of a grant (None when absent or not a UUID)."""
    if not is_uuid(thread_id):
        return None
    return session.scalar(select(Thread).where(Thread.id == thread_id, Thread.grant_id == grant_id))


def messages_of_threads(session: Session, thread_ids: Sequence[str]) -> dict[str, list[Message]]:
    """Every message of each thread, oldest first, without bodies and headers (loaded lazily)."""
    out: dict[str, list[Message]] = {tid: [] for tid in thread_ids}
    if not thread_ids:
        return out
    rows = session.scalars(
        select(Message)
        .options(defer(Message.body), defer(Message.headers))
        .where(Message.thread_id.in_(thread_ids))
        .order_by(Message.thread_id, Message.date, Message.id)
    )
    for message in rows:
        out.setdefault(str(message.thread_id), []).append(message)
    return out


# --- attachments -------------------------------------------------------------------------------


def get_attachment(session: Session, grant_id: str, attachment_id: str) -> Attachment | None:
    """One attachment's metadata (None when absent or not a UUID)."""
    if not is_uuid(attachment_id):
        return None
    return session.scalar(
        select(Attachment).where(Attachment.id == attachment_id, Attachment.grant_id == grant_id)
    )


# --- grants ------------------------------------------------------------------------------------


def list_grants(
    session: Session,
    *,
    limit: int,
    offset: int,
    email: str | None = None,
    status: str | None = None,
) -> list[Grant]:
    """Grants, oldest first, with optional filters."""
    query = select(Grant)
    if email:
        query = query.where(func.lower(Grant.email) == email.strip().lower())
    if status:
        query = query.where(Grant.grant_status == status)
    query = query.order_by(Grant.created_at, Grant.id).offset(offset).limit(limit)
    return list(session.scalars(query))


# --- write-back (the API's changes, after the IMAP server accepted them) ----------------------


def lock_grant_messages(session: Session, grant_id: str) -> None:
    """Serialize with the sync engine's writes of this grant until the transaction ends."""
    MessageRepository(session).lock_grant(grant_id)


def set_message_flags(session: Session, message: Message, flags: Sequence[str]) -> None:
    """Store a message's flags and the unread/starred they imply, on it and its placements."""
    message.flags = list(flags)
    message.unread = "\\Seen" not in flags
    message.starred = "\\Flagged" in flags
    session.execute(
        update(Placement).where(Placement.message_id == message.id).values(flags=list(flags))
    )


def move_placement(
    session: Session,
    *,
    message_id: str,
    source: Location,
    target_folder_id: str,
    target_uidvalidity: int | None,
    target_uid: int | None,
    flags: Sequence[str],
) -> None:
    """A message left ``source``; record where it landed when the server said so (COPYUID).

    Without COPYUID the next sync of the target folder finds the copy by identity and places it.
    """
    remove_placement(session, source)
    if target_uid is not None and target_uidvalidity is not None:
        stmt = pg_insert(Placement).values(
            folder_id=target_folder_id,
            uid=target_uid,
            uidvalidity=target_uidvalidity,
            message_id=message_id,
            flags=list(flags),
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[Placement.folder_id, Placement.uidvalidity, Placement.uid],
                set_={"message_id": message_id, "flags": list(flags)},
            )
        )


def remove_placement(session: Session, location: Location) -> None:
    """Forget one placement (the copy was expunged)."""
    session.execute(
        delete(Placement).where(
            Placement.folder_id == location.folder_id,
            Placement.uidvalidity == location.uidvalidity,
            Placement.uid == location.uid,
        )
    )


def delete_message_if_unplaced(session: Session, message_id: str) -> bool:
    """Delete a message that no folder holds any more; True if it was deleted."""
    placed = session.scalar(select(exists().where(Placement.message_id == message_id)))
    if placed:
        return False
    session.execute(delete(Message).where(Message.id == message_id))
    return True


def folder_by_role(session: Session, grant_id: str, role: str) -> Folder | None:
    """A grant's folder with ``role`` (the first by name if several claim it)."""
    return session.scalar(
        select(Folder)
        .where(Folder.grant_id == grant_id, Folder.role == role)
        .order_by(Folder.name)
        .limit(1)
    )


def add_folder(session: Session, folder: Folder) -> Folder:
    """Store a folder the API created on the server (the sync may have found it first)."""
    existing = session.scalar(
        select(Folder).where(Folder.grant_id == folder.grant_id, Folder.raw_name == folder.raw_name)
    )
    if existing is not None:
        return existing
    session.add(folder)
    session.flush()
    return folder


def rename_folder_rows(
    session: Session, grant_id: str, old_raw: str, new_raw: str, delimiter: str | None
) -> list[Folder]:
    """Rename a folder's row and those of its subfolders (the server renamed them all);
    returns the renamed rows."""
    folders = session.scalars(select(Folder).where(Folder.grant_id == grant_id)).all()
    prefix = old_raw + delimiter if delimiter else None
    renamed: list[Folder] = []
    for folder in folders:
        if folder.raw_name == old_raw:
            suffix = ""
        elif prefix and folder.raw_name.startswith(prefix):
            suffix = folder.raw_name[len(old_raw) :]
        else:
            continue
        folder.raw_name = new_raw + suffix
        folder.name = _decoded(folder.raw_name)
        renamed.append(folder)
    session.flush()
    return renamed


def _decoded(raw_name: str) -> str:
    from imap_tools.imap_utf7 import utf7_decode

    return "INBOX" if raw_name.upper() == "INBOX" else utf7_decode(raw_name.encode())


def delete_folder_row(session: Session, folder_id: str) -> None:
    """Delete a folder and its placements; messages left in no folder go with it."""
    orphans = select(Placement.message_id).where(Placement.folder_id == folder_id)
    message_ids = [str(m) for m in session.scalars(orphans)]
    session.execute(delete(Folder).where(Folder.id == folder_id))
    for message_id in message_ids:
        delete_message_if_unplaced(session, message_id)


# --- hosted auth: redirect URIs and authorization codes ---------------------------------------


def list_redirect_uris(session: Session) -> list[dict[str, Any]]:
    """Registered redirect URIs, oldest first."""
    rows = session.execute(
        select(redirect_uris).order_by(redirect_uris.c.created_at, redirect_uris.c.id)
    ).mappings()
    return [dict(r) for r in rows]


def add_redirect_uri(session: Session, url: str, platform: str) -> dict[str, Any]:
    """Register a redirect URI (the existing row when it is registered already)."""
    stmt = (
        pg_insert(redirect_uris)
        .values(id=str(uuid.uuid4()), url=url, platform=platform, created_at=func.now())
        .on_conflict_do_nothing(constraint="uq_api_redirect_uris_url")
    )
    session.execute(stmt)
    row = session.execute(select(redirect_uris).where(redirect_uris.c.url == url)).mappings().one()
    return dict(row)


def get_redirect_uri(session: Session, redirect_uri_id: str) -> dict[str, Any] | None:
    """One registered redirect URI by id."""
    if not is_uuid(redirect_uri_id):
        return None
    row = (
        session.execute(select(redirect_uris).where(redirect_uris.c.id == redirect_uri_id))
        .mappings()
        .one_or_none()
    )
    return dict(row) if row is not None else None


def delete_redirect_uri(session: Session, redirect_uri_id: str) -> bool:
    """Unregister a redirect URI; False when there was none."""
    if not is_uuid(redirect_uri_id):
        return False
    result = session.execute(delete(redirect_uris).where(redirect_uris.c.id == redirect_uri_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def redirect_uri_registered(session: Session, url: str) -> bool:
    """Whether ``url`` is registered exactly."""
    return bool(session.scalar(select(exists().where(redirect_uris.c.url == url))))


def add_auth_code(
    session: Session,
    *,
    code_hash: str,
    grant_id: str,
    client_id: str,
    redirect_uri: str,
    code_challenge: str | None,
    expires_at: datetime,
) -> None:
    """Store a new authorization code (by its hash)."""
    session.execute(
        auth_codes.insert().values(
            code_hash=code_hash,
            grant_id=grant_id,
            client_id=client_id,
            redirect_uri=redirect_uri,
            code_challenge=code_challenge,
            expires_at=expires_at,
        )
    )


def redeem_auth_code(session: Session, code_hash: str) -> dict[str, Any] | None:
    """Use a code once: the row if it was unused and unexpired (now marked used), else None."""
    row = (
        session.execute(
            update(auth_codes)
            .where(
                auth_codes.c.code_hash == code_hash,
                auth_codes.c.used_at.is_(None),
                auth_codes.c.expires_at > func.now(),
            )
            .values(used_at=func.now())
            .returning(auth_codes)
        )
        .mappings()
        .one_or_none()
    )
    return dict(row) if row is not None else None


def purge_auth_codes(session: Session) -> None:
    """Forget expired codes (called as new ones are made; the table stays small)."""
    session.execute(delete(auth_codes).where(auth_codes.c.expires_at < func.now()))


def grant_by_id(session: Session, grant_id: str) -> Grant | None:
    """A grant by id (None when absent or not a UUID)."""
    return session.get(Grant, grant_id) if is_uuid(grant_id) else None
