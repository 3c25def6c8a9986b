"""A page of threads rendered by Postgres: each thread's API view (its latest message whole,
participants, folders, flags) as JSON built in the page's statement (:func:`thread_json_select`),
and the rows of each thread's messages (:func:`thread_members`) for the views built in Python."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    Text,
    any_,
    case,
    cast,
    distinct,
    false,
    func,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by, distinct_on
from sqlalchemy.orm import aliased
from sqlalchemy.sql.selectable import ScalarSelect

from pipeline.messages.filters import participant_key_sql
from pipeline.messages.queries import (
    LISTED_ATTRIBUTES,
    attachments_of_message,
    folders_of_message,
    json_key,
    listed_columns,
    message_object,
    unix_seconds,
)
from pipeline.messages.roles import DRAFTS_ROLE, SENT_ROLE
from pipeline.models import Folder, Message, Placement


def members_select(which: ColumnElement[bool]) -> Select[Any]:
    """Messages of threads, oldest first, as rows like :func:`list_messages_query`'s (every
    column attribute but ``headers``, ``folders``, and ``roles``: :func:`held_roles`): the
    latest message of each thread also has its ``body`` and ``attachments`` (a thread's view
    shows only that one whole), the others have them NULL."""
    latest = (
        func.row_number().over(
            partition_by=Message.thread_id, order_by=(Message.date.desc(), Message.id.desc())
        )
        == 1
    )
    keys = [k for k in LISTED_ATTRIBUTES if k != "body"]
    return (
        select(
            *listed_columns(keys),
            case((latest, Message.body)).label("body"),
            folders_of_message().label("folders"),
            case((latest, attachments_of_message())).label("attachments"),
            held_roles(Message).label("roles"),
        )
        .where(which)
        .order_by(Message.thread_id, Message.date, Message.id)
    )


# What a thread's view tells of each of its messages by the folders that hold it: a draft (in
# Drafts) is no message of the thread, and one in Sent is a message the account sent
# (``latest_message_sent_date``), any other one it received (``latest_message_received_date``).
#
# Sent by the account means held in the grant's Sent folder, not From the grant's address:
# the Sent folder is the server's own record of what the account sent, whatever address it
# sent from (aliases, send-as and group addresses From cannot tell), and every way mail is sent
# files there: this engine's sends (pipeline.outbound.sent_copy: appended, or found where the
# provider files it), other IMAP clients, the providers' own webmail. From the grant's address
# would count spoofed mail ("From: you" phishing) as sent, and costs a JSON test of each
# message and the grant's address in every page statement. A sent message moved out of Sent
# reads as received, as it does to an IMAP client; one in Sent and in another folder too (mail
# to oneself) is sent.
TOLD_ROLES = (DRAFTS_ROLE, SENT_ROLE)


def held_roles(m: Any) -> ColumnElement[list[str]]:
    """The roles among :data:`TOLD_ROLES` of the folders holding message ``m`` in their current
    UIDVALIDITY, as an array (empty for none): one probe of its placements tells both. An
    EXISTS for each, as drafts had alone, probes them twice: a page of 51 threads (345
    messages, 40,000 in the database) took 1.4 ms more than with drafts alone, this 0.45 ms
    (both renderings' new dates included)."""
    held = (
        select(Folder.role)
        .join(Placement, Placement.folder_id == Folder.id)
        .where(
            Placement.message_id == m.id,
            or_(*(Folder.role == role for role in TOLD_ROLES)),
            Placement.uidvalidity == Folder.uidvalidity,
        )
    )
    return func.array(held.scalar_subquery(), type_=ARRAY(Text))


def _holds(roles: Any, role: str) -> ColumnElement[bool]:
    """Whether the array ``roles`` (:func:`held_roles`) has ``role`` (written in the
    statement, as :func:`json_key` writes keys)."""
    return literal_column(f"'{role}'") == any_(roles)


_MEMBER = aliased(Message, name="member")  # a message of a listed thread (its rendering)
_LATEST = aliased(Message, name="latest")  # the latest message of a listed thread
_EMPTY_JSON: Any = literal_column("'[]'::json")


@cache
def _thread_json_parts() -> tuple[Any, Any, ColumnElement[Any], ColumnElement[Any]]:
    """The pieces of :func:`thread_json_select`, built once: for each thread of the ``page``
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
    attachments, the first and last dates (unix), the dates of the latest message received
    and of the latest sent (unix, NULL for none: :data:`TOLD_ROLES`), the latest message's id
    and whether it is a draft, every id (``member_ids``, an array) and the members' From, To,
    Cc and Bcc oldest first (``people``, an array of arrays)."""
    page_id: Any = literal_column("page.id")
    m = _MEMBER
    members = (
        select(
            m.id.label("id"),
            m.date.label("date"),
            m.unread.label("unread"),
            m.starred.label("starred"),
            m.has_attachments.label("has_attachments"),
            held_roles(m).label("roles"),
            m.from_.op("||")(m.to).op("||")(m.cc).op("||")(m.bcc).label("people"),
        )
        .where(m.thread_id == page_id)
        .offset(0)
    )
    mr = members.subquery("member_rows")
    is_draft, is_sent = _holds(mr.c.roles, DRAFTS_ROLE), _holds(mr.c.roles, SENT_ROLE)

    def ids(drafts: bool) -> ColumnElement[Any]:
        which = is_draft if drafts else ~is_draft
        ordered = func.json_agg(aggregate_order_by(mr.c.id, mr.c.date, mr.c.id))
        return func.coalesce(ordered.filter(which), _EMPTY_JSON)

    def any_of(column: Any) -> ColumnElement[Any]:
        return func.coalesce(func.bool_or(column), false())

    def latest_of(column: Any) -> ColumnElement[Any]:
        newest = aggregate_order_by(column, mr.c.date.desc(), mr.c.id.desc())
        return func.array_agg(newest)[1]

    def latest_date(which: ColumnElement[bool]) -> ColumnElement[Any]:
        return unix_seconds(func.max(mr.c.date).filter(which))

    return (
        select(
            ids(False).label("message_ids"),
            ids(True).label("draft_ids"),
            any_of(is_draft).label("has_drafts"),
            any_of(mr.c.unread).label("unread"),
            any_of(mr.c.starred).label("starred"),
            any_of(mr.c.has_attachments).label("has_attachments"),
            unix_seconds(func.min(mr.c.date)).label("earliest"),
            unix_seconds(func.max(mr.c.date)).label("latest"),
            latest_date(~is_draft & ~is_sent).label("latest_received"),
            latest_date(~is_draft & is_sent).label("latest_sent"),
            latest_of(mr.c.id).label("latest_id"),
            latest_of(is_draft).label("latest_is_draft"),
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
            message_object(latest_m, object_).label("json"),
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
                    json_key("name"),
                    func.coalesce(firsts.c.value.op("->")("name"), blank),
                    json_key("email"),
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
    """The ``json`` column of :func:`thread_json_select`, built once (the ``page``
    subquery's columns by name): its arguments coerced afresh were a sixth of a searched
    thread page's CPU in the API process.

    A thread with no message received, or none sent, has no ``latest_message_received_date``
    or ``latest_message_sent_date`` (Nylas' SDKs have both optional): the object's text is
    the members every thread has, then those two where not NULL and ``latest_draft_or_message``
    appended as text (``json_strip_nulls`` would drop the latest message's null fields too,
    and building it as ``jsonb`` would parse the latest message's JSON, body and all, again;
    the splice costs about 0.4 ms a page of 51 threads)."""
    aggregates, latest, participants, folders = _thread_json_parts()
    page_id: Any = literal_column("page.id")
    page_grant_id: Any = literal_column("page.grant_id")
    page_subject: Any = literal_column("page.subject")
    has_latest = latest.c.id.is_not(None)
    always = func.json_build_object(
        json_key("id"),
        page_id,
        json_key("grant_id"),
        page_grant_id,
        json_key("object"),
        json_key("thread"),
        json_key("subject"),
        case((has_latest, latest.c.subject), else_=page_subject),
        json_key("snippet"),
        case((has_latest, latest.c.snippet), else_=""),
        json_key("message_ids"),
        aggregates.c.message_ids,
        json_key("draft_ids"),
        aggregates.c.draft_ids,
        json_key("has_drafts"),
        aggregates.c.has_drafts,
        json_key("participants"),
        participants,
        json_key("unread"),
        aggregates.c.unread,
        json_key("starred"),
        aggregates.c.starred,
        json_key("has_attachments"),
        aggregates.c.has_attachments,
        json_key("folders"),
        folders,
        json_key("earliest_message_date"),
        aggregates.c.earliest,
    )
    latest_json = func.coalesce(cast(latest.c.json, Text), literal_column("'null'"))
    view = (
        func.left(cast(always, Text), literal_column("-1"))  # without its closing brace
        + _member_unless_null("latest_message_received_date", aggregates.c.latest_received)
        + _member_unless_null("latest_message_sent_date", aggregates.c.latest_sent)
        + _member("latest_draft_or_message", latest_json)
        + literal_column("'}'")
    )
    return view.label("json")


def _member(key: str, text: ColumnElement[Any]) -> ColumnElement[str]:
    """``, "key" : <text>``: a member after others of an object's JSON text, spelled as
    ``json_build_object`` spells its members (``key`` a constant needing no escape)."""
    return literal_column(f"', \"{key}\" : '", Text) + text


def _member_unless_null(key: str, number: ColumnElement[Any]) -> ColumnElement[str]:
    """:func:`_member` of a number, or nothing (``''``) where it is NULL."""
    return func.coalesce(_member(key, cast(number, Text)), literal_column("''"))


def thread_json_select(page: Any) -> Select[Any]:
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
    :func:`members_select` describes."""
    out: dict[str, list[Row[Any]]] = {tid: [] for tid in thread_ids}
    if not thread_ids:
        return out
    query = members_select(Message.thread_id.in_(thread_ids))
    for row in conn.execute(query).all():
        out.setdefault(str(row.thread_id), []).append(row)
    return out
