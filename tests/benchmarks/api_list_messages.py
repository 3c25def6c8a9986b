"""Benchmark: listing messages through the API next to the same query straight on Postgres.

One command (from the repository root)::

    .venv/bin/python tests/benchmarks/api_list_messages.py   # 1,000,000 rows, 100,000 in the grant
    .venv/bin/python tests/benchmarks/api_list_messages.py --total 200000 --grant-rows 20000

It creates a throwaway database on the Postgres of the tests (``IMAP_PIPELINE_TEST_PG``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it, generates ``--total`` messages
with SQL (``--grant-rows`` of them in the measured grant, the rest spread over nine others),
starts ``imap-pipeline api`` in a subprocess and, for each filter, walks ``--requests`` pages of
50 by ``next_cursor``: once over HTTP, then the very same SQL (the API's own query, same
cursors) over psycopg. It prints requests/s, rows/s, p50/p99 per side and the API/Postgres
ratio, and the EXPLAIN plan of each query (which must read a page from an index). Then
``--clients`` concurrent clients replay the same pages on both sides (wall-clock requests/s);
``--api-workers`` sets the uvicorn processes. Client, API and Postgres share the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.api.pagination import decode_cursor  # noqa: E402
from pipeline.api.queries import MessageFilter, list_messages_query  # noqa: E402
from pipeline.db import migrate  # noqa: E402
from pipeline.local import free_port  # noqa: E402

ADMIN_URL = os.environ.get("IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
API_KEY = "benchmark-key"
PAGE = 50
OTHER_GRANTS = 9
START_TIMEOUT_S = 20
HTTP_TIMEOUT_S = 30

GENERATE = """
INSERT INTO messages (id, grant_id, identity_key, header_hash, "references", subject, "from", "to",
    cc, bcc, reply_to, date, received_at, snippet, body, headers, size, unread, starred, flags,
    has_attachments, created_at, updated_at)
SELECT gen_random_uuid(), %(grant)s::uuid, 'k' || i, md5(i::text), '{}',
    'Subject ' || (i %% 5000) || CASE WHEN i %% 97 = 0 THEN ' invoice' ELSE '' END,
    jsonb_build_array(jsonb_build_object('name', 'Sender ' || (i %% 300),
        'email', 'sender' || (i %% 300) || '@example.test')),
    jsonb_build_array(jsonb_build_object('name', 'Me', 'email', 'me@example.test')),
    CASE WHEN i %% 7 = 0 THEN jsonb_build_array(jsonb_build_object('name', '',
        'email', 'cc' || (i %% 50) || '@example.test')) ELSE '[]'::jsonb END,
    '[]', '[]',
    now() - make_interval(secs => i * 30 + (i %% 13)),
    now() - make_interval(secs => i * 30),
    'Snippet of message ' || i, repeat('Body text of a generated message. ', 8), '[]',
    2048 + i %% 4096, (i %% 10) < 3, (i %% 50) = 0, '{}', (i %% 10) = 0, now(), now()
FROM generate_series(%(start)s::int, %(stop)s::int) AS i
"""

PLACE = """
INSERT INTO placements (folder_id, uid, uidvalidity, message_id, flags)
SELECT CASE WHEN row_number() OVER () %% 5 = 0 THEN %(archive)s ELSE %(inbox)s END::uuid,
    row_number() OVER (), 1, id, '{}'
FROM messages WHERE grant_id = %(grant)s::uuid
"""

ATTACH = """
INSERT INTO attachments (id, message_id, grant_id, filename, content_type, size, is_inline,
    part_path)
SELECT gen_random_uuid(), id, grant_id, 'file.pdf', 'application/pdf', 12345, false, '2'
FROM messages WHERE has_attachments
"""


def build(url: str, total: int, grant_rows: int) -> str:
    """Fill the database; returns the measured grant's id."""
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
        inbox, archive = str(uuid.uuid4()), str(uuid.uuid4())
        for fid, name, role in ((inbox, "INBOX", "inbox"), (archive, "Archive", "archive")):
            conn.execute(
                "INSERT INTO folders (id, grant_id, name, raw_name, role, attributes, uidvalidity,"
                " state, synced_uid, to_sync) VALUES (%s, %s, %s, %s, %s, '{}', 1, 'synced', 0, 0)",
                (fid, target, name, name, role),
            )
        plan = [(target, grant_rows)]
        rest = total - grant_rows
        plan += [(g, rest // OTHER_GRANTS) for g in grants[1:]]
        start_all = time.monotonic()
        for gid, rows in plan:
            for start in range(1, rows + 1, 100_000):
                stop = min(rows, start + 99_999)
                conn.execute(GENERATE, {"grant": gid, "start": start, "stop": stop})  # type: ignore[arg-type]
        conn.execute(PLACE, {"grant": target, "inbox": inbox, "archive": archive})  # type: ignore[arg-type]
        conn.execute(ATTACH)
        conn.execute("ANALYZE")
        print(f"generated {total:,} messages in {time.monotonic() - start_all:.0f} s")
    return target


def start_api(url: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """``imap-pipeline api`` (``workers`` uvicorn processes) in a subprocess on a free port."""
    port = free_port()
    env = {
        **os.environ,
        "IMAP_PIPELINE_DATABASE_URL": url,
        "IMAP_PIPELINE_API_KEYS": API_KEY,
        "IMAP_PIPELINE_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("imap-pipeline")),
            "api",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/openapi.json", timeout=1)
            return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the API did not start")


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1)]


def measure(call: Callable[[], int], count: int) -> tuple[list[float], int]:
    """Run ``call`` count times; latencies in ms and rows seen."""
    latencies: list[float] = []
    rows = 0
    for _ in range(count):
        t0 = time.perf_counter()
        rows += call()
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies, rows


def sql_for(grant: str, flt: MessageFilter, token: str | None) -> tuple[str, dict[str, Any]]:
    """The API's page query (with its folder and attachment subqueries) and its parameters."""
    query = list_messages_query(grant, flt, PAGE + 1, decode_cursor(token) if token else None)
    compiled = query.compile(
        dialect=pg_psycopg.dialect(), compile_kwargs={"render_postcompile": True}
    )
    return str(compiled), dict(compiled.params)


def _in_parallel(work: Callable[[int], list[float]], clients: int) -> tuple[float, float]:
    """Run ``work(i)`` in ``clients`` threads; wall-clock requests/s and p99 latency (ms)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = [lat for part in pool.map(work, range(clients)) for lat in part]
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, percentile(latencies, 99)


def concurrent_api(
    api: str, grant: str, params: dict[str, Any], walked: list[str | None], clients: int
) -> tuple[float, float]:
    """Every client replays the walked pages over its own HTTP connection."""

    def work(_: int) -> list[float]:
        latencies = []
        with httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=HTTP_TIMEOUT_S
        ) as client:
            for token in walked:
                query = {**params, "limit": PAGE, **({"page_token": token} if token else {})}
                t0 = time.perf_counter()
                client.get(f"/v3/grants/{grant}/messages", params=query).raise_for_status()
                latencies.append((time.perf_counter() - t0) * 1000)
        return latencies

    return _in_parallel(work, clients)


def concurrent_pg(url: str, statements: list[Any], clients: int) -> tuple[float, float]:
    """Every client replays the same statements over its own connection."""

    def work(_: int) -> list[float]:
        latencies = []
        with psycopg.connect(url, autocommit=True) as conn:
            for sql, params in statements:
                t0 = time.perf_counter()
                conn.execute(sql, params).fetchall()
                latencies.append((time.perf_counter() - t0) * 1000)
        return latencies

    return _in_parallel(work, clients)


def run(args: argparse.Namespace) -> None:
    name = f"ipt_bench_{uuid.uuid4().hex[:8]}"
    base_url = ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base_url}/{name}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    proc = None
    try:
        migrate(url)
        grant = build(url, args.total, args.grant_rows)
        proc, api = start_api(url, args.api_workers)
        with psycopg.connect(url, autocommit=True) as pg:
            inbox = pg.execute(
                "SELECT id::text FROM folders WHERE grant_id = %s AND role = 'inbox'", (grant,)
            ).fetchone()
            assert inbox is not None
            cases: list[tuple[str, dict[str, Any], MessageFilter]] = [
                ("unread=true", {"unread": "true"}, MessageFilter(unread=True)),
                ("in=INBOX", {"in": inbox[0]}, MessageFilter(folder_ids=[inbox[0]])),
                (
                    "from=sender7@…",
                    {"from": "sender7@example.test"},
                    MessageFilter(from_=["sender7@example.test"]),
                ),
                ("subject=invoice", {"subject": "invoice"}, MessageFilter(subject="invoice")),
                ("starred=true", {"starred": "true"}, MessageFilter(starred=True)),
            ]
            header = (
                f"{'filter':<18} {'API req/s':>9} {'API rows/s':>10} {'API p50':>8} {'API p99':>8}"
                f" {'PG req/s':>9} {'PG rows/s':>10} {'PG p50':>7} {'PG p99':>7} {'ratio':>6}"
            )
            results = []
            replay: dict[str, tuple[dict[str, Any], list[str | None], list[Any]]] = {}
            http = httpx.Client(
                base_url=api, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=HTTP_TIMEOUT_S
            )
            for label, params, flt in cases:
                tokens: list[str | None] = [None]

                def api_call(
                    params: dict[str, Any] = params, tokens: list[str | None] = tokens
                ) -> int:
                    query = {**params, "limit": PAGE}
                    if tokens[-1]:
                        query["page_token"] = tokens[-1]
                    body = http.get(f"/v3/grants/{grant}/messages", params=query).json()
                    tokens.append(body["next_cursor"])
                    if body["next_cursor"] is None:
                        tokens.append(None)  # wrap around to the first page
                    return len(body["data"])

                for _ in range(args.warmup):
                    api_call()
                tokens[:] = [None]
                api_lat, api_rows = measure(api_call, args.requests)
                walked = list(tokens[: args.requests])
                statements = [sql_for(grant, flt, t) for t in walked]
                position = iter(statements)

                def pg_call(position: Any = position) -> int:
                    sql, params = next(position)
                    return len(pg.execute(sql, params).fetchall())  # type: ignore[arg-type]

                pg_lat, pg_rows = measure(pg_call, len(statements))
                pg_page_rows = min(pg_rows, PAGE * len(pg_lat))  # the query reads limit + 1
                api_rps = len(api_lat) / (sum(api_lat) / 1000)
                pg_rps = len(pg_lat) / (sum(pg_lat) / 1000)
                results.append(
                    f"{label:<18} {api_rps:>9.0f} {api_rows / (sum(api_lat) / 1000):>10.0f}"
                    f" {statistics.median(api_lat):>7.1f}ms {percentile(api_lat, 99):>6.1f}ms"
                    f" {pg_rps:>9.0f} {pg_page_rows / (sum(pg_lat) / 1000):>10.0f}"
                    f" {statistics.median(pg_lat):>5.1f}ms {percentile(pg_lat, 99):>5.1f}ms"
                    f" {pg_rps / api_rps:>5.1f}x"
                )
                replay[label] = (params, walked, statements)
                sql, params = statements[min(3, len(statements) - 1)]
                plan = pg.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql,  # type: ignore[arg-type]
                    params,
                ).fetchall()
                print(f"\n-- EXPLAIN {label} (a page deep in the walk)")
                for (line,) in plan[:16]:
                    print("   ", line)
                if any("Seq Scan on messages" in line for (line,) in plan):
                    print("    !! sequential scan of messages")
            http.close()
        print(
            f"\n{args.total:,} messages, {args.grant_rows:,} in the grant;"
            f" API: {args.api_workers} uvicorn worker(s);"
            f" {args.requests} sequential requests per filter, pages of {PAGE} walked by"
            " next_cursor; ratio = PG req/s ÷ API req/s; both sides run the same SQL (the API's"
            " page query with its folder and attachment subqueries); the API adds HTTP, auth,"
            " ORM loading and JSON\n"
        )
        print(header)
        for line in results:
            print(line)
        if args.clients > 1:
            print(
                f"\nconcurrent: {args.clients} clients, each replaying the same pages "
                "(wall-clock requests/s; p99 over all requests)"
            )
            print(f"{'filter':<18} {'API req/s':>9} {'API p99':>8} {'PG req/s':>9} {'PG p99':>7}")
            for label, (params, walked, statements) in replay.items():
                api_rps, api_p99 = concurrent_api(api, grant, params, walked, args.clients)
                pg_rps, pg_p99 = concurrent_pg(url, statements, args.clients)
                print(
                    f"{label:<18} {api_rps:>9.0f} {api_p99:>6.1f}ms {pg_rps:>9.0f} {pg_p99:>5.1f}ms"
                )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
        if not args.keep:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
        else:
            print(f"kept database {name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--total", type=int, default=1_000_000, help="messages in the table")
    parser.add_argument("--grant-rows", type=int, default=100_000, help="messages of the grant")
    parser.add_argument("--requests", type=int, default=300, help="requests per filter")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--clients", type=int, default=8, help="concurrent clients in the second run (1: skip)"
    )
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
