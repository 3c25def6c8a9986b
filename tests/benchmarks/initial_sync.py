"""Initial sync throughput: the full pipeline against a naive single-process baseline.

    python tests/benchmarks/initial_sync.py [--messages 10000] [--workers 4]

Seeds a private Dovecot mailbox with a realistic mix (plain, HTML, multipart, threads, some
attachments of 100 KB to 5 MB, some mail older than the window) and measures, in one run:

1. baseline: imap-tools in one process fetching and parsing every message of the window of
   every folder (subject, addresses, text, HTML, attachment names and sizes), storing nothing;
2. pipeline: grant created -> every message stored in Postgres, through Celery workers started
   as `up` starts them (``celery -A workers worker -Q sync.* -c N``).

Both figures are messages/s; the ratio is pipeline / baseline (these machines are noisy: only
the ratio within one run means anything). ``--listener-alive`` syncs as with a listener
running (bulk sync then has 2 of the generic preset's 5 connections; without a listener the
unused IDLE slots are lent, see :mod:`pipeline.limits.slots`). The last line counts the
sync tasks sent back to the queue for want of a connection slot or login token.

Measured 2026-12-07 on the development machine (2 cores shared with other sessions):

- Before (main of 02:45): 5,000 messages, pipeline 143 msgs/s against imap-tools 896 = 0.16x
  on a quiet machine (machine CPU 2.54 ms a message: the pipeline mostly waited). Bulk sync had
  2 connections for 4 worker processes: 38 of 51 sync tasks were refused a slot or a login
  token and came back 5 s later (a process's pooled session serves only its own tasks).
- Lending the IDLE slots (and the listener's login token) while no listener is alive: 4
  connections, 4 logins, 0 tasks sent back (13 tasks at 5,000, 26 at 10,000).
- Search rows written per statement (migration 0323) instead of per row: Postgres CPU a stored
  message 1.28-1.55 -> 0.77-0.95 ms (loaded machine; the insert of 4,500 messages alone 12.1 ->
  4.6 s, 2.0 s with no search rows at all).
- After, with load average 6-12 (the baseline swung 88-345 msgs/s within one run, so the
  ratios below say little): 5,000 messages 226 msgs/s = 0.65x and 141 msgs/s = 0.68x; 10,000
  messages 201 msgs/s = 1.51x. CPU a message, pipeline: workers 1.69-1.82 ms, Postgres
  0.83-1.15, Dovecot 0.09-0.14; imap-tools 1.9-3.0 ms in its one process. The pipeline no
  longer waits (the machine was saturated by all sessions); on a quiet machine its rate is
  bounded by its CPU a message (here, under load, about 2.6 ms over 2 cores against imap-tools'
  1.9-3.0 ms on one), not measured quiet in this session.
- ``--listener-alive``, 5,000 messages (loaded): 120 msgs/s, 36 of 49 tasks sent back; 129
  msgs/s, 21 of 34, once a pooled bulk session no longer closes for another bulk task of the
  account. Chunks still bounce between the 2 processes that hold the grant's sessions and the
  2 that do not: what is left to do is running a grant's chunks where its sessions are.
- A process that ends a chunk runs the grant's waiting ranges on its session (workers.chunks),
  5,000 messages, heavily loaded machine (machine CPU 14-20 ms a message, baseline 124-391
  msgs/s within the runs): ``--listener-alive`` 136 msgs/s (0.35x), 24 of 42 tasks sent back,
  and 100 msgs/s (0.80x), 45 of 67; without a listener 146 msgs/s (1.07x), 0 of 13. The two
  holders run most Inbox ranges in-process (6-7 of 12); the tasks still sent back are the
  range tasks that reach the two other processes before their range is done (they return,
  find it done or held, and skip without a slot) and the tasks of the other folders, which are
  not ranges. No clear gain in msgs/s under this load.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from imap_tools import AND, MailBoxUnencrypted  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from pipeline.config import Settings  # noqa: E402
from pipeline.crypto import generate_key  # noqa: E402
from pipeline.db import session_scope  # noqa: E402
from pipeline.dev.dovecot import LocalDovecot  # noqa: E402
from pipeline.dev.mailgen import generate  # noqa: E402
from pipeline.dev.ports import free_port  # noqa: E402
from pipeline.dev.redis import EmbeddedRedis  # noqa: E402
from pipeline.dev.seed import seed_maildir  # noqa: E402
from pipeline.grants.service import create_grant  # noqa: E402
from pipeline.models import Grant, Placement  # noqa: E402
from tests.benchmarks.cpu import CpuMeter, cmdline_has, tree  # noqa: E402
from tests.benchmarks.database import create_database, drop_database  # noqa: E402
from tests.support.grants import plaintext_request  # noqa: E402
from tests.support.processes import CeleryWorker, pipeline_env  # noqa: E402

RETENTION_DAYS = 90


def baseline(port: int, user: str, password: str, since: datetime) -> tuple[int, float]:
    """imap-tools, one process, fetch + parse everything in the window, store nothing."""
    started = time.perf_counter()
    count = 0
    with MailBoxUnencrypted("127.0.0.1", port).login(user, password, initial_folder=None) as mb:
        for folder in mb.folder.list():
            if "\\Noselect" in folder.flags:
                continue
            mb.folder.set(folder.name, readonly=True)
            criteria = AND(date_gte=(since - timedelta(days=1)).date())
            for msg in mb.fetch(criteria, mark_seen=False, bulk=100):
                if msg.date and msg.date.tzinfo and msg.date < since - timedelta(days=1):
                    continue
                _ = (msg.subject, msg.from_values, msg.to_values, msg.text, msg.html)
                _ = [(a.filename, a.size) for a in msg.attachments]
                count += 1
    return count, time.perf_counter() - started


def run_baseline(port: int, user: str, password: str, since: datetime, dovecot_pid: int) -> float:
    """One timed baseline run, printed with its CPU use; returns messages/s."""
    meter = CpuMeter({"baseline": tree(os.getpid()), "dovecot": tree(dovecot_pid)})
    meter.start()
    count, seconds = baseline(port, user, password, since)
    used = meter.stop()
    rate = count / seconds
    print(
        f"baseline  imap-tools, 1 process, no storage: {count} msgs in {seconds:.1f}s "
        f"= {rate:.0f} msgs/s"
    )
    print(cpu_line(used, count))
    return rate


def cpu_line(used: dict[str, float], messages: int) -> str:
    """CPU milliseconds per message by role (``machine`` includes everything else running)."""
    parts = ", ".join(f"{name} {1000 * s / max(messages, 1):.2f}" for name, s in used.items())
    return f"          CPU ms/msg: {parts}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4, help="sync worker processes")
    parser.add_argument("--attachment-fraction", type=float, default=0.03)
    parser.add_argument(
        "--logins-per-min",
        type=float,
        help="override the generic preset's per-account login budget (default: the preset's), "
        "to see what the login rate limit costs a fresh grant's first sync",
    )
    parser.add_argument(
        "--listener-alive",
        action="store_true",
        help="sync as an engine with a listener running does: a listener's heartbeat is kept "
        "in Redis, so the account's 2 IDLE slots and its login token stay reserved (none is "
        "lent to bulk sync, which then has 2 of the generic preset's 5 connections)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ipbench-"))
    work.chmod(0o755)
    now = datetime.now(UTC).replace(microsecond=0)
    since = now - timedelta(days=RETENTION_DAYS)
    dbname = f"ipbench_{uuid.uuid4().hex[:8]}"
    redis_server = EmbeddedRedis(work / "redis", free_port())
    redis_server.start()
    dovecot = LocalDovecot(work / "dovecot", free_port())
    dovecot.start()
    try:
        user, password = "bench", uuid.uuid4().hex
        dovecot.add_user(user, password)
        t0 = time.perf_counter()
        messages = list(
            generate(
                args.messages,
                seed=7,
                now=now,
                attachment_fraction=args.attachment_fraction,
                retention_days=RETENTION_DAYS,
            )
        )
        seed_maildir(dovecot.maildir(user), messages, owner=dovecot.mail_user)
        total_bytes = sum(len(m.raw) for m in messages)
        in_window = sum(1 for m in messages if m.internaldate >= since)
        print(
            f"seeded {len(messages)} messages ({total_bytes / 1e6:.0f} MB, {in_window} in the "
            f"{RETENTION_DAYS}-day window) in {time.perf_counter() - t0:.1f}s"
        )
        time.sleep(1.1)  # Dovecot re-reads its passwd-file at most once a second
        # warm the server's caches and indexes once, so neither side pays for it alone
        baseline(dovecot.port, user, password, since)

        dovecot_pid = int((dovecot.base_dir / "master.pid").read_text().split()[0])
        base_rate = run_baseline(dovecot.port, user, password, since, dovecot_pid)

        db_url = create_database(dbname)
        settings = Settings(
            database_url=db_url,
            redis_url=redis_server.url,
            encryption_keys=generate_key(),  # type: ignore[arg-type]
            data_dir=work / "data",
            retention_days=RETENTION_DAYS,
        )
        if args.logins_per_min:
            import redis

            from pipeline.limits import RateLimiter

            RateLimiter(redis.Redis.from_url(settings.require_redis_url())).set_limits(
                "generic", {"account_logins_per_min": args.logins_per_min}
            )
        if args.listener_alive:
            import redis

            from pipeline.redis import LISTENERS_KEY

            forever_ms = int((time.time() + 24 * 3600) * 1000)
            with redis.Redis.from_url(settings.require_redis_url()) as client:
                client.zadd(LISTENERS_KEY, {"bench-listener": forever_ms})
        worker = CeleryWorker(pipeline_env(settings), work, concurrency=args.workers).start()
        os.environ.update(pipeline_env(settings))
        from workers import enqueue

        assert worker.process is not None
        meter = CpuMeter(
            {
                "workers": tree(worker.process.pid),
                "postgres": cmdline_has(f" {dbname} "),
                "dovecot": tree(dovecot_pid),
                "redis": cmdline_has(f":{redis_server.port}"),
            }
        )
        try:
            meter.start()
            started = time.perf_counter()
            request = plaintext_request(dovecot.port, user, password, "bench@example.test")
            with session_scope(db_url) as db:
                grant = create_grant(db, settings, request).grant
                grant_id = grant.id
            enqueue.sync_grant(grant_id, "generic")
            while True:
                with session_scope(db_url) as db:
                    state = db.scalar(select(Grant.sync_state).where(Grant.id == grant_id))
                    stored = db.scalar(select(func.count()).select_from(Placement)) or 0
                if state == "synced":
                    break
                time.sleep(0.1)
            pipe_s = time.perf_counter() - started
            pipe_cpu = meter.stop()
        finally:
            worker.stop()
        pipe_rate = stored / pipe_s
        print(
            f"pipeline  {args.workers} Celery workers, stored in Postgres"
            f"{', a listener alive' if args.listener_alive else ''}: {stored} msgs in "
            f"{pipe_s:.1f}s = {pipe_rate:.0f} msgs/s"
        )
        print(cpu_line(pipe_cpu, stored))
        log = worker.log()  # the tasks' outcomes (a refused one: {'rescheduled': seconds})
        ended = re.findall(r"pipeline\.sync\.folder\[[^\]]+\] succeeded in [\d.]+s: (.*)", log)
        sent_back = sum("rescheduled" in outcome for outcome in ended)
        print(f"          sync tasks: {len(ended)}, {sent_back} sent back (no slot or login token)")
        # The machine is shared and noisy: measure the baseline again and keep its better run,
        # so a slow first baseline can never flatter the ratio.
        base_rate = max(base_rate, run_baseline(dovecot.port, user, password, since, dovecot_pid))
        print(f"ratio     pipeline / best baseline = {pipe_rate / base_rate:.2f}x")
        return 0
    finally:
        dovecot.stop()
        redis_server.stop()
        drop_database(dbname)


if __name__ == "__main__":
    sys.exit(main())
