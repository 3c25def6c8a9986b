"""The thread lists the API reads: newest first by the latest message, keyset-paginated, with the
message filters applied to their messages (a search walks the threads with the set of its
matches' threads in hand, or probes each thread: :func:`walks_with_set`); a page rendered by
Postgres (:mod:`pipeline.threads.rendered`) or with each thread's messages. Nothing here
commits."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    exists,
    literal,
    literal_column,
    select,
    true,
    tuple_,
)
from sqlalchemy.orm import Session, aliased, defer

from pipeline import driver_sql
from pipeline.messages.filters import MessageFilter, folders_in_search, message_conditions
from pipeline.messages.queries import folders_found_select, grant_status_select, keyset_position
from pipeline.models import Message, Thread
from pipeline.pages import Cursor, is_uuid
from pipeline.search.store import StoreCondition
from pipeline.search.tables import message_search
from pipeline.threads.rendered import members_select, thread_json_select

# Aliases made once: an alias adapts each column it is asked for, and keeps what it made
_THREAD_MESSAGE = aliased(Message, name="tm")  # a message of the listed thread
_EARLIER_MESSAGE = aliased(Message, name="earlier")  # one before earliest_message_date
_SET_MESSAGE = aliased(Message, name="sm")  # a message whose thread is in the walk's set


# A thread list's search whose stored-text keys Postgres expects to match more than the first
# and at most the second of these many messages of the grant walks the threads newest first
# with the set of the matches' threads in hand (:func:`matches_estimate`,
# :func:`_thread_has_match`). Fewer: Postgres reads the matches and their threads directly,
# and a set of under a page of threads would have the walk pass every thread of the grant.
# More: probing each thread walked costs less than reading every match (FROM "Sender 12",
# 3,667 matches: 17 ms as a set, 6 ms probing; SUBJECT invoice, 1,030: 8 ms as a set, 14 ms
# read with their threads, on a loaded 2-core machine). Other keys besides the text (a flag,
# a date, a folder) make the walk longer and the set no larger: the bound is then
# THREAD_SET_NARROWED times higher (SUBJECT cafe FROM "Sender 1" UNSEEN, 3,361 text matches:
# 18 ms as a set, 53 ms otherwise). A search without text keys whose flag or internal date an
# index of the messages serves is estimated by the messages those admit and walked the same way
# (UNSEEN FLAGGED, 2,000 starred unread messages in 100,000: 32 ms of Postgres for a page read
# and sorted every one's thread, 11 ms with the set).
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


def matches_statement(grant_id: str, flt: MessageFilter) -> Select[Any] | None:
    """The statement whose row estimate :func:`matches_estimate` reads: the grant's search rows
    that the stored-text keys at the top of ``flt``'s search match or, for a search without
    them, the grant's messages that meet what it requires of the message itself
    (``StoreCondition.narrow``: a flag's implication, an internal date); None when the search
    has neither."""
    search = folders_in_search(flt).search
    if not isinstance(search, StoreCondition):
        return None
    if search.text is not None:
        s = message_search
        return select(literal(1)).select_from(s).where(s.c.grant_id == grant_id, search.text)
    if search.narrow is not None:
        sm = _SET_MESSAGE
        return select(literal(1)).select_from(sm).where(sm.grant_id == grant_id, search.narrow(sm))
    return None


def matches_estimate(conn: Connection, grant_id: str, flt: MessageFilter) -> float | None:
    """How many messages of the grant Postgres expects ``flt``'s search to admit before its
    copies are looked at (:func:`matches_statement`'s plan's row estimate, from the columns'
    statistics: planned, never run; the index scan an exact count would cost is as dear as the
    page's own), or None when there is no such statement. The estimate of the same statement
    is reused for ``ESTIMATE_REUSE_S`` (a search's next pages plan nothing more)."""
    query = matches_statement(grant_id, flt)
    if query is None:
        return None
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
    """Whether a thread list of ``flt`` whose search is expected to admit ``matches`` messages
    (:func:`matches_estimate`) walks the threads with the set of those messages' threads
    (``thread_set`` of the thread queries)."""
    if matches is None:
        return False
    fewest, most = THREAD_SET_MATCHES
    search = flt.search
    # a filter besides the search (its own folders aside) narrows it too
    others = folders_in_search(flt) != MessageFilter(search=search)
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
    flt = folders_in_search(flt)
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
    found = (
        select(1)
        .select_from(m)
        .where(
            m.thread_id == Thread.id, m.grant_id == grant_id, *message_conditions(m, grant_id, flt)
        )
    )
    if not (thread_set and isinstance(search, StoreCondition) and search.narrow is not None):
        return exists(found)
    # the threads of the messages the search's own keys admit (a flag's implication, a date:
    # the messages' indexes), hashed once, as for a text's; each thread in the set is
    # then probed for the whole search, its copies included (UNSEEN FLAGGED: the 2,000 starred
    # unread messages' copies and threads read and sorted for a page, 22,000 buffers)
    sm = _SET_MESSAGE
    admitted = select(sm.thread_id).where(sm.grant_id == grant_id, search.narrow(sm))
    return and_(Thread.id.in_(admitted).is_(True), exists(found.offset(0)))


@dataclass(frozen=True)
class ThreadCriteria:
    """What a thread list asks for: up to ``limit`` of the grant's threads after ``after``,
    most recent first, that have a message ``flt`` matches, whose latest message is before
    ``latest_before`` and after ``latest_after``, and whose first message is at or after
    ``earliest_from`` (None: no bound). One value, so the list, its statement and its page
    statement take the same criteria without passing each on."""

    grant_id: str
    flt: MessageFilter = field(default_factory=MessageFilter)
    limit: int = 50
    after: Cursor | None = None
    latest_before: datetime | None = None
    latest_after: datetime | None = None
    earliest_from: datetime | None = None

    @property
    def unfiltered(self) -> bool:
        """Every thread of the grant, newest first (the list a client calls most)."""
        windows = (self.latest_before, self.latest_after, self.earliest_from)
        return self.flt == MessageFilter() and windows == (None, None, None)


def list_threads_query(
    criteria: ThreadCriteria, *, thread_set: bool = False
) -> Select[str, str, str, datetime | None]:
    """The threads ``criteria`` asks for: their ``id``, ``grant_id``, ``subject`` and
    ``latest_message_at``. ``thread_set``: walk with the set of the search text's threads
    (:func:`_thread_has_match`)."""
    c = criteria
    query = select(Thread.id, Thread.grant_id, Thread.subject, Thread.latest_message_at).where(
        Thread.grant_id == c.grant_id,
        Thread.latest_message_at.is_not(None),
        _thread_has_match(c.grant_id, c.flt, thread_set=thread_set),
    )
    if c.latest_before is not None:
        query = query.where(Thread.latest_message_at < c.latest_before)
    if c.latest_after is not None:
        query = query.where(Thread.latest_message_at > c.latest_after)
    if c.earliest_from is not None:
        # no message before it (ix_messages_thread); a thread whose latest message is older
        # cannot qualify, which bounds the scan of the threads index
        earlier = _EARLIER_MESSAGE
        query = query.where(
            Thread.latest_message_at >= c.earliest_from,
            ~exists().where(earlier.thread_id == Thread.id, earlier.date < c.earliest_from),
        )
    if c.after is not None:
        query = query.where(
            tuple_(Thread.latest_message_at, Thread.id)
            < keyset_position(c.after, Thread.latest_message_at, Thread.id)
        )
    return query.order_by(Thread.latest_message_at.desc(), Thread.id.desc()).limit(c.limit)


def list_threads_page_query(
    criteria: ThreadCriteria, *, thread_set: bool = False, as_json: bool = False
) -> Select[Any]:
    """The statement of :func:`list_threads`: the threads of :func:`list_threads_query`, then
    each one's messages laterally (``page_*`` columns, then a member's, NULL for none);
    ``as_json``: each thread rendered by Postgres (:func:`thread_json_select`)."""
    page = list_threads_query(criteria, thread_set=thread_set).subquery("page")
    if as_json:
        return thread_json_select(page)
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
    criteria: ThreadCriteria,
    *,
    as_json: bool = False,
    grant_status: bool = False,
) -> list[ThreadPage]:
    """The page :func:`list_threads_query` describes with every message of each thread, in one
    statement (:func:`list_threads_page_query`: the threads, then each one's messages
    laterally, as :func:`thread_members` reads them, with the drafts and Sent folders holding
    each); for a search
    with stored-text keys, how many messages Postgres expects them to match decides how the
    threads are walked (:func:`matches_estimate`). ``as_json``: each thread's ``json``
    is its API view rendered by Postgres (:func:`thread_json_select`), its ``messages`` empty.
    ``grant_status`` and ``flt.folders_unchecked``: each thread also has the grant's status and
    how many of the folders are the grant's, as :func:`list_messages` reads them.
    """
    grant_id, flt, after = criteria.grant_id, criteria.flt, criteria.after
    if as_json and criteria.unfiltered:
        values: dict[str, Any] = {"grant_id": grant_id, "limit": criteria.limit}
        if after is not None:
            values["after_at"], values["after_id"] = after.at, after.id
        statement = _plain_thread_page(after is not None, grant_status)
        return _rendered_threads(driver_sql.rows(conn, statement, values))
    matches = matches_estimate(conn, grant_id, flt)
    query = list_threads_page_query(
        criteria, thread_set=walks_with_set(flt, matches), as_json=as_json
    )
    if grant_status:
        query = query.add_columns(grant_status_select(grant_id).label("grant_status"))
    if flt.folder_ids is not None and flt.folders_unchecked:
        found = folders_found_select(grant_id, flt.folder_ids)
        query = query.add_columns(found.label("folders_found"))
    rows = conn.execute(query).all()
    if as_json:
        return _rendered_threads(rows)
    return _threads_with_members(rows)


def _rendered_threads(rows: Sequence[Any]) -> list[ThreadPage]:
    """The threads of a page rendered by Postgres (:func:`thread_json_select`)."""
    checks = _page_checks(rows)
    return [
        ThreadPage(
            str(row.page_thread_id),
            "",
            "",
            row.page_latest_message_at,
            [],
            row.json,
            *checks(row),
        )
        for row in rows
    ]


def _page_checks(rows: Sequence[Any]) -> Callable[[Any], tuple[str | None, int | None]]:
    """What reads the ``grant_status`` and ``folders_found`` a page's row carries (None: not
    asked); the rows are SQLAlchemy's or :func:`pipeline.driver_sql.rows`' named tuples, whose
    columns (``_fields``) are looked at once: a missing attribute of SQLAlchemy's row costs a
    raised and caught error, twice a row."""
    fields = rows[0]._fields if rows else ()
    status, found = "grant_status" in fields, "folders_found" in fields

    def read(row: Any) -> tuple[str | None, int | None]:
        return (
            row.grant_status if status else None,
            row.folders_found if found else None,
        )

    return read


def _threads_with_members(rows: Sequence[Row[Any]]) -> list[ThreadPage]:
    """The threads of a page of :func:`list_threads_page_query` rows (a thread's, then a
    member's columns), each with its messages."""
    out: list[ThreadPage] = []
    checks = _page_checks(rows)
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
                    *checks(row),
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
    query = list_threads_query(ThreadCriteria(grant_id, limit=limit))
    if cursor:
        position = tuple_(
            bindparam("after_at", type_=Thread.latest_message_at.type),
            bindparam("after_id", type_=Thread.id.type),
        )
        query = query.where(tuple_(Thread.latest_message_at, Thread.id) < position)
    page = thread_json_select(query.subquery("page"))
    if grant_status:
        page = page.add_columns(grant_status_select(grant_id).label("grant_status"))
    return page


@cache
def _page_members() -> Any:
    """The messages of each thread of the ``page`` subquery, as a LATERAL subquery built once
    (a fresh one cost a fifth of a threads page's CPU in SQLAlchemy's column bookkeeping)."""
    return members_select(Message.thread_id == literal_column("page.id")).lateral("members")


@dataclass
class ThreadPage:
    """A thread of a list page with its messages, oldest first (rows as
    :func:`thread_members` reads them, with ``roles``)."""

    id: str
    grant_id: str
    subject: str
    latest_message_at: datetime
    messages: list[Any]  # rows of members_select
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
