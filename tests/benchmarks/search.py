"""Benchmark: ``search_query_native`` answered from the store, next to the same SQL on Postgres.

One command (from the repository root)::

    .venv/bin/python tests/benchmarks/search.py --grant-rows 100000 --requests 200
    .venv/bin/python tests/benchmarks/search.py --database search_bench --keep   # reuse the data
    .venv/bin/python tests/benchmarks/search.py --lists threads --only cafe --explain

It creates a throwaway database on the Postgres of the tests (``IMAP_PIPELINE_TEST_PG``;
``--database NAME --keep`` keeps it and a later run with the same name reuses its data),
migrates it (the search table, triggers and indexes of migrations 0320-0324), generates
``--grant-rows`` messages in the measured grant and as many again spread over four other grants
(``INSERT ... SELECT generate_series``: subjects, senders, recipients, Date headers, flags,
threads of four messages; the measured grant's messages in INBOX, one in five in Archive),
starts ``imap-pipeline api`` and, per search (bare keys, phrases, folded text, addresses, flags,
dates, sizes, combinations, and some with ``in=Archive``), asks ``--requests`` times for the
first page (50) of ``GET /messages`` and of ``GET /threads`` with ``search_query_native``; then
runs the very same statement (the API's page query with the search condition, compiled)
straight on Postgres as many times, on a connection with the API's server settings
(``API_PG_OPTIONS``), and each list without any filter over HTTP. It prints p50/p99 of each,
the ratio of the API's p99 to the same statement's p99 (the baseline of the same run) and to
the unfiltered list's, the CPU milliseconds each request cost the API process and the Postgres
backends (``/proc``: less disturbed by the other load on the machine than wall time, at 10 ms
clock ticks over all the requests of a search), the load average, and whether the slowest API
p99 is under the issue's 50 ms. Client, API and Postgres share the machine.

Criteria that need the IMAP server (``BODY``, ``TEXT``, ``HEADER``, and bare words, which mean
``TEXT``: the store keeps one display body per message, not the text the server searches) are
not measured here: they cost the server's SEARCH (pipeline.search.server).

Measured 2026-12-07 with the first command, on one database (indexes rebuilt by migration 0326)
for both, the code before and after the thread-search work (migrations 0325-0326,
``pipeline.threads.queries._thread_has_match``), on the 2-core machine while other benchmarks and
test runs went on: the wall times follow the load (the same code's p99 moved 2-4x between two
runs), the Postgres CPU a request much less. Goal (p99 under 50 ms):

- messages (code unchanged): met at load 1.9-2.8, every search's API p99 5.9-19.4 ms (plain
  list 6.3; slowest SUBJECT cafe FROM "Sender 1" UNSEEN + in=Archive); not met at load 5.8
  (16.5-135 ms, FROM sender7@ the slowest: its trigram index scan is most of its 8.5-11 ms of
  Postgres CPU).
- threads: not met. At load 2.7-4.5 the plain thread list's p99 was 28-50 ms and its
  CPU 17 ms a request (API 10, Postgres 7); searches' API p99 after 8-261 ms, before 18-192 ms
  in paired runs, too noisy to rank. Postgres CPU ms a request, before -> after (two runs
  each): SUBJECT invoice 20.5 -> 11.0, FROM "Sender 12" 20.6 -> 13.0, OR SUBJECT invoice FROM
  sender7@ 25.6 -> 14.8, SUBJECT cafe FROM "Sender 1" UNSEEN 45.9 -> 18.4 (+ in=Archive 28.5 ->
  22.0), SUBJECT invoice + in=Archive 23.0 -> 15.5, FROM sender7@ 15.0 -> 12.3, UNSEEN FLAGGED
  26.9 -> 21.9, FROM sender10@ + in=Archive 14.5 -> 12.9, SUBJECT cafe 10.1 -> 8.7; the others
  within 1.2 ms either way (8-9 ms; LARGER 6000 16), a search with text keys paying up to about
  1 ms for the plan whose row estimate chooses how the threads are walked (TO me@example 8.0 ->
  9.2).
  The API's own CPU, 10-14 ms a request for 50 threads with their 200 messages, is what stays.
- threads after Postgres renders each thread's view (``rendered.thread_json_select``, the
  unfiltered page a statement made once), paired runs at load 2.4-3.0, before -> after: plain
  list API CPU 8.6 -> 2.6 ms, Postgres 6.0 -> 9.7 (12.3 ms a request in all, 14.6 before),
  p50 14.2 -> 11.9, p99 25.0 -> 16.3; searches' API CPU 6.4-12.5 -> 4.2-8.0 ms, their Postgres
  CPU 1-4 ms higher (the page's statement plans in about 1.7 ms, the row statement in 0.6),
  so a search's CPU in all is within 2.5 ms either way (NOT SEEN 18.9 -> 13.0, FROM sender10@
  + in=Archive 21.9 -> 24.2). Goal still not met: searches' p99 16-79 ms after, 13-61 before,
  one run each, the slowest a different search every run.
- threads after the grant's check rides on the page statement, each thread's messages are read
  once by its rendering (``rendered._thread_aggregates``; the plain page's buffers 3,368 ->
  2,514) and a search text's row estimate is reused for a minute (``ESTIMATE_REUSE_S``; the
  replay's statements changed alike): ``--requests 100 --lists threads --database
  h_api12_search --keep``, main before (A, load 9.8-10.8) and after (B, load 9.3-10.4), back
  to back, 2026-12-07 13:23-13:31 UTC. API CPU a request lower in 16 of 18 searches (by up to
  1.8 ms; cafe and nowhere-to-be-found 0.8-1.1 ms higher), Postgres CPU lower in 14 (by 0.1-3
  ms: TO me@example 12.2 -> 9.9, SUBJECT cafe FROM "Sender 1" UNSEEN 22.2 -> 19.2, LARGER 6000
  21.7 -> 19.1), within 0.5 ms higher in 4. The dearest stay the searches without text keys
  whose matches Postgres reads all, then sorts their threads (UNSEEN FLAGGED: every starred
  unread message of the grant and its copies' flags, 2,000 threads sorted for 51, 22,000
  buffers, 27 ms of Postgres CPU). p99 at that load 50-220 ms (A), 45-187 (B): the goal (under
  50 ms) is for a quiet machine to judge.

On a quiet machine (2026-12-07/08, load average 0.7-1.9, nothing else running; the first
command with ``--database search13 --keep``), before and after the flag and date searches of a
thread list walk with the set of the threads of the messages their keys admit
(``StoreCondition.narrow``, ``threads.queries.matches_statement``) and a flag's copies are
probed by message id:

- messages: met in both, every search's API p99 14-30 ms (the plain list 10).
- threads, before (23:39 UTC): not met, five searches over 50 ms: SINCE 04-Dec-2026 UNSEEN
  76.6 ms (53 ms of Postgres CPU a request, 25 of them a scan of every copy of the table
  for the flag), SUBJECT cafe FROM "Sender 1" UNSEEN + in=Archive 66.5, UNSEEN FLAGGED 63.1
  (every starred unread message's thread read and sorted: 32 ms by EXPLAIN ANALYZE),
  SUBJECT cafe FROM "Sender 1" UNSEEN 57.0, OR SUBJECT invoice FROM sender7@ 51.6.
- threads, after (00:09 UTC, 200 requests): still not met, three over: SUBJECT cafe FROM
  "Sender 1" UNSEEN + in=Archive 59.9 ms, LARGER 6000 54.9 (44-53 in other runs: no index
  on the size, it stays on the old plan), SUBJECT cafe FROM "Sender 1" UNSEEN 52.6; UNSEEN
  FLAGGED 34.5 (EXPLAIN ANALYZE 11 ms), SINCE 05-Dec-2026 UNSEEN 46.4, OR SUBJECT invoice FROM
  sender7@ 42.3; the plain thread list 22.7. What stays: the API's own CPU for a searched
  thread page, 8-13 ms against 3 for the plain list (the search's statement is built, keyed
  and compiled per request, where the plain page's is made once), and Postgres rendering each
  thread (the plain list's 15 ms of Postgres CPU a page); the dearest searches' Postgres CPU a
  request (31-38 ms) is also well above their statement's EXPLAIN ANALYZE (20-22 ms), a gap
  not explained yet (JIT off changed nothing).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

import api_list_messages  # noqa: E402
from api_list_messages import API_KEY, percentile, start_api  # noqa: E402
from cpu import CpuMeter, cmdline_has, tree  # noqa: E402

from pipeline.api.app import API_PG_OPTIONS  # noqa: E402
from pipeline.db import migrate  # noqa: E402
from pipeline.messages import queries as message_queries  # noqa: E402
from pipeline.messages.filters import MessageFilter  # noqa: E402
from pipeline.messages.queries import list_messages_query  # noqa: E402
from pipeline.messages.roles import DRAFTS_ROLE  # noqa: E402
from pipeline.search import criteria, store  # noqa: E402
from pipeline.threads.queries import (  # noqa: E402
    ThreadCriteria,
    list_threads_page_query,
    matches_statement,
    walks_with_set,
)

ADMIN_URL = os.environ.get("IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PAGE = 50
OTHER_GRANTS = 4
GOAL_P99_MS = 50.0  # issue 12: search p99 under 50 ms
HTTP_TIMEOUT_S = 30
# the API's start-up (imports, first connections) took over api_list_messages' 30 s at load 16
api_list_messages.START_TIMEOUT_S = 120
THREAD_SIZE = 4  # messages a thread
ARCHIVE_EVERY = 5  # one message in five is in the Archive folder, the others in the Inbox
ARCHIVE = "Archive"

GENERATE = """
INSERT INTO messages (id, grant_id, identity_key, header_hash, "references", subject, "from", "to",
    cc, bcc, reply_to, date, received_at, snippet, body, headers, size, unread, starred, flags,
    has_attachments, thread_id, created_at, updated_at)
SELECT gen_random_uuid(), %(grant)s::uuid, 'k' || i, md5(i::text), '{}', s.subject,
    jsonb_build_array(jsonb_build_object('name', 'Sender ' || (i %% 300),
        'email', 'sender' || (i %% 300) || '@example.test')),
    jsonb_build_array(jsonb_build_object('name', 'Me', 'email', 'me@example.test')),
    '[]', '[]', '[]', d.sent, d.sent + interval '5 seconds',
    'Snippet of message ' || i, 'Body text of a generated message.',
    jsonb_build_array(
        jsonb_build_object('name', 'Subject', 'value', s.subject),
        jsonb_build_object('name', 'From',
            'value', 'Sender ' || (i %% 300) || ' <sender' || (i %% 300) || '@example.test>'),
        jsonb_build_object('name', 'To', 'value', 'Me <me@example.test>'),
        jsonb_build_object('name', 'Date',
            'value', to_char(d.sent AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS') || ' +0000')),
    2048 + i %% 4096, (i %% 10) < 3, (i %% 50) = 0,
    CASE WHEN (i %% 10) < 3 THEN '{}'::text[] ELSE ARRAY['\\Seen'] END
        || CASE WHEN (i %% 50) = 0 THEN ARRAY['\\Flagged'] ELSE '{}'::text[] END,
    false, md5(%(grant)s || ':t' || (i / THREAD_SIZE))::uuid, now(), now()
FROM generate_series(%(start)s::int, %(stop)s::int) AS i,
    LATERAL (SELECT 'Subject ' || (i %% 5000) || CASE WHEN i %% 97 = 0 THEN ' invoice' ELSE '' END
             || CASE WHEN i %% 11 = 0 THEN ' Café crème' ELSE '' END AS subject) AS s,
    LATERAL (SELECT now() - make_interval(secs => i * 60) AS sent) AS d
"""

# threads of THREAD_SIZE consecutive messages (minutes apart), made before their messages
THREADS = """
INSERT INTO threads (id, grant_id, subject_key, subject)
SELECT md5(%(grant)s || ':t' || t)::uuid, %(grant)s::uuid,
    'subject ' || ((t * THREAD_SIZE) %% 5000), 'Subject ' || ((t * THREAD_SIZE) %% 5000)
FROM generate_series(0, %(rows)s::int / THREAD_SIZE) AS t
"""

LATEST = """
UPDATE threads AS t SET latest_message_at = m.latest
FROM (SELECT thread_id, max(date) AS latest FROM messages GROUP BY thread_id) AS m
WHERE m.thread_id = t.id
"""

# one message in ARCHIVE_EVERY in the Archive folder, the others in the Inbox
PLACE = """
INSERT INTO placements (folder_id, uid, uidvalidity, message_id, flags)
SELECT CASE WHEN substr(identity_key, 2)::int %% ARCHIVE_EVERY = 0 THEN %(archive)s::uuid
    ELSE %(inbox)s::uuid END, row_number() OVER (), 1, id, flags
FROM messages WHERE grant_id = %(grant)s::uuid
"""


GENERATE = GENERATE.replace("THREAD_SIZE", str(THREAD_SIZE))
THREADS = THREADS.replace("THREAD_SIZE", str(THREAD_SIZE))
PLACE = PLACE.replace("ARCHIVE_EVERY", str(ARCHIVE_EVERY))


def build(url: str, grant_rows: int) -> None:
    """Fill the database: the measured grant (the one with folders) and the others."""
    grants = [str(uuid.uuid4()) for _ in range(OTHER_GRANTS + 1)]
    target = grants[0]
    with psycopg.connect(url, autocommit=True) as conn:
        for i, gid in enumerate(grants):
            conn.execute(
                "INSERT INTO grants (id, email, provider, imap_host, imap_port, imap_tls,"
                " imap_username, verify_tls, secrets_sealed, grant_status, sync_state,"
                " capabilities) VALUES (%s, %s, 'generic', 'imap.example.test', 993, 'ssl',"
                " %s, true, 'x', 'valid', 'synced', '{}')",
                (gid, f"user{i}@example.test", f"user{i}"),
            )
        folders = {}
        for name, role in (("INBOX", "inbox"), (ARCHIVE, "archive")):
            folders[name] = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO folders (id, grant_id, name, raw_name, role, attributes,"
                " uidvalidity, state, synced_uid, to_sync) VALUES (%s, %s, %s, %s, %s, '{}', 1,"
                " 'synced', 0, 0)",
                (folders[name], target, name, name, role),
            )
        plan = [(target, grant_rows)] + [(g, grant_rows // OTHER_GRANTS) for g in grants[1:]]
        for gid, rows in plan:
            conn.execute(THREADS, {"grant": gid, "rows": rows})  # type: ignore[arg-type]
            for start in range(1, rows + 1, 50_000):
                stop = min(rows, start + 49_999)
                conn.execute(GENERATE, {"grant": gid, "start": start, "stop": stop})  # type: ignore[arg-type]
        conn.execute(LATEST)
        conn.execute(
            PLACE,  # type: ignore[arg-type]
            {"grant": target, "inbox": folders["INBOX"], "archive": folders[ARCHIVE]},
        )
        conn.execute("VACUUM ANALYZE")


def database(name: str | None, grant_rows: int) -> tuple[str, str, str]:
    """The URL of the database (``name`` reused when it holds data, else filled), the measured
    grant's id and the Archive folder's."""
    name = name or f"ipt_search_{uuid.uuid4().hex[:8]}"
    url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not found:
            admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT grant_id::text, id::text FROM folders WHERE name = %s", (ARCHIVE,)
        ).fetchone()
        if row is None:
            started = time.monotonic()
            build(url, grant_rows)
            row = conn.execute(
                "SELECT grant_id::text, id::text FROM folders WHERE name = %s", (ARCHIVE,)
            ).fetchone()
            assert row is not None
            count = conn.execute("SELECT count(*) FROM messages").fetchone()
            took = time.monotonic() - started
            print(f"generated {count[0] if count else 0:,} messages in {took:.0f} s")
        else:
            count = conn.execute(
                "SELECT count(*) FROM messages WHERE grant_id = %s", (row[0],)
            ).fetchone()
            print(f"reusing database {name}: {count[0] if count else 0:,} messages in the grant")
    return url, row[0], row[1]


@dataclass(frozen=True)
class Case:
    """One search: its criteria and, for a combination with ``in``, the folder."""

    query: str
    folder: str | None = None

    @property
    def label(self) -> str:
        return self.query + (f" + in={self.folder}" if self.folder else "")


def cases() -> list[Case]:
    """The searches measured: a frequent, a rare, a folded and an absent word, phrases,
    addresses, flags, dates, sizes, combinations, and some with a folder filter."""
    day = time.strftime("%d-%b-%Y", time.gmtime(time.time() - 3 * 86400))
    return [
        Case("SUBJECT invoice"),  # 1 % of the grant
        Case('SUBJECT "subject 4242"'),  # a phrase, 20 messages
        Case("SUBJECT cafe"),  # finds Café by Dovecot's folding, 9 %
        Case("SUBJECT nowhere-to-be-found"),
        Case("FROM sender7@"),  # 0.3 %
        Case('FROM "Sender 12"'),  # a phrase: Sender 12, 120-129, 312, ...
        Case("TO me@example"),  # every message
        Case("UNSEEN FLAGGED"),
        Case("OR SUBJECT invoice FROM sender7@"),
        Case("NOT SEEN"),
        Case(f"SENTSINCE {day}"),
        Case(f"SINCE {day} UNSEEN"),
        Case("LARGER 6000"),
        Case('SUBJECT cafe FROM "Sender 1" UNSEEN'),  # text keys and a flag together
        Case("SUBJECT invoice", ARCHIVE),
        Case('SUBJECT "subject 4240"', ARCHIVE),  # a phrase, 20 messages, all in the Archive
        Case("FROM sender10@", ARCHIVE),  # 0.3 %, all in the Archive
        Case('SUBJECT cafe FROM "Sender 1" UNSEEN', ARCHIVE),
    ]


def _compiled(query: Any) -> tuple[str, dict[str, Any]]:
    compiled = query.compile(
        dialect=pg_psycopg.dialect(), compile_kwargs={"render_postcompile": True}
    )
    return str(compiled), dict(compiled.params)


def statements(
    grant: str, case: Case, archive: str, threads: bool, pg: psycopg.Connection[Any]
) -> list[tuple[str, dict[str, Any]]]:
    """The API's statements for the first page of a case, compiled, the page's last (messages:
    drafts left out as ``GET /messages`` without ``in`` does, each row the message's view as
    JSON and the grant's status; threads: each one's view as JSON and the grant's status,
    walked as the row estimate of the search text's matches decides, planned on ``pg`` once
    here: the API plans it once a minute, not per request,
    ``pipeline.threads.queries.ESTIMATE_REUSE_S``)."""
    folder_ids = [archive] if case.folder else None
    flt = MessageFilter(
        folder_ids=folder_ids,
        search=store.condition(criteria.parse(case.query), folder_ids, grant_id=grant),
    )
    if threads:
        matches = None
        counting = matches_statement(grant, flt)
        if counting is not None:
            sql, params = _compiled(counting)
            row = pg.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()  # type: ignore[call-overload]
            matches = float(row[0][0]["Plan"]["Plan Rows"]) if row else None
        # as the API runs a page without select: each thread's view rendered by Postgres
        page = list_threads_page_query(
            ThreadCriteria(grant, flt, PAGE + 1),
            thread_set=walks_with_set(flt, matches),
            as_json=True,
        ).add_columns(message_queries.grant_status_select(grant).label("grant_status"))
        return [_compiled(page)]
    if folder_ids is None:
        flt.not_in_role = DRAFTS_ROLE
    # as the API runs a standard page: rendered as JSON by Postgres, with the grant's status
    query = list_messages_query(grant, flt, PAGE + 1, None, as_json=True).add_columns(
        message_queries.grant_status_select(grant).label("grant_status")
    )
    return [_compiled(query)]


def timed(call: Callable[[], int], count: int) -> tuple[list[float], int]:
    """Latencies (ms) of ``count`` calls and the rows of the last one.

    The client's own garbage collector is kept out of the timings: this process holds the
    whole pipeline, SQLAlchemy and psycopg, and a full collection in the middle of a call
    (130-160 ms) counted as the API's or Postgres' p99."""
    latencies: list[float] = []
    rows = 0
    gc.collect()
    gc.disable()
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            rows = call()
            latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        gc.enable()
    return latencies, rows


@dataclass
class Figures:
    """What one list (messages or threads) of one case measured."""

    rows: int
    api: list[float]
    sql: list[float]
    api_cpu: float  # ms a request
    pg_cpu: float

    def line(self, label: str, plain_p99: float) -> str:
        api_p99, sql_p99 = percentile(self.api, 99), percentile(self.sql, 99)
        return (
            f"{label:<44} {self.rows:>4} {statistics.median(self.api):>7.1f} {api_p99:>7.1f}"
            f" {statistics.median(self.sql):>7.1f} {sql_p99:>7.1f}"
            f" {api_p99 / sql_p99:>6.1f}x {api_p99 / plain_p99:>6.1f}x"
            f" {self.api_cpu:>7.1f} {self.pg_cpu:>6.1f}"
        )


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(args: argparse.Namespace) -> None:
    url, grant, archive = database(args.database, args.grant_rows)
    proc = None
    try:
        proc, api = start_api(url, 1)
        http = httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=HTTP_TIMEOUT_S
        )
        dbname = url.rsplit("/", 1)[1]
        # CPU of the API process and of the database's backends (their command line names it)
        meter = CpuMeter({"api": tree(proc.pid), "postgres": cmdline_has(f" {dbname} ")})
        lists = ("messages", "threads") if args.lists == "both" else (args.lists,)
        plain: dict[str, tuple[list[float], dict[str, float]]] = {}
        for kind in lists:

            def plain_call(kind: str = kind) -> int:
                response = http.get(f"/v3/grants/{grant}/{kind}", params={"limit": PAGE})
                return len(response.raise_for_status().json()["data"])

            for _ in range(args.warmup):
                plain_call()
            meter.start()
            latencies, _ = timed(plain_call, args.requests)
            plain[kind] = (latencies, meter.stop())
        results: dict[str, list[tuple[str, Figures]]] = {kind: [] for kind in lists}
        selected = [c for c in cases() if not args.only or any(o in c.label for o in args.only)]
        loads = [load_average()]
        # the API's connection settings (plan_cache_mode=force_custom_plan, no parallel workers,
        # random_page_cost): without them psycopg's prepared statement went to a generic plan
        # after five runs, which read every match of a common term (SUBJECT cafe 100-219 ms
        # here while the API answered in 15)
        with psycopg.connect(url, autocommit=True, options=API_PG_OPTIONS) as pg:
            for kind in lists:
                for case in selected:
                    params = {"limit": PAGE, "search_query_native": case.query}
                    if case.folder:
                        params["in"] = case.folder

                    def api_call(kind: str = kind, params: dict[str, Any] = params) -> int:
                        response = http.get(f"/v3/grants/{grant}/{kind}", params=params)
                        return len(response.raise_for_status().json()["data"])

                    run = statements(grant, case, archive, kind == "threads", pg)
                    sql, sql_params = run[-1]

                    def pg_call(
                        run: list[tuple[str, dict[str, Any]]] = run, kind: str = kind
                    ) -> int:
                        for sql, p in run[:-1]:
                            pg.execute(sql, p).fetchall()  # type: ignore[arg-type]
                        rows = pg.execute(*run[-1]).fetchall()  # type: ignore[call-overload]
                        if kind == "threads":  # a row per message of the page's threads
                            return len({row[0] for row in rows})
                        return len(rows)

                    for _ in range(args.warmup):
                        api_call()
                        pg_call()
                    meter.start()
                    api_lat, api_rows = timed(api_call, args.requests)
                    cpu = meter.stop()
                    pg_lat, pg_rows = timed(pg_call, args.requests)
                    if api_rows != min(pg_rows, PAGE):  # the query reads PAGE + 1
                        raise SystemExit(f"{kind} {case.label}: API {api_rows} rows, SQL {pg_rows}")
                    figures = Figures(
                        api_rows,
                        api_lat,
                        pg_lat,
                        1000 * cpu["api"] / args.requests,
                        1000 * cpu["postgres"] / args.requests,
                    )
                    results[kind].append((case.label, figures))
                    if args.explain:
                        plan = pg.execute(
                            "EXPLAIN (ANALYZE, BUFFERS) " + sql, sql_params
                        ).fetchall()  # type: ignore[arg-type]
                        print(
                            f"-- {kind}: {case.label}\n"
                            + "\n".join("   " + line for (line,) in plan)
                        )
                loads.append(load_average())
        http.close()
        slowest = ("", 0.0)
        for kind in lists:
            plain_lat, plain_cpu = plain[kind]
            plain_p99 = percentile(plain_lat, 99)
            print(
                f"\n{kind}: {args.requests} sequential requests a search, first page of {PAGE};"
                f" the plain list without filter over HTTP: p50 {statistics.median(plain_lat):.1f}"
                f" ms, p99 {plain_p99:.1f} ms, CPU a request: API"
                f" {1000 * plain_cpu['api'] / args.requests:.1f} ms, Postgres"
                f" {1000 * plain_cpu['postgres'] / args.requests:.1f} ms\n"
            )
            print(
                f"{'criteria':<44} {'rows':>4} {'API p50':>7} {'API p99':>7} {'SQL p50':>7}"
                f" {'SQL p99':>7} {'vs SQL':>7} {'vs list':>7} {'API cpu':>7} {'PG cpu':>6}"
            )
            for label, figures in results[kind]:
                print(figures.line(label, plain_p99))
                p99 = percentile(figures.api, 99)
                if p99 > slowest[1]:
                    slowest = (f"{kind}: {label}", p99)
        print(
            f"\n{args.grant_rows:,} messages in the grant ({args.grant_rows * 2:,} in the table);"
            " one API process; client, API and Postgres on one machine; times in ms."
            " 'vs SQL' = API p99 / p99 of the same statement straight on Postgres (the API's"
            " connection settings), 'vs list' = API p99 / p99 of the same list without filter;"
            " 'API cpu', 'PG cpu' = CPU ms a request cost the API process and the database's"
            f" backends. Load average over the runs: {' -> '.join(loads)}"
        )
        verdict = "met" if slowest[1] < GOAL_P99_MS else "NOT met"
        print(
            f"slowest API p99: {slowest[1]:.1f} ms ({slowest[0]});"
            f" goal p99 < {GOAL_P99_MS:.0f} ms: {verdict}"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
        if not args.keep:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                name = url.rsplit("/", 1)[1]
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--grant-rows", type=int, default=100_000, help="messages of the grant")
    parser.add_argument("--requests", type=int, default=200, help="requests per search")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured requests first")
    parser.add_argument(
        "--lists", choices=("messages", "threads", "both"), default="both", help="lists measured"
    )
    parser.add_argument("--only", nargs="*", help="measure only searches whose label has one")
    parser.add_argument("--database", help="database name (reused when it holds data)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--explain", action="store_true", help="print each statement's plan")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
