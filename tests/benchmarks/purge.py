"""Retention purge cost versus table size: time and WAL bytes to remove one day's mail.

    python tests/benchmarks/purge.py [--sizes 100000,1000000] [--day 5000] [--days 3]

For each size N a fresh database (all migrations) gets, generated in SQL: one grant and
folder, N messages spread over the 90 days of the window plus ``--day`` messages on each of
the ``--days`` days just past it, a placement per message, a thread per three messages and
attachment metadata on every tenth. After ``VACUUM ANALYZE`` it runs
:func:`pipeline.maintenance.purge.purge` (the product's code, default batches of 5,000) once
per past day, each time with ``now`` one day
later, and reports the time, the WAL written (``pg_current_wal_insert_lsn`` before and after,
after a CHECKPOINT) and both per purged message, minimum and median over the days; then the
deferred half of any DELETE, a ``VACUUM`` of the touched tables (time and WAL). If the purge's
cost does not grow with the table, the per-message figures stay flat as N grows; VACUUM scans
whole indexes, so its cost is the part that grows (what dropping time-range partitions would
avoid). ``--partitions`` measures that alternative on a copy: the messages in a table
partitioned by day (placements and attachments left out: they would need the partition key
too), and the time and WAL of dropping the oldest day.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from pipeline.db import get_engine, migrate, sessionmaker_for  # noqa: E402
from pipeline.maintenance.purge import purge  # noqa: E402

PG_ADMIN = os.environ.get("IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
RETENTION_DAYS = 90
BODY_CHARS = 800  # a typical text body after normalization, order of magnitude

SEED = """
INSERT INTO grants (id, email, provider, imap_host, imap_port, imap_tls, imap_username,
                    verify_tls, secrets_sealed, grant_status, sync_state, capabilities)
VALUES (%(g)s, 'bench@example.test', 'generic', 'imap.example.test', 993, 'ssl', 'bench',
        true, 'x', 'valid', 'synced', '{}');
INSERT INTO folders (id, grant_id, name, raw_name, attributes, state, synced_uid, to_sync,
                     uidvalidity)
VALUES (%(f)s, %(g)s, 'INBOX', 'INBOX', '{}', 'synced', 0, 0, 1);
"""

GENERATE = """
INSERT INTO threads (id, grant_id, subject_key, subject)
SELECT md5('t' || i)::uuid, %(g)s, 'subject ' || i, 'Subject ' || i
FROM generate_series(0, (%(n)s + %(day)s * %(days)s) / 3) AS i;

INSERT INTO messages (id, grant_id, identity_key, header_hash, message_id_header, "references",
                      thread_id, subject, "from", "to", cc, bcc, reply_to, date, received_at,
                      snippet, body, headers, size, unread, starred, flags, has_attachments)
SELECT md5('m' || i)::uuid, %(g)s, 'k' || i, md5(i::text), '<' || i || '@example.test>', '{}',
       md5('t' || (i / 3))::uuid, 'Subject ' || (i / 3),
       jsonb_build_array(jsonb_build_object('name', 'Sender ' || (i %% 500),
                                            'email', 's' || (i %% 500) || '@example.test')),
       '[{"name": "Me", "email": "bench@example.test"}]', '[]', '[]', '[]',
       ts, ts, left(repeat('lorem ipsum ', 20), 190), repeat('x', %(body)s), '[]', 4000,
       i %% 4 = 0, false, '{}', i %% 10 = 0
FROM (
    SELECT i, CASE WHEN i < %(day)s * %(days)s
                   THEN %(oldest)s::timestamptz + (i * interval '1 day') / %(day)s
                   ELSE %(window)s::timestamptz
                        + ((i - %(day)s * %(days)s) * interval '90 days') / greatest(%(n)s, 1)
              END AS ts
    FROM generate_series(0, %(n)s + %(day)s * %(days)s - 1) AS i
) AS s;

INSERT INTO placements (folder_id, uid, uidvalidity, message_id, flags)
SELECT %(f)s, i + 1, 1, md5('m' || i)::uuid, '{}'
FROM generate_series(0, %(n)s + %(day)s * %(days)s - 1) AS i;

INSERT INTO attachments (id, message_id, grant_id, filename, content_type, size, is_inline,
                         part_path)
SELECT md5('a' || i)::uuid, md5('m' || i)::uuid, %(g)s, 'file' || i || '.pdf',
       'application/pdf', 100000, false, '2'
FROM generate_series(0, %(n)s + %(day)s * %(days)s - 1) AS i WHERE i %% 10 = 0;
"""


def _purge_one_day(
    conn: psycopg.Connection[Any], url: str, name: str, now: datetime, day: int
) -> dict[str, float]:
    """Purge the one day that ``now`` pushed past the window; time, WAL and reads."""
    # a checkpoint first, so every run pays the same first-touch full-page images (as in
    # production, where a checkpoint runs every few minutes)
    conn.execute("CHECKPOINT")
    blocks = "SELECT blks_read FROM pg_stat_database WHERE datname = %s"
    read_before = conn.execute(blocks, (name,)).fetchone()[0]  # type: ignore[index]
    lsn_before = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
    t0 = time.perf_counter()
    result = purge(sessionmaker_for(url), retention_days=RETENTION_DAYS, now=now)
    elapsed = time.perf_counter() - t0
    wal = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (lsn_before,)
    ).fetchone()[0]  # type: ignore[index]
    get_engine(url).dispose()  # a backend's I/O statistics are flushed when it exits
    time.sleep(1.0)
    read_after = conn.execute(blocks, (name,)).fetchone()[0]  # type: ignore[index]
    assert result.messages == day, result
    return {"purge_s": elapsed, "wal_bytes": float(wal), "blocks_read": read_after - read_before}


PARTITIONED = """
CREATE TABLE messages_by_day (LIKE messages INCLUDING DEFAULTS) PARTITION BY RANGE (received_at);
ALTER TABLE messages_by_day ADD PRIMARY KEY (id, received_at);
CREATE INDEX ON messages_by_day (grant_id, received_at);
CREATE INDEX ON messages_by_day (grant_id, date, id);
CREATE INDEX ON messages_by_day (thread_id)
"""


def _partition_figures(
    conn: psycopg.Connection[Any], oldest: datetime, days: int
) -> dict[str, object]:
    """The alternative, measured on a copy: messages partitioned by day of ``received_at``
    (the same rows; a few of the indexes), and the oldest day dropped whole."""
    for statement in PARTITIONED.split(";\n"):
        conn.execute(statement)  # type: ignore[call-overload]
    first = oldest.replace(hour=0, minute=0, second=0, microsecond=0)
    for d in range(days + RETENTION_DAYS + 2):
        lo, hi = first + timedelta(days=d), first + timedelta(days=d + 1)
        conn.execute(  # type: ignore[call-overload]
            f"CREATE TABLE messages_by_day_{d} PARTITION OF messages_by_day "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        )
    conn.execute("INSERT INTO messages_by_day SELECT * FROM messages")
    conn.execute("VACUUM ANALYZE messages_by_day")
    rows = conn.execute("SELECT count(*) FROM messages_by_day_0").fetchone()[0]  # type: ignore[index]
    conn.execute("CHECKPOINT")
    lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
    t0 = time.perf_counter()
    conn.execute("DROP TABLE messages_by_day_0")
    elapsed = time.perf_counter() - t0
    wal = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (lsn,)
    ).fetchone()[0]  # type: ignore[index]
    return {"partition_rows": rows, "drop_s": round(elapsed, 4), "drop_wal_kb": round(wal / 1024)}


def run(size: int, day: int, days: int, partitions: bool = False) -> dict[str, object]:
    name = f"ipt_bench_purge_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        migrate(url)
        now = datetime.now(UTC)
        window = now - timedelta(days=RETENTION_DAYS)
        oldest = window - timedelta(days=days)
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            params = {"g": str(uuid.uuid4()), "f": str(uuid.uuid4())}
            values = {
                **params,
                "n": size,
                "day": day,
                "days": days,
                "body": BODY_CHARS,
                "oldest": oldest,
                "window": window + timedelta(minutes=1),
            }
            for statement in (SEED + GENERATE).split(";\n"):
                if statement.strip():
                    conn.execute(statement, values)  # type: ignore[call-overload]
            conn.execute("VACUUM ANALYZE")
            generated_s = time.perf_counter() - started
            table_bytes = conn.execute("SELECT pg_total_relation_size('messages')").fetchone()[0]  # type: ignore[index]
            alternative = _partition_figures(conn, oldest, days) if partitions else None
            runs = [_purge_one_day(conn, url, name, now - timedelta(days=days - k), day)
                    for k in range(1, days + 1)]  # fmt: skip
            # the deferred half of a delete: VACUUM removes the dead tuples and index entries
            lsn_vacuum = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
            t1 = time.perf_counter()
            # INDEX_CLEANUP ON: the full deferred cost (by default PostgreSQL skips index
            # cleanup while dead rows stay under 2 % of the pages, postponing it)
            conn.execute("VACUUM (INDEX_CLEANUP ON) messages, placements, attachments, threads")
            vacuum_s = time.perf_counter() - t1
            vacuum_wal = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (lsn_vacuum,)
            ).fetchone()[0]  # type: ignore[index]
            left = conn.execute(
                "SELECT count(*) FROM messages WHERE received_at < %s", (window,)
            ).fetchone()[0]  # type: ignore[index]
        assert left == 0, left
        seconds = sorted(r["purge_s"] for r in runs)
        wal = sorted(r["wal_bytes"] for r in runs)
        return {
            "table_messages": size + day * days,
            "table_bytes_mb": round(table_bytes / 2**20, 1),
            "generate_s": round(generated_s, 1),
            "messages_per_day": day,
            "days_purged": days,
            "purge_s_min": round(seconds[0], 3),
            "purge_s_median": round(seconds[len(seconds) // 2], 3),
            "us_per_message_min": round(seconds[0] / day * 1e6, 1),
            "wal_mb_min": round(wal[0] / 2**20, 2),
            "wal_mb_median": round(wal[len(wal) // 2] / 2**20, 2),
            "wal_bytes_per_message_min": round(wal[0] / day),
            "blocks_read_from_disk_or_os": [r["blocks_read"] for r in runs],
            "vacuum_after_s": round(vacuum_s, 3),
            "vacuum_wal_mb": round(float(vacuum_wal) / 2**20, 2),
            **({"day_partition_dropped": alternative} if alternative else {}),
        }
    finally:
        get_engine.cache_clear()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="messages in the window")
    parser.add_argument("--day", type=int, default=5000, help="messages per day purged")
    parser.add_argument(
        "--days",
        type=int,
        default=3,
        help="days purged one at a time (WAL is cluster-wide: "
        "other activity inflates single runs, the minimum is the purge's own)",
    )
    parser.add_argument(
        "--partitions", action="store_true",
        help="also copy the messages into a table partitioned by day and time dropping one day",
    )  # fmt: skip
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        print(json.dumps(run(size, args.day, args.days, args.partitions)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
