"""The message lists and pages the API reads (rendered by Postgres as JSON where it can);
nothing here commits. Their filters are :mod:`pipeline.messages.filters`.

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

from collections.abc import Sequence
from dataclasses import replace
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Row,
    Select,
    Text,
    bindparam,
    case,
    cast,
    distinct,
    func,
    literal,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session, defer
from sqlalchemy.sql.selectable import ScalarSelect

from pipeline import driver_sql
from pipeline.messages.filters import (
    ADDRESS_FILTERS,
    MessageFilter,
    address_conditions,
    address_values,
    folders_in_search,
    message_conditions,
)
from pipeline.models import Attachment, Folder, Grant, Message, Placement
from pipeline.pages import Cursor, is_uuid
from pipeline.search.store import StoreCondition
from pipeline.search.tables import message_search


def keyset_position(after: Cursor, at_column: Any, id_column: Any) -> ColumnElement[Any]:
    """A cursor as a row value typed like the columns it is compared with (uuid, timestamptz)."""
    return tuple_(literal(after.at, type_=at_column.type), literal(after.id, type_=id_column.type))


def json_key(name: str) -> ColumnElement[Any]:
    """A key of an object built by ``json_build_object``, written in the statement: a bound
    parameter each was a placeholder more for psycopg to convert in every execution of a
    statement too long for its cache, and a value more to bind."""
    return literal_column(f"'{name}'")


def attachment_json(a: Any) -> ColumnElement[Any]:
    """An attachment's API view built in SQL (the same keys as ``messages.attachment_view``)."""
    return func.jsonb_build_object(
        json_key("id"),
        a.id,
        json_key("grant_id"),
        a.grant_id,
        json_key("message_id"),
        a.message_id,
        json_key("filename"),
        a.filename,
        json_key("content_type"),
        a.content_type,
        json_key("size"),
        a.size,
        json_key("content_id"),
        a.content_id,
        json_key("content_disposition"),
        case((a.is_inline, "inline"), else_="attachment"),
        json_key("is_inline"),
        a.is_inline,
    )


def folders_of_message() -> ScalarSelect[Any]:
    """The ids of the folders holding the outer query's message (NULL when none)."""
    return (
        select(func.array_agg(distinct(cast(Placement.folder_id, Text))))
        .where(Placement.message_id == Message.id)
        .scalar_subquery()
    )


def attachments_of_message(m: Any = Message) -> ScalarSelect[Any]:
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


def listed_columns(keys: Sequence[str]) -> list[ColumnElement[Any]]:
    """Message columns labelled with their attribute names (``from_``, ``metadata_``): rows
    read the same whether a Session or a plain Connection runs the statement."""
    return [getattr(Message, key).label(key) for key in keys]


@cache
def _page_select(include_headers: bool) -> Select[Any]:
    """The columns of a page, built once (a statement is immutable; each request adds its
    conditions to a copy)."""
    keys = LISTED_ATTRIBUTES + (("headers",) if include_headers else ())
    return select(
        *listed_columns(keys),
        folders_of_message().label("folders"),
        attachments_of_message().label("attachments"),
    )


def unix_seconds(column: Any) -> ColumnElement[Any]:
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
    return cast(message_object(Message, literal("message")), Text)


def message_object(m: Any, object_: ColumnElement[str]) -> ColumnElement[Any]:
    """The API view of message ``m`` (an entity of the outer query) as a ``json`` value, its
    ``object`` the given one (:func:`message_json`)."""
    date = unix_seconds(m.date)
    folders = (
        select(
            func.json_agg(aggregate_order_by(distinct(Placement.folder_id), Placement.folder_id))
        )
        .where(Placement.message_id == m.id)
        .scalar_subquery()
    )
    return func.json_build_object(
        json_key("id"),
        m.id,
        json_key("grant_id"),
        m.grant_id,
        json_key("object"),
        object_,
        json_key("thread_id"),
        m.thread_id,
        json_key("subject"),
        m.subject,
        json_key("from"),
        m.from_,
        json_key("to"),
        m.to,
        json_key("cc"),
        m.cc,
        json_key("bcc"),
        m.bcc,
        json_key("reply_to"),
        m.reply_to,
        json_key("in_reply_to"),
        m.in_reply_to,
        json_key("date"),
        date,
        json_key("created_at"),
        date,
        json_key("unread"),
        m.unread,
        json_key("starred"),
        m.starred,
        json_key("snippet"),
        m.snippet,
        json_key("folders"),
        func.coalesce(folders, literal_column("'[]'::json")),
        json_key("attachments"),
        func.coalesce(attachments_of_message(m), literal_column("'[]'::jsonb")),
        json_key("metadata"),
        m.metadata_,
        json_key("body"),
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
    flt = folders_in_search(flt)
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
        query = query.where(tuple_(date, id_) < keyset_position(after, date, id_))
    return query.order_by(date.desc(), id_.desc()).limit(limit)


# The filters a page statement is made once for, with its values bound per request; a page with
# any other filter (a subject, a thread, metadata, a search) is built afresh.
_Flag = bool | None  # a boolean filter: set or not
_Shape = tuple[
    bool,
    bool,
    str | None,
    _Flag,
    _Flag,
    _Flag,
    bool,
    bool,
    bool,
    bool,
    bool,
    bool,
    tuple[bool, ...],  # each address filter of ADDRESS_FILTERS: asked or not
]
# Statements made once are kept for this many shapes (the least recently used goes first)
_SHAPES_KEPT = 512


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
        tuple(bool(getattr(flt, name)) for name, _ in ADDRESS_FILTERS),
    )


def _address_parameter(name: str) -> str:
    """The bound parameters' prefix of an address filter (``from_`` -> ``from``)."""
    return name.rstrip("_")


@lru_cache(maxsize=_SHAPES_KEPT)
def _shaped_page(shape: _Shape) -> Select[Any]:
    """The page statement of a shape (:func:`_page_shape`), built once: its values are bound
    parameters (``grant_id``, ``limit``, ``folder_ids``, ``before``, ``after``, ``after_at``,
    ``after_id``; ``<filter>_keys`` and ``<filter>_emails`` for each address filter:
    :func:`~pipeline.messages.filters.address_values`), given when it runs. Building a page
    statement and computing its cache key (SQLAlchemy's compiled-statement cache) cost about a
    third of a page's CPU in the API process (with an address filter, three quarters); a
    statement made once keeps its cache key. At most ``_SHAPES_KEPT`` are kept: the filters a
    request may combine are many more than those clients use."""
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
        addresses,
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
    for (name, column), asked in zip(ADDRESS_FILTERS, addresses, strict=True):
        if asked:
            prefix = _address_parameter(name)
            keys: Any = bindparam(f"{prefix}_keys")
            emails: Any = bindparam(f"{prefix}_emails")
            query = query.where(*address_conditions(Message, column, keys, emails))
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
        query = query.add_columns(grant_status_select(grant_id).label("grant_status"))
    if folders_found:
        query = query.add_columns(folders_found_select(grant_id, folder_ids).label("folders_found"))
    return query


def _shaped_values(
    grant_id: str, flt: MessageFilter, limit: int, after: Cursor | None
) -> dict[str, Any]:
    """The values a statement of :func:`_shaped_page` runs with, for this page."""
    values: dict[str, Any] = {"grant_id": grant_id, "limit": limit}
    if flt.folder_ids is not None:
        values["folder_ids"] = flt.folder_ids
    if flt.received_before is not None:
        values["before"] = flt.received_before
    if flt.received_after is not None:
        values["after"] = flt.received_after
    if after is not None:
        values["after_at"], values["after_id"] = after.at, after.id
    for name, column in ADDRESS_FILTERS:
        emails = getattr(flt, name)
        if emails:
            prefix = _address_parameter(name)
            values[f"{prefix}_keys"], lowered = address_values(grant_id, emails)
            if column is not None:  # any_email checks no header: the keys say it all
                values[f"{prefix}_emails"] = lowered
    return values


def grant_status_select(grant_id: Any) -> ScalarSelect[Any]:
    grants = Grant.__table__
    return select(grants.c.grant_status).where(grants.c.id == grant_id).scalar_subquery()


def folders_found_select(grant_id: Any, folder_ids: Any) -> ScalarSelect[Any]:
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
        values = _shaped_values(grant_id, flt, limit, after)
        return driver_sql.rows(conn, _shaped_page(shape), values)
    query = list_messages_query(
        grant_id, flt, limit, after, include_headers=include_headers, as_json=as_json
    )
    if grant_status:
        query = query.add_columns(grant_status_select(grant_id).label("grant_status"))
    if flt.folder_ids is not None and flt.folders_unchecked:
        found = folders_found_select(grant_id, flt.folder_ids)
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
            tuple_(Message.date, Message.id) < keyset_position(after, Message.date, Message.id)
        )
    query = query.order_by(Message.date.desc(), Message.id.desc()).limit(limit)
    return list(session.scalars(query))


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


def get_attachment(session: Session, grant_id: str, attachment_id: str) -> Attachment | None:
    """One attachment's metadata (None when absent or not a UUID)."""
    if not is_uuid(attachment_id):
        return None
    return session.scalar(
        select(Attachment).where(Attachment.id == attachment_id, Attachment.grant_id == grant_id)
    )
