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
- ``in``: EXISTS on placements by message id; ``thread_id``: ``ix_messages_thread``;
- ``metadata_pair``: the partial GIN index on ``(grant_id, metadata)`` (migration 0310);
- ``search_query_native`` with keys of the stored search text at the top: the page joins each
  message's ``api_message_search`` row and walks ``(grant_id, date, message_id)`` there
  (migration 0322), or the trigram indexes for a rare term; other criteria are a condition on
  the message (``pipeline.search.store``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Row,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    collate,
    distinct,
    exists,
    false,
    func,
    literal,
    literal_column,
    select,
    true,
    tuple_,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, aggregate_order_by, distinct_on
from sqlalchemy.orm import Session, aliased, defer
from sqlalchemy.sql.selectable import ScalarSelect

from pipeline.drafts.repository import DRAFTS_ROLE
from pipeline.messages import metadata
from pipeline.messages.repository import text_key
from pipeline.models import Attachment, Folder, Grant, Message, Placement, Thread
from pipeline.pages import Cursor
from pipeline.search.store import StoreCondition
from pipeline.search.tables import message_search


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
    # folder_ids taken from the request without a lookup (ids as the API gives them): the page
    # statement counts those of the grant (a ``folders_found`` column), and the caller looks
    # them up (a 404 for an unknown one) only when that count says one is not the grant's
    folders_unchecked: bool = False
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
    # messages held in no folder of the grant with this role (the messages list leaves drafts
    # out this way: a subquery, not a lookup before the page query, which cost a round trip)
    not_in_role: str | None = None
    metadata_pair: tuple[str, str] | None = None  # (key1..key5, value)
    # search_query_native, as a condition on the message entity (pipeline.api.search)
    search: Callable[[Any], ColumnElement[bool]] | None = None


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


# A thread's participants are its addresses each once, the first spelling kept, compared with
# the ASCII letters folded and nothing else: the rule Python (threads._participants) and
# Postgres (_thread_json_parts) can both apply exactly. Postgres' lower() follows the
# database's locale and Python's str.lower() all of Unicode, and the two differ past ASCII
# ('İ' is 'i' to one, 'i̇' to the other); an address's local part is the server's to compare
# (RFC 5321), and its domain is ASCII (IDNA) or compared by the receiving system.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def participant_key(address: str) -> str:
    """The key two spellings of one participant share: ``address`` with ASCII letters
    lowercased (:func:`participant_key_sql` in Postgres)."""
    return address.translate(_ASCII_LOWER)


def participant_key_sql(address: ColumnElement[Any]) -> ColumnElement[str]:
    """:func:`participant_key` in Postgres: lower() in the "C" collation folds ASCII only."""
    return func.lower(collate(address, "C"))  # type: ignore[no-any-return]


def address_lower(address: str) -> str:
    """``address`` lowercased as Postgres' ``lower()`` lowers the stored addresses (the GIN
    keys of ``api_participant_keys``, the JSONB address filters): one character at a time, by
    Unicode's simple mapping. ``str.lower()`` differs in two places: it maps 'İ' to 'i' plus a
    combining dot (the full mapping) and a word's final capital sigma to U+03C2 (context), where
    Postgres gives 'i' and U+03C3; an address asked for in Python's lowering missed its own
    message."""
    return "".join("i" if ch == "\u0130" else ch.lower() for ch in address)


def _lowered(emails: Sequence[str]) -> list[str]:
    return sorted({address_lower(e.strip()) for e in emails if e.strip()})


def _any_of(expr: ColumnElement[Any], emails: Sequence[str]) -> ColumnElement[bool]:
    return expr.op("?|")(cast(_lowered(emails), ARRAY(Text)))  # type: ignore[no-any-return]


def _keys_overlap(m: Any, grant_id: str, emails: Sequence[str]) -> ColumnElement[bool]:
    keys = [f"{grant_id}:{text_key(e)}" for e in _lowered(emails)]
    return participant_keys(m).op("&&")(cast(keys, ARRAY(Text)))  # type: ignore[no-any-return]


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _folders_in_search(flt: MessageFilter) -> MessageFilter:
    """``flt`` without ``folder_ids`` when its store-answered search already asks for a copy in
    those folders (of their current UIDVALIDITY: stricter than the ``in`` filter's EXISTS).
    The second EXISTS changed no row, but Postgres took it for another 1 in 5 and hashed every
    copy in the folder (SUBJECT invoice + in=Archive: 20,000 placements for 206 matches)."""
    search = flt.search
    if (
        flt.folder_ids is not None
        and isinstance(search, StoreCondition)
        and search.folder_ids is not None
        and set(search.folder_ids) == set(flt.folder_ids)
    ):
        return replace(flt, folder_ids=None)
    return flt


def message_conditions(m: Any, grant_id: str, flt: MessageFilter) -> list[ColumnElement[bool]]:
    """WHERE conditions of a filter, on the message entity (or alias) ``m`` of ``grant_id``."""
    conds: list[ColumnElement[bool]] = []
    flt = _folders_in_search(flt)
    if flt.folder_ids is not None:
        conds.append(
            exists().where(Placement.message_id == m.id, Placement.folder_id.in_(flt.folder_ids))
        )
    if flt.not_in_role is not None:
        role_folders = select(Folder.id).where(
            Folder.grant_id == grant_id, Folder.role == flt.not_in_role
        )
        conds.append(
            ~exists().where(Placement.message_id == m.id, Placement.folder_id.in_(role_folders))
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
    if flt.metadata_pair is not None:
        conds.extend(metadata.pair_condition(m, *flt.metadata_pair))
    if flt.received_before is not None:
        conds.append(m.date < flt.received_before)
    if flt.received_after is not None:
        conds.append(m.date > flt.received_after)
    if flt.search is not None:
        conds.append(flt.search(m))
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
            # COALESCE hides the check from the planner's default estimate for `?|` (0.5 % of
            # rows, which made it read and sort every match of a frequent address, 1.5 s at a
            # million messages, rather than walk the date index to the first page, 20 ms)
            conds.append(func.coalesce(_any_of(_emails(column), emails), false()))
    return conds


# --- messages ----------------------------------------------------------------------------------


def _position(after: Cursor, at_column: Any, id_column: Any) -> ColumnElement[Any]:
    """A cursor as a row value typed like the columns it is compared with (uuid, timestamptz)."""
    return tuple_(literal(after.at, type_=at_column.type), literal(after.id, type_=id_column.type))


def _key(name: str) -> ColumnElement[Any]:
    """A key of an object built by ``json_build_object``, written in the statement: a bound
    parameter each was a placeholder more for psycopg to convert in every execution of a
    statement too long for its cache, and a value more to bind."""
    return literal_column(f"'{name}'")


def attachment_json(a: Any) -> ColumnElement[Any]:
    """An attachment's API view built in SQL (the same keys as ``messages.attachment_view``)."""
    return func.jsonb_build_object(
        _key("id"),
        a.id,
        _key("grant_id"),
        a.grant_id,
        _key("message_id"),
        a.message_id,
        _key("filename"),
        a.filename,
        _key("content_type"),
        a.content_type,
        _key("size"),
        a.size,
        _key("content_id"),
        a.content_id,
        _key("content_disposition"),
        case((a.is_inline, "inline"), else_="attachment"),
        _key("is_inline"),
        a.is_inline,
    )


def _folders_of_message() -> ScalarSelect[Any]:
    """The ids of the folders holding the outer query's message (NULL when none)."""
    return (
        select(func.array_agg(distinct(cast(Placement.folder_id, Text))))
        .where(Placement.message_id == Message.id)
        .scalar_subquery()
    )


def _attachments_of_message(m: Any = Message) -> ScalarSelect[Any]:
    """The outer query's message's attachments as API views, in MIME order (NULL when none)."""
    return (
        select(
            func.jsonb_agg(aggregate_order_by(attachment_json(Attachment), Attachment.part_path))
        )
        .where(Attachment.message_id == m.id)
        .scalar_subquery()
    )


# Every column attribute of a message except ``headers`` (sent only with
# ``fields=include_headers``): the list rows carry the attribute names ``message_view`` reads, so a
# field it gains is selected here too.
LISTED_ATTRIBUTES = tuple(a.key for a in sa_inspect(Message).column_attrs if a.key != "headers")


def _listed_columns(keys: Sequence[str]) -> list[ColumnElement[Any]]:
    """Message columns labelled with their attribute names (``from_``, ``metadata_``): rows
    read the same whether a Session or a plain Connection runs the statement."""
    return [getattr(Message, key).label(key) for key in keys]


@cache
def _page_select(include_headers: bool) -> Select[Any]:
    """The columns of a page, built once (a statement is immutable; each request adds its
    conditions to a copy)."""
    keys = LISTED_ATTRIBUTES + (("headers",) if include_headers else ())
    return select(
        *_listed_columns(keys),
        _folders_of_message().label("folders"),
        _attachments_of_message().label("attachments"),
    )


def _unix(column: Any) -> ColumnElement[Any]:
    """A timestamp as whole seconds since the epoch, as ``messages.views.unix`` makes it
    (``int()`` of the seconds: truncated toward zero)."""
    return cast(func.trunc(func.extract("epoch", column)), BigInteger)


def message_json() -> ColumnElement[str]:
    """The outer query's message as its API view, rendered by Postgres as JSON text: the keys
    and values of ``messages.views.message_view`` (standard fields, with the body) with its
    folders (ids, sorted) and its attachments (API views, in MIME order).

    A list page's messages are the API's largest answer: rendered here, the API passes each
    one through as it comes instead of parsing six JSON columns per message into Python
    objects, building a dictionary and encoding it again (about half of a page's CPU in the
    API process). ``test_listed_messages_and_threads_are_the_objects_fetched_alone``
    (tests/integration/api/test_api_messages.py) holds the two renderings equal."""
    return cast(_message_object(Message, literal("message")), Text)


def _message_object(m: Any, object_: ColumnElement[str]) -> ColumnElement[Any]:
    """The API view of message ``m`` (an entity of the outer query) as a ``json`` value, its
    ``object`` the given one (:func:`message_json`)."""
    date = _unix(m.date)
    folders = (
        select(
            func.json_agg(aggregate_order_by(distinct(Placement.folder_id), Placement.folder_id))
        )
        .where(Placement.message_id == m.id)
        .scalar_subquery()
    )
    return func.json_build_object(
        _key("id"),
        m.id,
        _key("grant_id"),
        m.grant_id,
        _key("object"),
        object_,
        _key("thread_id"),
        m.thread_id,
        _key("subject"),
        m.subject,
        _key("from"),
        m.from_,
        _key("to"),
        m.to,
        _key("cc"),
        m.cc,
        _key("bcc"),
        m.bcc,
        _key("reply_to"),
        m.reply_to,
        _key("in_reply_to"),
        m.in_reply_to,
        _key("date"),
        date,
        _key("created_at"),
        date,
        _key("unread"),
        m.unread,
        _key("starred"),
        m.starred,
        _key("snippet"),
        m.snippet,
        _key("folders"),
        func.coalesce(folders, literal_column("'[]'::json")),
        _key("attachments"),
        func.coalesce(_attachments_of_message(m), literal_column("'[]'::jsonb")),
        _key("metadata"),
        m.metadata_,
        _key("body"),
        m.body,
    )


@cache
def _page_json_select() -> Select[Any]:
    """The columns of a page rendered by Postgres (:func:`message_json`): each message's
    ``date`` and ``id`` (for the next page's cursor) and its ``json``."""
    columns: list[ColumnElement[Any]] = [
        Message.date.label("date"),
        Message.id.label("id"),
        message_json().label("json"),
    ]
    return select(*columns)


def list_messages_query(
    grant_id: str,
    flt: MessageFilter,
    limit: int,
    after: Cursor | None,
    *,
    include_headers: bool = False,
    as_json: bool = False,
) -> Select[Any]:
    """The page query: ``limit`` messages after ``after``, newest first, as plain rows (no ORM
    objects) with every message column by its attribute name, ``folders`` (folder ids) and
    ``attachments`` (API views), both NULL when there are none, from correlated subqueries
    that Postgres evaluates after the LIMIT: one round trip. ``as_json``: the rows are
    ``date``, ``id`` and ``json``, the message's API view (:func:`message_json`)."""
    date: Any = Message.date
    id_: Any = Message.id
    query = _page_json_select() if as_json else _page_select(include_headers)
    flt = _folders_in_search(flt)
    search = flt.search
    if isinstance(search, StoreCondition) and search.text is not None:
        # a search on the stored text: join each message's search row, test the text there
        # and walk the rows by their own copy of (date, id) newest first (migration 0322);
        # ordered by the message's columns, Postgres could only walk the messages and probe
        # each one's row, or read every match and sort them (pipeline.search.store)
        s = message_search
        query = query.join(s, s.c.message_id == Message.id).where(
            s.c.grant_id == grant_id, search.text
        )
        flt = replace(flt, search=search.rest)
        date, id_ = s.c.date, s.c.message_id
    query = query.where(Message.grant_id == grant_id, *message_conditions(Message, grant_id, flt))
    if after is not None:
        query = query.where(tuple_(date, id_) < _position(after, date, id_))
    return query.order_by(date.desc(), id_.desc()).limit(limit)


# The filters a page statement is made once for, with its values bound per request; a page with
# any other filter (an address, a subject, a thread, metadata, a search) is built afresh.
_Flag = bool | None  # a boolean filter: set or not
_Shape = tuple[bool, bool, str | None, _Flag, _Flag, _Flag, bool, bool, bool, bool, bool, bool]


def _page_shape(
    flt: MessageFilter,
    after: Cursor | None,
    include_headers: bool,
    grant_status: bool,
    as_json: bool,
) -> _Shape | None:
    """What :func:`_shaped_page` makes a statement of (None: a filter it does not bind)."""
    if (
        flt.subject
        or flt.thread_id is not None
        or flt.metadata_pair is not None
        or flt.search is not None
        or flt.from_
        or flt.to
        or flt.cc
        or flt.bcc
        or flt.any_email
    ):
        return None
    return (
        flt.folder_ids is not None,
        flt.folder_ids is not None and flt.folders_unchecked,
        flt.not_in_role,
        flt.unread,
        flt.starred,
        flt.has_attachment,
        flt.received_before is not None,
        flt.received_after is not None,
        after is not None,
        include_headers,
        grant_status,
        as_json,
    )


@cache
def _shaped_page(shape: _Shape) -> Select[Any]:
    """The page statement of a shape (:func:`_page_shape`), built once: its values are bound
    parameters (``grant_id``, ``limit``, ``folder_ids``, ``before``, ``after``, ``after_at``,
    ``after_id``), given when it runs. Building a page statement and computing its cache key
    (SQLAlchemy's compiled-statement cache) cost about a third of a page's CPU in the API
    process; a statement made once keeps its cache key."""
    (
        folders,
        folders_found,
        not_in_role,
        unread,
        starred,
        has_attachment,
        before,
        after_date,
        cursor,
        include_headers,
        grant_status,
        as_json,
    ) = shape
    grant_id: Any = bindparam("grant_id", type_=Message.grant_id.type)
    folder_ids: Any = bindparam("folder_ids", expanding=True)
    flt = MessageFilter(
        folder_ids=folder_ids if folders else None,
        not_in_role=not_in_role,
        unread=unread,
        starred=starred,
        has_attachment=has_attachment,
        received_before=bindparam("before", type_=Message.date.type) if before else None,  # type: ignore[arg-type]
        received_after=bindparam("after", type_=Message.date.type) if after_date else None,  # type: ignore[arg-type]
    )
    query = _page_json_select() if as_json else _page_select(include_headers)
    query = query.where(Message.grant_id == grant_id, *message_conditions(Message, grant_id, flt))
    if cursor:
        position = tuple_(
            bindparam("after_at", type_=Message.date.type),
            bindparam("after_id", type_=Message.id.type),
        )
        query = query.where(tuple_(Message.date, Message.id) < position)
    query = query.order_by(Message.date.desc(), Message.id.desc()).limit(
        bindparam("limit", type_=Integer)
    )
    if grant_status:
        query = query.add_columns(_grant_status(grant_id).label("grant_status"))
    if folders_found:
        query = query.add_columns(_folders_found(grant_id, folder_ids).label("folders_found"))
    return query


def _grant_status(grant_id: Any) -> ScalarSelect[Any]:
    grants = Grant.__table__
    return select(grants.c.grant_status).where(grants.c.id == grant_id).scalar_subquery()


def _folders_found(grant_id: Any, folder_ids: Any) -> ScalarSelect[Any]:
    """How many of ``folder_ids`` are folders of the grant (the unchecked ``in`` filter's
    check, run once with the page: :attr:`MessageFilter.folders_unchecked`)."""
    folders = Folder.__table__
    return (
        select(func.count())
        .select_from(folders)
        .where(folders.c.grant_id == grant_id, folders.c.id.in_(folder_ids))
        .scalar_subquery()
    )


def list_messages(
    conn: Connection,
    grant_id: str,
    flt: MessageFilter,
    limit: int,
    after: Cursor | None,
    *,
    include_headers: bool = False,
    grant_status: bool = False,
    as_json: bool = False,
) -> Sequence[Row[Any]]:
    """Up to ``limit`` messages of a grant after the cursor, newest first, in one query (rows
    as :func:`list_messages_query` describes), run on a plain connection: plain rows need none
    of the ORM's result handling (a fifth of a page's CPU). ``grant_status``: each row also
    has the grant's ``grant_status`` (a subquery run once: the grant's check without a round
    trip of its own); with ``flt.folders_unchecked``, a ``folders_found`` column too. The
    common filters run a statement made once (:func:`_shaped_page`)."""
    shape = _page_shape(flt, after, include_headers, grant_status, as_json)
    if shape is not None:
        values: dict[str, Any] = {"grant_id": grant_id, "limit": limit}
        if flt.folder_ids is not None:
            values["folder_ids"] = flt.folder_ids
        if flt.received_before is not None:
            values["before"] = flt.received_before
        if flt.received_after is not None:
            values["after"] = flt.received_after
        if after is not None:
            values["after_at"], values["after_id"] = after.at, after.id
        return conn.execute(_shaped_page(shape), values).all()
    query = list_messages_query(
        grant_id, flt, limit, after, include_headers=include_headers, as_json=as_json
    )
    if grant_status:
        query = query.add_columns(_grant_status(grant_id).label("grant_status"))
    if flt.folder_ids is not None and flt.folders_unchecked:
        found = _folders_found(grant_id, flt.folder_ids)
        query = query.add_columns(found.label("folders_found"))
    return conn.execute(query).all()


def list_message_objects(
    session: Session, grant_id: str, flt: MessageFilter, limit: int, after: Cursor | None
) -> list[Message]:
    """The messages of the page :func:`list_messages` reads, as ORM objects (without headers),
    for views that need the objects themselves (drafts)."""
    query = (
        select(Message)
        .options(defer(Message.headers))
        .where(Message.grant_id == grant_id, *message_conditions(Message, grant_id, flt))
    )
    if after is not None:
        query = query.where(
            tuple_(Message.date, Message.id) < _position(after, Message.date, Message.id)
        )
    query = query.order_by(Message.date.desc(), Message.id.desc()).limit(limit)
    return list(session.scalars(query))


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


def resolve_folder_ids(
    conn: Connection, grant_id: str, ids_or_names: Sequence[str]
) -> list[str | None]:
    """The id of the grant's folder each value names, as ``FolderRepository.find`` finds it
    (:mod:`pipeline.folders.repository`: an id first, else the first by name whose name or
    server name it is; None: no such folder), in one query for them all (no ORM objects)."""
    values = list(dict.fromkeys(ids_or_names))
    ids = [v for v in values if is_uuid(v)]
    folders = Folder.__table__
    matches = (folders.c.name.in_(values)) | (folders.c.raw_name.in_(values))
    if ids:
        matches = matches | folders.c.id.in_(ids)
    rows = conn.execute(
        select(folders.c.id, folders.c.name, folders.c.raw_name)
        .where(folders.c.grant_id == grant_id, matches)
        .order_by(folders.c.name)
    )
    by_id: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for folder_id, name, raw_name in rows:
        by_id[str(folder_id)] = str(folder_id)
        for key in (name, raw_name):
            # the first by name, as FolderRepository.find's LIMIT 1
            by_name.setdefault(key, str(folder_id))
    out: list[str | None] = []
    for value in ids_or_names:
        found = by_id.get(str(uuid.UUID(value))) if is_uuid(value) else None
        out.append(found or by_name.get(value))
    return out


# --- threads -----------------------------------------------------------------------------------


# Aliases made once: an alias adapts each column it is asked for, and keeps what it made
_THREAD_MESSAGE = aliased(Message, name="tm")  # a message of the listed thread
_EARLIER_MESSAGE = aliased(Message, name="earlier")  # one before earliest_message_date


# A thread list's search whose stored-text keys Postgres expects to match more than the first
# and at most the second of these many messages of the grant walks the threads newest first
# with the set of the matches' threads in hand (:func:`text_matches_estimate`,
# :func:`_thread_has_match`). Fewer: Postgres reads the matches and their threads directly,
# and a set of under a page of threads would have the walk pass every thread of the grant.
# More: probing each thread walked costs less than reading every match (FROM "Sender 12",
# 3,667 matches: 17 ms as a set, 6 ms probing; SUBJECT invoice, 1,030: 8 ms as a set, 14 ms
# read with their threads, on a loaded 2-core machine). Other keys besides the text (a flag,
# a date, a folder) make the walk longer and the set no larger: the bound is then
# THREAD_SET_NARROWED times higher (SUBJECT cafe FROM "Sender 1" UNSEEN, 3,361 text matches:
# 18 ms as a set, 53 ms otherwise).
THREAD_SET_MATCHES = (200, 2000)
THREAD_SET_NARROWED = 3


# A search text's row estimate is reused for this long by the API process (at most this many
# kept): a client walking a search's pages asks the same search again and again, and its plan
# (about 1 ms of planning and a round trip, before the page's own statement) moves only with the
# table's statistics, which ANALYZE renews far less often.
ESTIMATE_REUSE_S = 60.0
ESTIMATES_KEPT = 1024


class _Estimates:
    """Row estimates by statement (its SQL and bound values), each reused for
    ``ESTIMATE_REUSE_S``; the oldest dropped past ``ESTIMATES_KEPT``. Shared by the API's
    threadpool threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def get(self, key: str) -> float | None:
        with self._lock:
            found = self._rows.get(key)
            if found is None or time.monotonic() - found[1] > ESTIMATE_REUSE_S:
                return None
            return found[0]

    def put(self, key: str, rows: float) -> None:
        with self._lock:
            self._rows[key] = (rows, time.monotonic())
            self._rows.move_to_end(key)
            while len(self._rows) > ESTIMATES_KEPT:
                self._rows.popitem(last=False)


_estimates = _Estimates()


def text_matches_estimate(conn: Connection, grant_id: str, flt: MessageFilter) -> float | None:
    """How many messages of the grant Postgres expects the stored-text keys of ``flt``'s search
    to match (its plan's row estimate, from the text columns' statistics: planned, never run;
    the trigram index scan that an exact count would cost is as dear as the page's own), or
    None when the search has no such keys at the top. The estimate of the same statement is
    reused for ``ESTIMATE_REUSE_S`` (a search's next pages plan nothing more)."""
    search = _folders_in_search(flt).search
    if not isinstance(search, StoreCondition) or search.text is None:
        return None
    s = message_search
    query = select(literal(1)).select_from(s).where(s.c.grant_id == grant_id, search.text)
    compiled = query.compile(dialect=conn.dialect)
    sql = "EXPLAIN (FORMAT JSON) " + str(compiled)
    key = sql + "\0" + repr(sorted(compiled.params.items()))
    rows = _estimates.get(key)
    if rows is not None:
        return rows
    plan = conn.exec_driver_sql(sql, compiled.params).scalar_one()
    if isinstance(plan, str):  # a driver that does not decode json
        plan = orjson.loads(plan)
    rows = float(plan[0]["Plan"]["Plan Rows"])
    _estimates.put(key, rows)
    return rows


def walks_with_set(flt: MessageFilter, matches: float | None) -> bool:
    """Whether a thread list of ``flt`` whose search text is expected to match ``matches``
    messages (:func:`text_matches_estimate`) walks the threads with the set of the matches'
    threads (``thread_set`` of the thread queries)."""
    if matches is None:
        return False
    fewest, most = THREAD_SET_MATCHES
    search = flt.search
    # a filter besides the search (its own folders aside) narrows it too
    others = _folders_in_search(flt) != MessageFilter(search=search)
    narrowed = others or not (isinstance(search, StoreCondition) and search.text_only)
    return fewest < matches <= most * (THREAD_SET_NARROWED if narrowed else 1)


def _thread_has_match(
    grant_id: str, flt: MessageFilter, *, thread_set: bool = False
) -> ColumnElement[bool]:
    """EXISTS a message of the listed thread that ``flt`` matches.

    Postgres flattens it into a semi-join and chooses between walking the threads newest first
    (probing each one's messages) and starting from the matches (the trigram indexes, a flag's
    partial index), then their threads. The messages carry their grant here as well as the
    thread, so that an index led by ``grant_id`` serves the second plan (``UNSEEN FLAGGED``:
    ``ix_api_messages_grant_starred_date`` read every grant's starred messages without it).
    With keys of the stored search text at the top, the thread's search rows are found by
    their ``thread_id`` (migration 0325) and the text tested on them before any message is read:
    a thread passed cost one index scan and its rows (``FROM "Sender 12"``: 20,666 buffers for a
    page, now about 7,100), and a match found by the trigram indexes leads to its thread without
    reading its message.

    ``thread_set`` (for a text expected to match a few hundred to a few thousand messages: see
    :data:`THREAD_SET_MATCHES`): the threads are walked newest first and each one is first
    looked up in the set of the text matches' threads, hashed once (an IN that is not at the
    top of the WHERE, which Postgres would turn into a join), and only a thread in the set is
    probed for the whole search (an EXISTS that OFFSET 0 keeps a per-thread test). Postgres
    chose instead to read every match with its copy, thread and its thread's date, and sort
    them: ``SUBJECT invoice`` 16,500 buffers for a page, with the set 1,800.
    """
    m = _THREAD_MESSAGE
    flt = _folders_in_search(flt)
    search = flt.search
    if isinstance(search, StoreCondition) and search.text is not None:
        s = message_search
        rest = replace(flt, search=search.rest_joined)
        found = (
            select(1)
            .select_from(s)
            .join(m, m.id == s.c.message_id)
            .where(
                s.c.thread_id == Thread.id,
                s.c.grant_id == grant_id,
                search.text,
                *message_conditions(m, grant_id, rest),
            )
        )
        if not thread_set:
            return exists(found)
        threads_of_text = select(s.c.thread_id).where(s.c.grant_id == grant_id, search.text)
        return and_(Thread.id.in_(threads_of_text).is_(True), exists(found.offset(0)))
    return exists().where(
        m.thread_id == Thread.id, m.grant_id == grant_id, *message_conditions(m, grant_id, flt)
    )


def list_threads_query(
    grant_id: str,
    flt: MessageFilter,
    limit: int,
    after: Cursor | None,
    *,
    latest_before: datetime | None = None,
    latest_after: datetime | None = None,
    earliest_from: datetime | None = None,
    thread_set: bool = False,
) -> Select[str, str, str, datetime | None]:
    """Up to ``limit`` threads with a message matching ``flt`` (and whose latest message is in
    the given window, and whose first message is at or after ``earliest_from``), most recent
    first: their ``id``, ``grant_id``, ``subject`` and ``latest_message_at``. ``thread_set``:
    walk with the set of the search text's threads (:func:`_thread_has_match`)."""
    query = select(Thread.id, Thread.grant_id, Thread.subject, Thread.latest_message_at).where(
        Thread.grant_id == grant_id,
        Thread.latest_message_at.is_not(None),
        _thread_has_match(grant_id, flt, thread_set=thread_set),
    )
    if latest_before is not None:
        query = query.where(Thread.latest_message_at < latest_before)
    if latest_after is not None:
        query = query.where(Thread.latest_message_at > latest_after)
    if earliest_from is not None:
        # no message before it (ix_messages_thread); a thread whose latest message is older
        # cannot qualify, which bounds the scan of the threads index
        earlier = _EARLIER_MESSAGE
        query = query.where(
            Thread.latest_message_at >= earliest_from,
            ~exists().where(earlier.thread_id == Thread.id, earlier.date < earliest_from),
        )
    if after is not None:
        query = query.where(
            tuple_(Thread.latest_message_at, Thread.id)
            < _position(after, Thread.latest_message_at, Thread.id)
        )
    return query.order_by(Thread.latest_message_at.desc(), Thread.id.desc()).limit(limit)


def list_threads_page_query(
    grant_id: str,
    flt: MessageFilter,
    limit: int,
    after: Cursor | None,
    *,
    latest_before: datetime | None = None,
    latest_after: datetime | None = None,
    earliest_from: datetime | None = None,
    thread_set: bool = False,
    as_json: bool = False,
) -> Select[Any]:
    """The statement of :func:`list_threads`: the threads of :func:`list_threads_query`, then
    each one's messages laterally (``page_*`` columns, then a member's, NULL for none);
    ``as_json``: each thread rendered by Postgres (:func:`_thread_json_select`)."""
    page = list_threads_query(
        grant_id,
        flt,
        limit,
        after,
        latest_before=latest_before,
        latest_after=latest_after,
        earliest_from=earliest_from,
        thread_set=thread_set,
    ).subquery("page")
    if as_json:
        return _thread_json_select(page)
    members = _page_members()
    return (
        select(
            page.c.id.label("page_thread_id"),
            page.c.grant_id.label("page_grant_id"),
            page.c.subject.label("page_subject"),
            page.c.latest_message_at.label("page_latest_message_at"),
            members,
        )
        .select_from(page.outerjoin(members, true()))
        .order_by(page.c.latest_message_at.desc(), page.c.id.desc(), members.c.date, members.c.id)
    )


def list_threads(
    conn: Connection,
    grant_id: str,
    flt: MessageFilter,
    limit: int,
    after: Cursor | None,
    *,
    latest_before: datetime | None = None,
    latest_after: datetime | None = None,
    earliest_from: datetime | None = None,
    as_json: bool = False,
    grant_status: bool = False,
) -> list[ThreadPage]:
    """The page :func:`list_threads_query` describes with every message of each thread, in one
    statement (:func:`list_threads_page_query`: the threads, then each one's messages
    laterally, as :func:`thread_members` reads them, with whether each is a draft); for a search
    with stored-text keys, how many messages Postgres expects them to match decides how the
    threads are walked (:func:`text_matches_estimate`). ``as_json``: each thread's ``json``
    is its API view rendered by Postgres (:func:`_thread_json_select`), its ``messages`` empty.
    ``grant_status`` and ``flt.folders_unchecked``: each thread also has the grant's status and
    how many of the folders are the grant's, as :func:`list_messages` reads them.
    """
    if (
        as_json
        and flt == MessageFilter()
        and latest_before is None
        and latest_after is None
        and earliest_from is None
    ):
        values: dict[str, Any] = {"grant_id": grant_id, "limit": limit}
        if after is not None:
            values["after_at"], values["after_id"] = after.at, after.id
        rows = conn.execute(_plain_thread_page(after is not None, grant_status), values).all()
        return _rendered_threads(rows)
    matches = text_matches_estimate(conn, grant_id, flt)
    query = list_threads_page_query(
        grant_id,
        flt,
        limit,
        after,
        latest_before=latest_before,
        latest_after=latest_after,
        earliest_from=earliest_from,
        thread_set=walks_with_set(flt, matches),
        as_json=as_json,
    )
    if grant_status:
        query = query.add_columns(_grant_status(grant_id).label("grant_status"))
    if flt.folder_ids is not None and flt.folders_unchecked:
        found = _folders_found(grant_id, flt.folder_ids)
        query = query.add_columns(found.label("folders_found"))
    rows = conn.execute(query).all()
    if as_json:
        return _rendered_threads(rows)
    return _threads_with_members(rows)


def _rendered_threads(rows: Sequence[Row[Any]]) -> list[ThreadPage]:
    """The threads of a page rendered by Postgres (:func:`_thread_json_select`)."""
    return [
        ThreadPage(
            str(row.page_thread_id),
            "",
            "",
            row.page_latest_message_at,
            [],
            row.json,
            *_page_checks(row),
        )
        for row in rows
    ]


def _page_checks(row: Row[Any]) -> tuple[str | None, int | None]:
    """The ``grant_status`` and ``folders_found`` a page's row carries (None: not asked)."""
    found = row._mapping
    return found.get("grant_status"), found.get("folders_found")


def _threads_with_members(rows: Sequence[Row[Any]]) -> list[ThreadPage]:
    """The threads of a page of :func:`list_threads_page_query` rows (a thread's, then a
    member's columns), each with its messages."""
    out: list[ThreadPage] = []
    for row in rows:
        thread_id = str(row.page_thread_id)
        if not out or out[-1].id != thread_id:
            out.append(
                ThreadPage(
                    thread_id,
                    str(row.page_grant_id),
                    row.page_subject,
                    row.page_latest_message_at,
                    [],
                    None,
                    *_page_checks(row),
                )
            )
        if row.id is not None:
            out[-1].messages.append(row)
    return out


@cache
def _plain_thread_page(cursor: bool, grant_status: bool) -> Select[Any]:
    """The statement of a thread page without filters rendered by Postgres (the list a client
    calls most), built once as :func:`_shaped_page` builds the message pages: its values are
    bound parameters (``grant_id``, ``limit``, ``after_at``, ``after_id``) given when it runs,
    and a statement made once keeps its cache key (building and keying a fresh one was about
    a third of the API's CPU for such a page)."""
    grant_id: Any = bindparam("grant_id", type_=Thread.grant_id.type)
    limit: Any = bindparam("limit", type_=Integer)
    query = list_threads_query(grant_id, MessageFilter(), limit, None)
    if cursor:
        position = tuple_(
            bindparam("after_at", type_=Thread.latest_message_at.type),
            bindparam("after_id", type_=Thread.id.type),
        )
        query = query.where(tuple_(Thread.latest_message_at, Thread.id) < position)
    page = _thread_json_select(query.subquery("page"))
    if grant_status:
        page = page.add_columns(_grant_status(grant_id).label("grant_status"))
    return page


@cache
def _page_members() -> Any:
    """The messages of each thread of the ``page`` subquery, as a LATERAL subquery built once
    (a fresh one cost a fifth of a threads page's CPU in SQLAlchemy's column bookkeeping)."""
    return _members_select(Message.thread_id == literal_column("page.id")).lateral("members")


@dataclass
class ThreadPage:
    """A thread of a list page with its messages, oldest first (rows as
    :func:`thread_members` reads them, with ``is_draft``)."""

    id: str
    grant_id: str
    subject: str
    latest_message_at: datetime
    messages: list[Any]  # rows of _members_select
    json: str | None = None  # the API view rendered by Postgres (list_threads' as_json)
    grant_status: str | None = None  # the grant's (list_threads' grant_status)
    folders_found: int | None = None  # of the folders of `in` (MessageFilter.folders_unchecked)


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


def _members_select(which: ColumnElement[bool]) -> Select[Any]:
    """Messages of threads, oldest first, as rows like :func:`list_messages_query`'s (every
    column attribute but ``headers``, ``folders``, and ``is_draft``: held in a drafts folder of
    the current UIDVALIDITY): the latest message of each thread also has its ``body`` and
    ``attachments`` (a thread's view shows only that one whole), the others have them NULL."""
    latest = (
        func.row_number().over(
            partition_by=Message.thread_id, order_by=(Message.date.desc(), Message.id.desc())
        )
        == 1
    )
    is_draft = _is_draft(Message)
    keys = [k for k in LISTED_ATTRIBUTES if k != "body"]
    return (
        select(
            *_listed_columns(keys),
            case((latest, Message.body)).label("body"),
            _folders_of_message().label("folders"),
            case((latest, _attachments_of_message())).label("attachments"),
            is_draft.label("is_draft"),
        )
        .where(which)
        .order_by(Message.thread_id, Message.date, Message.id)
    )


def _is_draft(m: Any) -> ColumnElement[bool]:
    """Whether message ``m`` is held in a drafts folder of the current UIDVALIDITY."""
    return exists(
        select(Placement.message_id)
        .join(Folder, Folder.id == Placement.folder_id)
        .where(
            Placement.message_id == m.id,
            Folder.role == DRAFTS_ROLE,
            Placement.uidvalidity == Folder.uidvalidity,
        )
    )


_MEMBER = aliased(Message, name="member")  # a message of a listed thread (its rendering)
_LATEST = aliased(Message, name="latest")  # the latest message of a listed thread
_EMPTY_JSON: Any = literal_column("'[]'::json")


@cache
def _thread_json_parts() -> tuple[Any, Any, ColumnElement[Any], ColumnElement[Any]]:
    """The pieces of :func:`_thread_json_select`, built once: for each thread of the ``page``
    subquery, its members' aggregates and its latest message (two LATERAL subqueries), its
    participants and its folders (scalar subqueries). The thread's messages are read once,
    by the aggregates: the latest message is then found by its id, the participants taken
    from the addresses the aggregates collected and the folders from the placements of the
    ids they collected (each of the four read the thread's messages before: 2-3 ms of a page
    of 50 threads)."""
    aggregates = _thread_aggregates()
    return (
        aggregates,
        _thread_latest(aggregates),
        func.coalesce(_thread_participants(aggregates), _EMPTY_JSON),
        func.coalesce(_thread_folders(aggregates), _EMPTY_JSON),
    )


def _thread_aggregates() -> Any:
    """A LATERAL subquery of each ``page`` thread's members (one row): the ids of its messages
    and of its drafts (oldest first), whether any is a draft, unread, starred or has
    attachments, the first and last dates (unix), the latest message's id and whether it is a
    draft, every id (``member_ids``, an array) and the members' From, To, Cc and Bcc oldest
    first (``people``, an array of arrays)."""
    page_id: Any = literal_column("page.id")
    m = _MEMBER
    members = (
        select(
            m.id.label("id"),
            m.date.label("date"),
            m.unread.label("unread"),
            m.starred.label("starred"),
            m.has_attachments.label("has_attachments"),
            _is_draft(m).label("is_draft"),
            m.from_.op("||")(m.to).op("||")(m.cc).op("||")(m.bcc).label("people"),
        )
        .where(m.thread_id == page_id)
        .offset(0)
    )
    mr = members.subquery("member_rows")

    def ids(drafts: bool) -> ColumnElement[Any]:
        which = mr.c.is_draft if drafts else ~mr.c.is_draft
        ordered = func.json_agg(aggregate_order_by(mr.c.id, mr.c.date, mr.c.id))
        return func.coalesce(ordered.filter(which), _EMPTY_JSON)

    def any_of(column: Any) -> ColumnElement[Any]:
        return func.coalesce(func.bool_or(column), false())

    def latest_of(column: Any) -> ColumnElement[Any]:
        newest = aggregate_order_by(column, mr.c.date.desc(), mr.c.id.desc())
        return func.array_agg(newest)[1]

    return (
        select(
            ids(False).label("message_ids"),
            ids(True).label("draft_ids"),
            any_of(mr.c.is_draft).label("has_drafts"),
            any_of(mr.c.unread).label("unread"),
            any_of(mr.c.starred).label("starred"),
            any_of(mr.c.has_attachments).label("has_attachments"),
            _unix(func.min(mr.c.date)).label("earliest"),
            _unix(func.max(mr.c.date)).label("latest"),
            latest_of(mr.c.id).label("latest_id"),
            latest_of(mr.c.is_draft).label("latest_is_draft"),
            func.array_agg(mr.c.id).label("member_ids"),
            func.jsonb_agg(aggregate_order_by(mr.c.people, mr.c.date, mr.c.id)).label("people"),
        )
        .select_from(mr)
        .lateral("thread_agg")
    )


def _thread_latest(aggregates: Any) -> Any:
    """A LATERAL subquery of each ``page`` thread's latest message, by its id: its ``id``,
    ``subject``, ``snippet`` and ``json`` (its view, a draft's ``object`` ``draft``)."""
    latest_m = _LATEST
    object_ = case((aggregates.c.latest_is_draft, "draft"), else_="message")
    return (
        select(
            latest_m.id.label("id"),
            latest_m.subject.label("subject"),
            latest_m.snippet.label("snippet"),
            _message_object(latest_m, object_).label("json"),
        )
        .where(latest_m.id == aggregates.c.latest_id)
        .lateral("thread_latest")
    )


def _thread_participants(aggregates: Any) -> ScalarSelect[Any]:
    """Everyone in From/To/Cc/Bcc of a thread's messages oldest first (the ``people`` its
    aggregates collected), each address once as first spelled (:func:`participant_key`), as
    ``threads._participants`` makes them."""
    per_message = (
        func.jsonb_array_elements(aggregates.c.people)
        .table_valued("value", with_ordinality="ord")
        .render_derived("per_message")
    )
    person = (
        func.jsonb_array_elements(per_message.c.value)
        .table_valued("value", with_ordinality="ord")
        .render_derived("person")
        .lateral()
    )
    key = func.coalesce(participant_key_sql(person.c.value.op("->>")("email")), "")
    firsts = (
        select(
            person.c.value.label("value"),
            per_message.c.ord.label("message_ord"),
            person.c.ord.label("ord"),
        )
        .select_from(per_message)
        .join(person, true())
        .where(key != "")
        .ext(distinct_on(key))
        .order_by(key, per_message.c.ord, person.c.ord)
        .subquery("firsts")
    )
    blank: Any = literal_column("'\"\"'::jsonb")
    return select(
        func.json_agg(
            aggregate_order_by(
                func.json_build_object(
                    _key("name"),
                    func.coalesce(firsts.c.value.op("->")("name"), blank),
                    _key("email"),
                    func.coalesce(firsts.c.value.op("->")("email"), blank),
                ),
                firsts.c.message_ord,
                firsts.c.ord,
            )
        )
    ).scalar_subquery()


def _thread_folders(aggregates: Any) -> ScalarSelect[Any]:
    """The ids of the folders holding any of a thread's messages (the ids its aggregates
    collected), sorted."""
    return (
        select(
            func.json_agg(aggregate_order_by(distinct(Placement.folder_id), Placement.folder_id))
        )
        .where(Placement.message_id == func.any(aggregates.c.member_ids))
        .scalar_subquery()
    )


@cache
def _thread_json_view() -> ColumnElement[str]:
    """The ``json`` column of :func:`_thread_json_select`, built once (the ``page``
    subquery's columns by name): its 34 arguments coerced afresh were a sixth of a searched
    thread page's CPU in the API process."""
    aggregates, latest, participants, folders = _thread_json_parts()
    page_id: Any = literal_column("page.id")
    page_grant_id: Any = literal_column("page.grant_id")
    page_subject: Any = literal_column("page.subject")
    has_latest = latest.c.id.is_not(None)
    view = func.json_build_object(
        _key("id"),
        page_id,
        _key("grant_id"),
        page_grant_id,
        _key("object"),
        _key("thread"),
        _key("subject"),
        case((has_latest, latest.c.subject), else_=page_subject),
        _key("snippet"),
        case((has_latest, latest.c.snippet), else_=""),
        _key("message_ids"),
        aggregates.c.message_ids,
        _key("draft_ids"),
        aggregates.c.draft_ids,
        _key("has_drafts"),
        aggregates.c.has_drafts,
        _key("participants"),
        participants,
        _key("unread"),
        aggregates.c.unread,
        _key("starred"),
        aggregates.c.starred,
        _key("has_attachments"),
        aggregates.c.has_attachments,
        _key("folders"),
        folders,
        _key("earliest_message_date"),
        aggregates.c.earliest,
        _key("latest_message_received_date"),
        aggregates.c.latest,
        _key("latest_message_sent_date"),
        aggregates.c.latest,
        _key("latest_draft_or_message"),
        latest.c.json,
    )
    return cast(view, Text).label("json")


def _thread_json_select(page: Any) -> Select[Any]:
    """Each thread of ``page`` (:func:`list_threads_query` as the subquery ``page``), newest
    first, with its API view rendered by Postgres as JSON text: the keys and values of
    ``threads.thread_view`` (``latest_draft_or_message`` as :func:`message_json` renders a
    message). The rows are ``page_thread_id``, ``page_latest_message_at`` and ``json``.

    The list's 50 threads with their 200 messages were 8.7 ms of the API process's CPU built in
    Python (rows of 30 columns decoded, a view per thread, orjson); passed through as text,
    ``test_listed_threads_are_rendered_as_thread_view_renders_them``
    (tests/integration/api/test_api_folders_threads.py) holds the two renderings equal."""
    aggregates, latest, _, _ = _thread_json_parts()
    return (
        select(
            page.c.id.label("page_thread_id"),
            page.c.latest_message_at.label("page_latest_message_at"),
            _thread_json_view(),
        )
        .select_from(page.outerjoin(aggregates, true()).outerjoin(latest, true()))
        .order_by(page.c.latest_message_at.desc(), page.c.id.desc())
    )


def thread_members(conn: Connection, thread_ids: Sequence[str]) -> dict[str, list[Row[Any]]]:
    """Every message of each thread, oldest first, in one query, as rows like
    :func:`_members_select` describes."""
    out: dict[str, list[Row[Any]]] = {tid: [] for tid in thread_ids}
    if not thread_ids:
        return out
    query = _members_select(Message.thread_id.in_(thread_ids))
    for row in conn.execute(query).all():
        out.setdefault(str(row.thread_id), []).append(row)
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
