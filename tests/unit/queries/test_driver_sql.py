"""pipeline.driver_sql runs a statement on the psycopg cursor exactly as Connection.execute
would: the same rows (names, values, types) for every shape of the message list page and
the threads' plain page (read as list_threads reads them), the engine's cursor events,
errors wrapped the same way, and SQLAlchemy itself where it must.

On the session's one database (:mod:`tests.support.rollback`): each test loads its rows in a
transaction rolled back at its end, on an engine of its own per type setup (the API's adapters
are a connect listener, which the shared engine must not get)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, literal, select
from sqlalchemy.exc import DataError

from pipeline import driver_sql
from pipeline.api.app import _fast_types
from pipeline.db import normalize_url
from pipeline.messages import queries
from pipeline.messages.filters import MessageFilter
from pipeline.pages import Cursor
from pipeline.threads import queries as thread_queries

GRANT = str(uuid.uuid4())
FOLDERS = [str(uuid.uuid4()) for _ in range(3)]
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _load(conn: Connection) -> None:
    """Six messages: unicode, NULL (in_reply_to, a role) and empty values, attachments,
    metadata, one in two folders."""
    sql = conn.exec_driver_sql
    sql(
        "INSERT INTO grants (id, email, provider, imap_host, imap_port, imap_tls, imap_username,"
        " verify_tls, secrets_sealed, grant_status, sync_state, capabilities) VALUES (%s,"
        " 'me@example.test', 'generic', 'imap.example.test', 993, 'ssl', 'me', true, 'x',"
        " 'valid', 'synced', '{}')",
        (GRANT,),
    )
    for i, (fid, role) in enumerate(zip(FOLDERS, ("inbox", None, "drafts"), strict=True)):
        sql(
            "INSERT INTO folders (id, grant_id, name, raw_name, role, attributes, uidvalidity,"
            " state, synced_uid, to_sync) VALUES (%s, %s, %s, %s, %s, '{}', 1, 'synced', 0, 0)",
            (fid, GRANT, f"F{i} ü", f"F{i}", role),
        )
    for i in range(6):
        mid, thread = str(uuid.uuid4()), str(uuid.uuid4())
        at = T0 - timedelta(hours=i)
        sql(
            "INSERT INTO threads (id, grant_id, subject_key, subject, latest_message_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (thread, GRANT, f"s{i}", f"s{i}", at),
        )
        people = json.dumps([{"name": 'Zoë «Ω» "q"', "email": f"z{i}@example.test"}])
        sql(
            "INSERT INTO messages (id, grant_id, identity_key, header_hash, message_id_header,"
            ' in_reply_to, "references", thread_id, subject, "from", "to", cc, bcc, reply_to,'
            " date, received_at, snippet, body, headers, size, unread, starred, flags,"
            " has_attachments, metadata) VALUES (%s, %s, %s, %s, %s, NULL, '{}', %s, %s, %s,"
            " %s, '[]', '[]', '[]', %s, %s, %s, %s, '[]', 100, %s, false, '{}', %s, %s)",
            (
                mid,
                GRANT,
                f"k{i}",
                f"h{i}",
                f"<{i}@x>",
                thread,
                "" if i == 1 else f"Sujet ✓ {i} 🙂",
                people,
                people if i % 2 else "[]",
                at,
                at,
                "" if i == 2 else f"snippet {i}",
                "" if i == 3 else f"<p>body {i} \u2028 é</p>",
                i % 3 == 0,
                i == 4,
                json.dumps({"k": f"v{i} ü"}) if i % 2 else "{}",
            ),
        )
        folders = [FOLDERS[0], FOLDERS[1]] if i == 5 else [FOLDERS[i % 3]]
        for uid, fid in enumerate(folders, 1):
            sql(
                "INSERT INTO placements (folder_id, uid, uidvalidity, message_id, flags)"
                " VALUES (%s, %s, 1, %s, '{}')",
                (fid, 10 * i + uid, mid),
            )
        if i == 4:
            for part in (2, 3):
                sql(
                    "INSERT INTO attachments (id, message_id, grant_id, filename, content_type,"
                    " size, is_inline, part_path) VALUES (%s, %s, %s, %s, 'application/pdf',"
                    " 10, false, %s)",
                    (str(uuid.uuid4()), mid, GRANT, f"doc {part} ü.pdf", str(part)),
                )


@pytest.fixture(scope="module", params=["api types", "default types"])
def engine(pg_store_url: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An engine on the session's database, with the API's type adapters or without them."""
    engine = create_engine(normalize_url(pg_store_url))
    if request.param == "api types":  # UUIDs as text, JSON by orjson, as the API reads them
        event.listen(engine, "connect", _fast_types)
    yield engine
    engine.dispose()


@pytest.fixture
def conn(engine: Engine) -> Iterator[Connection]:
    """The six messages, loaded in a transaction rolled back when the test ends."""
    with engine.connect() as connection:
        outer = connection.begin()
        try:
            _load(connection)
            yield connection
        finally:
            if outer.is_active:  # a test that rolled back itself ended it (closing rolls back)
                outer.rollback()


SHAPES: list[tuple[MessageFilter, bool, bool]] = [
    # filter, with a cursor, as JSON
    (MessageFilter(not_in_role="drafts"), False, True),
    (MessageFilter(not_in_role="drafts"), True, True),
    (MessageFilter(folder_ids=[FOLDERS[0]]), False, True),
    (MessageFilter(folder_ids=FOLDERS[:2], folders_unchecked=True), False, True),
    (MessageFilter(folder_ids=FOLDERS, folders_unchecked=True), True, True),
    (MessageFilter(unread=True, not_in_role="drafts"), False, True),
    (MessageFilter(has_attachment=True, received_after=T0 - timedelta(days=1)), False, True),
    (MessageFilter(not_in_role="drafts"), False, False),  # the rows message_view reads
    (MessageFilter(folder_ids=FOLDERS[:2], folders_unchecked=True), True, False),
    # the address filters: their keys and addresses are values of the statement made once
    (MessageFilter(from_=["Z1@Example.test", "z4@example.test"]), False, True),
    (MessageFilter(any_email=["z3@example.test"], not_in_role="drafts"), True, True),
    (
        MessageFilter(to=["z1@example.test", "z5@example.test"], from_=["z1@example.test"]),
        False,
        True,
    ),
    (MessageFilter(from_=["z0@example.test", "z2@example.test"], unread=True), False, False),
]


def _statement(flt: MessageFilter, cursor: bool, as_json: bool) -> tuple[Any, dict[str, Any]]:
    after = Cursor(at=T0 - timedelta(hours=1), id=str(uuid.UUID(int=0))) if cursor else None
    shape = queries._page_shape(flt, after, False, True, as_json)
    assert shape is not None
    values = queries._shaped_values(GRANT, flt, 4, after)
    return queries._shaped_page(shape), values


@pytest.mark.parametrize(("flt", "cursor", "as_json"), SHAPES)
def test_rows_are_sqlalchemys(
    conn: Connection, flt: MessageFilter, cursor: bool, as_json: bool
) -> None:
    statement, values = _statement(flt, cursor, as_json)
    expected = conn.execute(statement, values).all()
    got = driver_sql.rows(conn, statement, values)
    assert got, "an empty page proves nothing"
    assert [r._fields for r in got] == [tuple(r._fields) for r in expected]
    assert [tuple(r) for r in got] == [tuple(r) for r in expected]
    assert [[type(v) for v in r] for r in got] == [[type(v) for v in r] for r in expected]
    assert driver_sql._plans[(id(statement), _counts(values))] is not None  # not SQLAlchemy's


def test_a_page_begins_a_transaction_as_connection_execute_does(engine: Engine) -> None:
    statement, values = _statement(SHAPES[0][0], False, True)
    with engine.connect() as fresh:
        assert not fresh.in_transaction()
        driver_sql.rows(fresh, statement, values)
        assert fresh.in_transaction()  # so the pool's reset and a later commit see it
        fresh.rollback()


@pytest.mark.parametrize("grant_status", [False, True])
@pytest.mark.parametrize("cursor", [False, True])
def test_thread_page_rows_are_sqlalchemys(
    conn: Connection, cursor: bool, grant_status: bool
) -> None:
    statement = thread_queries._plain_thread_page(cursor, grant_status)
    values: dict[str, Any] = {"grant_id": GRANT, "limit": 4}
    if cursor:
        values["after_at"], values["after_id"] = T0 - timedelta(hours=1), str(uuid.UUID(int=0))
    expected = conn.execute(statement, values).all()
    got = driver_sql.rows(conn, statement, values)
    assert got, "an empty page proves nothing"
    assert [r._fields for r in got] == [tuple(r._fields) for r in expected]
    assert [tuple(r) for r in got] == [tuple(r) for r in expected]
    assert [[type(v) for v in r] for r in got] == [[type(v) for v in r] for r in expected]
    assert driver_sql._plans[(id(statement), ())] is not None  # not SQLAlchemy's
    pages = thread_queries._rendered_threads(got)
    assert pages == thread_queries._rendered_threads(expected)
    assert {p.grant_status for p in pages} == ({"valid"} if grant_status else {None})


def _counts(values: dict[str, Any]) -> tuple[int, ...]:
    return tuple(len(v) for v in values.values() if isinstance(v, list))


def test_an_address_filter_pages_on_a_statement_made_once(conn: Connection) -> None:
    """The addresses are values: other addresses, the same statement (its cache key kept);
    and the page is what the statement built for those addresses selects."""
    first, values = _statement(MessageFilter(from_=["z1@example.test"]), False, True)
    again, other = _statement(MessageFilter(from_=["z3@example.test"]), False, True)
    assert again is first and other != values
    built = queries.list_messages_query(
        GRANT, MessageFilter(from_=["z3@example.test"]), 4, None, as_json=True
    )
    expected = [r.json for r in conn.execute(built).all()]
    got = [r.json for r in driver_sql.rows(conn, again, other)]
    assert len(got) == 1 and got == expected


def test_the_plans_kept_are_bounded(conn: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request may send any count of addresses or folders: a plan per count is made as
    used, and the plans are emptied when they reach their bound, pages still right."""
    monkeypatch.setattr(driver_sql, "_PLANS_KEPT", 3)
    monkeypatch.setattr(driver_sql, "_plans", {})
    for n in range(1, 7):
        emails = [f"z{i}@example.test" for i in range(n)]
        statement, values = _statement(MessageFilter(any_email=emails), False, True)
        assert len(driver_sql.rows(conn, statement, values)) == min(n, 4)
        assert len(driver_sql._plans) <= 3


def test_cursor_events_see_the_same_sql(conn: Connection) -> None:
    statement, values = _statement(*SHAPES[3])
    seen: list[tuple[str, Any]] = []

    def record(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        seen.append((sql, params))

    event.listen(conn.engine, "before_cursor_execute", record)
    try:
        conn.execute(statement, values).all()
        driver_sql.rows(conn, statement, values)
    finally:
        event.remove(conn.engine, "before_cursor_execute", record)
    assert len(seen) == 2
    assert seen[0] == seen[1]


def test_driver_errors_are_wrapped_as_sqlalchemy_wraps_them(conn: Connection) -> None:
    statement, values = _statement(*SHAPES[0])
    driver_sql.rows(conn, statement, values)  # planned
    conn.rollback()
    with pytest.raises(DataError) as raised:
        driver_sql.rows(conn, statement, {**values, "grant_id": "not a uuid"})
    assert "invalid input syntax for type uuid" in str(raised.value.orig)


def test_a_column_a_named_tuple_cannot_read_runs_through_sqlalchemy(conn: Connection) -> None:
    statement = select(literal(3).label("count"), literal("x").label("json"))
    (row,) = driver_sql.rows(conn, statement, {})
    assert driver_sql._plans[(id(statement), ())] is None
    assert row.count == 3 and row.json == "x"
