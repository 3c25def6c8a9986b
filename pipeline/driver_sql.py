"""Statements built once, compiled once, and run on the driver's cursor.

A list page's statement is built once per shape (:func:`pipeline.messages.queries._shaped_page`)
and only its values change. ``Connection.execute`` still looks the compiled form up in its cache,
builds an execution context, processes every parameter and wraps the result and each row: about
0.3 ms of CPU a page in the API process, a sixth of what it spends on one. :func:`rows` runs such
a statement as SQLAlchemy would (the same SQL text, the same parameters, the same connection and
events, errors wrapped the same way), straight on the psycopg cursor of the connection.

It does so only where that changes nothing: the statement's SQL for a number of values of each
expanding parameter is kept (:class:`_Plan`) after checking, on the first call, that the
parameters it makes are exactly SQLAlchemy's, that no parameter has a bind processor, and that
every column name reads as an attribute of a row; otherwise it runs through
``Connection.execute``. Each column's result processor (the UUID's ``str``) is applied as
SQLAlchemy applies it. Rows are named tuples, read as SQLAlchemy's rows are (``row.json``,
``row.date``, ``rows[0]``).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Executable
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class _Plan:
    """How to run a statement for one count of values of each expanding parameter."""

    statement: Any  # held, so that its id() in the cache key is never reused
    sql: str  # the driver's SQL, as SQLAlchemy sends it
    constants: dict[str, Any]  # the values bound in the statement itself (its literals)
    expanding: tuple[str, ...]  # the expanding parameters' names
    row: Callable[[Iterable[Any]], Any]  # a named tuple of the columns, from their values
    # (column index, SQLAlchemy's result processor) of the columns that have one
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]


# (id of the statement, counts of the list values) -> its plan; None: run by SQLAlchemy. Filled
# once per shape (two threads may both make a plan: the same one), and emptied when it holds
# _PLANS_KEPT: the counts a request may send are many, and each plan holds its statement.
_plans: dict[tuple[int, tuple[int, ...]], _Plan | None] = {}
_PLANS_KEPT = 2048


def rows(conn: Connection, statement: Executable, values: Mapping[str, Any]) -> Sequence[Any]:
    """Every row of ``statement`` run with ``values`` (a list for an expanding parameter).
    Call it only with statements that live as long as the process (built once): the plans
    are kept."""
    counts = tuple(len(v) for v in values.values() if isinstance(v, list | tuple))
    key = (id(statement), counts)
    try:
        plan = _plans[key]
    except KeyError:
        if len(_plans) >= _PLANS_KEPT:
            _plans.clear()  # made again as used (a plan costs about a compile)
        plan = _plans.setdefault(key, _plan(conn, statement, values))
    if plan is None:
        return conn.execute(statement, dict(values)).all()
    if not conn.in_transaction():
        conn.begin()  # as Connection.execute begins one (a no-op for the server in autocommit)
    return _run(conn, plan, _parameters(plan, values))


def _parameters(plan: _Plan, values: Mapping[str, Any]) -> dict[str, Any]:
    """The driver's parameters: the constants, the values, each expanding one's items as
    ``name_1``, ``name_2``... (as SQLAlchemy expands them)."""
    out = dict(plan.constants)
    for name, value in values.items():
        if name in plan.expanding:
            for i, item in enumerate(value, 1):
                out[f"{name}_{i}"] = item
        else:
            out[name] = value
    return out


def _plan(conn: Connection, statement: Executable, values: Mapping[str, Any]) -> _Plan | None:
    """The plan of ``statement`` for the counts of ``values``, or None when running it on the
    cursor could differ from ``Connection.execute`` in any way."""
    compiled = statement.compile(dialect=conn.dialect)  # type: ignore[attr-defined]
    if not isinstance(compiled, SQLCompiler) or compiled.positional:
        return None
    dialect = conn.dialect
    if compiled._bind_processors:
        return None
    names = [column.keyname for column in compiled._result_columns]
    if any(hasattr(tuple, name) for name in names):
        return None  # a column row.count or row.index would not read
    try:
        row = cast(Any, namedtuple("Row", names))._make  # names known only at run time
    except ValueError:  # a name that is no identifier, or a duplicate
        return None
    processors = []
    for i, column in enumerate(compiled._result_columns):
        processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
        if processor is not None:
            processors.append((i, processor))
    state = compiled.construct_expanded_state(dict(values))
    expanding = tuple(b.key for b in compiled.binds.values() if b.expanding)
    given = {n for n in values if n not in expanding}
    given |= {f"{n}_{i}" for n in expanding for i in range(1, len(values.get(n, ())) + 1)}
    constants = {k: v for k, v in state.parameters.items() if k not in given}
    plan = _Plan(statement, state.statement, constants, expanding, row, tuple(processors))
    if _parameters(plan, values) != dict(state.parameters):
        return None
    return plan


def _run(conn: Connection, plan: _Plan, parameters: dict[str, Any]) -> list[Any]:
    """The plan's SQL on the connection's psycopg cursor, with the engine's cursor events, its
    rows as SQLAlchemy would make their values, and a driver error raised as SQLAlchemy raises
    it (wrapped; a lost connection invalidates the pool)."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    sql = plan.sql
    for before in conn.dispatch.before_cursor_execute:
        sql, parameters = before(conn, cursor, sql, parameters, None, False)
    try:
        cursor.execute(sql, parameters)
        fetched = cursor.fetchall()
    except conn.dialect.loaded_dbapi.Error as exc:
        conn._handle_dbapi_exception(exc, sql, parameters, cursor, None)  # raises
        raise  # pragma: no cover (never reached)
    finally:
        cursor.close()
    for after in conn.dispatch.after_cursor_execute:
        after(conn, cursor, sql, parameters, None, False)
    make, processors = plan.row, plan.processors
    if not processors:
        return [make(values) for values in fetched]
    out = []
    for values in fetched:
        processed = list(values)
        for i, processor in processors:
            processed[i] = processor(processed[i])
        out.append(make(processed))
    return out
