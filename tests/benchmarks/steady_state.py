"""Benchmark: the steady state of N idle grants: IMAP commands and CPU of every role.

One command (from the repository root)::

    .venv/bin/python tests/benchmarks/steady_state.py                          # N = 100, 5 min
    .venv/bin/python tests/benchmarks/steady_state.py --grants 100,300,1000 --minutes 5

It starts a dedicated Dovecot (its process and connection limits raised for this benchmark
only), a private Redis, a throwaway Postgres database and, in front of Dovecot, a counting TCP
proxy (in this process) through which every grant connects, so every IMAP command the engine
sends is counted by name. Then the engine's roles as ``deploy/Procfile`` runs them: the sync
worker (4 processes), the webhooks/maintenance worker (2), beat and the listener.

Phases, on one running engine:

1. **baseline**: no grants, ``--baseline-minutes``: what the roles cost doing nothing;
2. for each N of ``--grants`` (ascending): grants are added up to N, each with an Inbox, Sent
   and 4 other folders (Drafts, Trash, Archive, Projects) of ``--messages`` messages each,
   synced in this process (the initial sync is not what is measured), the listener has its 2N
   IDLE connections, one poll interval passes so beat plans every grant, then for
   ``--minutes`` (keep it >= 5: the sweep, the folder discovery and reconciliation run every
   5 minutes by default):

   - IMAP commands per grant per minute (by command), against the goal: the polled folders'
     STATUS (4 per poll interval) plus the IDLE renewals (DONE + IDLE on 2 connections every
     ``idle_renew_s``): printed as a ratio;
   - CPU of each role (listener, sync workers, webhooks worker, beat, Redis, Postgres backends
     of this database), in % of one core, and Dovecot's apart; minus the baseline, per grant;
     the ratio of per-grant costs between the Ns (1.0: linear);
   - the engine at N against the goal "1,000 idle grants in at most a quarter of one core"
     (measured at 1,000, or extrapolated from the per-grant cost at the largest N, said so).

The machine is shared: the load average and the machine's busy time over each window are
printed so a reader can tell a quiet window from a busy one.

Measured 2026-12-07 on the development machine (2 cores shared with other sessions, load
average 3-10), ``--grants 100,300,1000 --minutes 5``; IMAP commands per grant per minute
(goal 4.16) and the engine's CPU in % of one core (baseline, no grants: 0.9 %)::

                                    N = 100            N = 300            N = 1000
    before (poll per grant, Inbox   10.56 cmd, 5.51 %  12.05 cmd, 15.16 % -
    and Sent STATUSed every minute)
    + Inbox/Sent skipped while in   10.64 cmd, 5.17 %   9.93 cmd, 10.79 % -
      IDLE, polls batched (the
      5-s bulk linger of main now:
      a login per poll)
    + no CAPABILITY after a LOGIN    8.66 cmd, 3.87 %   9.36 cmd,  8.62 % 8.76 cmd, 19.80 %
      that announced it

Then (``--grants 100 --minutes 3`` for the first line, ``--grants 100,300 --minutes 5`` for the
others; the machine was saturated throughout: busy 186-200 % of its 200 %, load average 3-14,
so CPU figures read higher than those above for the same code)::

                                    N = 100            N = 300
    the line above, again            9.61 cmd, 5.27 %  -
    + the sweep asks only folders    6.34 cmd, 4.85 %   6.65 cmd, 13.39 %
      no poll or listener saw; no
      CAPABILITY at connect (the
      greeting has it)
    + one LIST-STATUS per poll       3.43 cmd, 4.84 %   3.56 cmd, 12.21 %
      instead of 4 STATUS

Commands per grant and minute now (N = 300): 1.2 LIST (the poll's LIST-STATUS; folder
discovery's LIST every 5 min), 1.18 LOGIN, 1.18 LOGOUT: 0.85 x the goal, met. The sweep costs
an idle grant nothing (no session). What is left is a login per poll (bulk sessions are given
back 5 s after their task; a poll batch lands on any of the 4 worker processes, so a session
kept longer would seldom be the one the next poll finds). Per grant above the baseline:
25.4 -> 23.1 ms CPU a minute at N = 100 (same machine state), 22.5 at N = 300 (0.97 x that
of N = 100: linear).

Per grant above the baseline: 28.0 -> 17.8 ms CPU a minute at N = 100, 28.6 -> 15.4 at
N = 300, 11.3 at N = 1,000 (per grant 0.87 and 0.64 x that of N = 100: no worse than linear;
part of the drop is the machine, busy 176 % of its 200 % in the N = 100 window and 73 % in
the N = 1,000 one). 1,000 idle grants: 19.8 % of one core measured (goal 25 %: met); Dovecot
11.1 % apart. Commands stay 2.1 x the goal. What is left per grant and minute:
4 STATUS of the polled folders, 1.2 of the 5-minute sweep (every folder, fresh session), and
a login per poll (LOGIN, CAPABILITY, LOGOUT: about 1.3 each), since bulk sessions are given
back after their task. In a cProfile of one quiet poll in-process (9-10 ms CPU; a dispatched
task cost about 5 ms more before batching), the time went mostly to round trips: some 16 to
Redis (tokens, slot, locks), two short transactions, the IMAP commands.

Then (2026-12-07, 06:04-07:34 UTC, the machine shared with other sessions' benchmarks and
tests: busy 147-200 % of its 200 % in every window, load average 2-30)::

                                    N = 100            N = 300            N = 1000
    the code above (--grants         3.55 cmd, 5.89 %   3.56 cmd, 17.06 %  setup failed (a)
      100,300,1000)                  27.2 ms            31.4 ms
    + folder discovery on the poll's 3.20 cmd, 6.28 %   - (b)              -
      session (--grants 100,300)     21.2 ms
    + the sweep's checks batched     3.20 cmd, 6.29 %   -                  3.96 cmd, 45.49 %
      (--grants 100,1000)            27.9 ms                               26.3 ms

(ms: engine CPU per grant per minute above the baseline, 1.35-2.75 % with no grants. (a) the
setup's reconciliation race, fixed in :func:`add_grants`; (b) the run broke when its file was
edited.) At N = 1,000: 3.96 IMAP commands per grant per minute (LIST 1.38, LOGIN 1.18, LOGOUT
1.19, IDLE and DONE 0.10 each; goal 4.16: met, 0.95 x; the window began 70 s after the setup,
so first sweeps and discoveries of new grants, with logins of their own, fall in it); CPU
linear (per grant 0.94 x that of N = 100); the engine took 45.5 % of one core (goal 25 %: NOT
met on this machine state): sync worker 34.2 %, Redis 4.7 %, listener 3.1 %, Postgres 2.8 %,
webhooks worker 0.6 %, beat 0.1 %; Dovecot 18.3 % apart. Figures of the same code vary by
a third between windows on this loaded machine (27.2 and 21.2 ms at N = 100 for code that
differs only by the discovery), so the two changes' CPU effect is within the noise here; what
they remove is counted: at N = 1,000, 200 discovery tasks with a login each and about 190 of
the 200 sweep check tasks a minute. What the sync worker spends is the polls themselves: an
in-process quiet poll costs about 10.5 ms CPU (cProfile: some 15 Redis round trips for
tokens, slot, job lock and pool, two short transactions, a login), so 1,000 polls a minute
are about 17.5 % of one core before Celery's share; the login per poll is the next thing to
remove (one process keeping the poll sessions).

Then (2026-12-07, 10:01-11:10 UTC, ``--grants 100 --minutes 5 --baseline-minutes 1`` unless
said, the machine busy 129-194 % of its 200 %; ms: engine CPU per grant per minute above the
baseline, 0.73-0.92 % with no grants)::

                                    N = 100            N = 300            load average
    the code above (6b5750b)         3.20 cmd, 2.91 %  -                  5.3-5.9
                                     11.94 ms
    + a poll batch reads once what   3.20 cmd, 1.86 %  -                  1.8-2.9
      its polls read (grants and     6.66 ms
      folders, watched folders,
      discovery stamps, locks,
      limits); a quiet poll logs
      out at once (no pooling)
      (--grants 100,300)             3.20 cmd, 1.83 %   3.20 cmd, 3.61 %  1.9-5.0
                                     6.50 ms            5.73 ms
    A/B, both at once on the same machine (the 5-minute checks batched the same way too):
      6b5750b                        3.20 cmd, 2.59 %  -                  2.1-3.1
                                     10.82 ms
      this code                      3.20 cmd, 1.70 %  -                  2.1-3.1
                                     5.82 ms

1,000 idle grants, extrapolated: 18.8 % of one core before and 10.4 % after in the A/B run
(goal 25 %: met; 10.3 % from N = 300, whose per-grant cost is 0.88 x that of N = 100: linear).
Per role above the baseline at N = 100 in the A/B run, before -> after: sync worker 1.44 ->
0.74 %, Redis 0.21 -> 0.12 %, Postgres 0.10 -> 0.07 %, listener 0.11 -> 0.10 %; Dovecot
0.93 % apart. In-process (cProfile harness, one batch of 20 quiet grants against Dovecot,
thread CPU): a poll cost 6.5-6.9 ms plus 1.0 ms for the pool reaper's logout, now 2.2-3.1 ms;
Redis round trips per poll 18.2 -> 5.3 (back-off, operation token, connection slot, login
token, the slot's release at logout; the rest once per batch), Postgres transactions 2 -> none
of its own (one per batch). An idle grant's 5-minute check (nothing due, no session): 1.9-2.1
-> 0.35 ms, Redis round trips 4 -> 0.2. What is left per poll is the login itself (connect,
LOGIN, LIST-STATUS, LOGOUT: imaplib compiles a regular expression per connection, a fresh
tag prefix) and the five Redis calls around it; the listener (0.6-0.8 ms per grant a minute,
not looked into here) is now the second largest share.

Then N = 1,000 measured (2026-12-07 11:40-11:52 UTC, main 7739b5b, ``--grants 1000 --minutes
5 --baseline-minutes 1``, a quiet machine: busy 40 % of its 200 %, load average 1.0; nothing
else ran): 1,000 grants added and synced in 180 s; 3.22 IMAP commands per grant per minute
(LIST 1.21, LOGIN 1.01, LOGOUT 1.01; goal 4.16: 0.77 x, met); the engine took **10.54 % of
one core** (goal 25 %: met), 5.89 ms CPU per grant per minute above the 0.72 % baseline:
sync worker 6.58 %, listener 1.61 %, Redis 1.40 %, Postgres 0.53 %, webhooks worker 0.35 %,
beat 0.07 %; Dovecot 10.92 % apart.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from pipeline.config import Settings  # noqa: E402
from pipeline.crypto import generate_key  # noqa: E402
from pipeline.db import session_scope, sessionmaker_for  # noqa: E402
from pipeline.dev.dovecot import LocalDovecot  # noqa: E402
from pipeline.dev.folders import chown_tree  # noqa: E402
from pipeline.dev.ports import free_port  # noqa: E402
from pipeline.dev.redis import EmbeddedRedis  # noqa: E402
from pipeline.grants.service import create_grant  # noqa: E402
from pipeline.limits import RateLimiter  # noqa: E402
from pipeline.models import Grant  # noqa: E402
from pipeline.presets import IDLE_RENEW_DEFAULT_S, queue_names  # noqa: E402
from pipeline.sync.run import sync_grant_inline  # noqa: E402
from tests.benchmarks.cpu import CpuMeter, cmdline_has, tree  # noqa: E402
from tests.benchmarks.database import create_database, drop_database  # noqa: E402
from tests.support.grants import plaintext_request  # noqa: E402

PASSWORD = "bench-password"
FOLDERS = {  # Maildir++ folder -> role; Inbox and Sent are IDLE-watched, the rest polled
    "": "inbox",
    ".Sent": "sent",
    ".Drafts": "drafts",
    ".Trash": "trash",
    ".Archive": "archive",
    ".Projects": None,
}
POLLED = sum(1 for role in FOLDERS.values() if role not in ("inbox", "sent"))
IDLE_CONNECTIONS = 2  # per grant: Inbox and Sent
WATCHING = re.compile(r"watching grant=(\S+) folder=(\S+)")
CONNECT_TIMEOUT_S = 900.0
GOAL_CORE_SHARE = 0.25  # 1,000 idle grants in at most a quarter of one core (issue 11)
GOAL_GRANTS = 1000
LITERAL = re.compile(rb"\{(\d+)\+?\}$")
MAX_LINE = 1 << 20  # a command line longer than this is not ours to parse: dropped from counting


# --- the counting proxy -----------------------------------------------------------------------
class CountingProxy:
    """A TCP proxy to ``upstream`` that counts client commands by name (in a thread)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.open = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CountingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise SystemExit("the counting proxy did not start")
        return self

    def snapshot(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(self.counts)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=4096)
        )
        self._ready.set()
        with contextlib.suppress(Exception):
            self._loop.run_forever()
        server.close()

    def _count(self, line: bytes) -> None:
        parts = line.split(None, 3)
        if not parts:
            return
        if parts[0].upper() == b"DONE":
            name = "DONE"
        elif len(parts) >= 2:
            name = parts[1].decode(errors="replace").upper()
            if name == "UID" and len(parts) >= 3:
                name = "UID " + parts[2].decode(errors="replace").upper()
        else:
            return  # a continuation (an AUTHENTICATE response)
        with self.lock:
            self.counts[name] += 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        self.open += 1

        async def client_to_server() -> None:
            buf, skip = b"", 0
            while chunk := await reader.read(65536):
                up_writer.write(chunk)
                buf += chunk
                while buf:
                    if skip:
                        taken = min(skip, len(buf))
                        buf, skip = buf[taken:], skip - taken
                        continue
                    end = buf.find(b"\r\n")
                    if end < 0:
                        if len(buf) > MAX_LINE:
                            buf = b""
                        break
                    line, buf = buf[:end], buf[end + 2 :]
                    self._count(line)
                    literal = LITERAL.search(line)
                    skip = int(literal[1]) if literal else 0
                await up_writer.drain()
            up_writer.close()

        async def server_to_client() -> None:
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            writer.close()

        try:
            await asyncio.gather(client_to_server(), server_to_client(), return_exceptions=True)
        finally:
            self.open -= 1
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()


# --- Dovecot with room for thousands of sessions ----------------------------------------------
class BenchDovecot(LocalDovecot):
    """The local Dovecot with its limits raised for this benchmark only: many imap processes,
    many clients per login process, a connection backlog for mass reconnects."""

    def _config(self) -> str:
        config = super()._config()
        return config.replace(
            "service imap {\n  process_limit = 4096\n",
            "service imap {\n  process_limit = 16384\n  vsz_limit = 512M\n",
        ).replace("default_process_limit = 4096", "default_process_limit = 16384")


def make_mailboxes(dovecot: BenchDovecot, users: list[str], messages: int) -> None:
    """Users with the six folders written as Maildir files (fast), ``messages`` in each."""
    stamp = int(time.time())
    for user in users:
        dovecot.add_user(user, PASSWORD)
        root = dovecot.maildir(user)
        for folder in FOLDERS:
            base = root / folder if folder else root
            for sub in ("cur", "new", "tmp"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            for i in range(messages):
                name = f"{stamp}.{uuid.uuid4().hex}.bench:2,{'S' if i % 2 else ''}"
                (base / "cur" / name).write_bytes(
                    (
                        f"From: Someone <someone@example.test>\r\nTo: {user}@example.test\r\n"
                        f"Subject: {folder or 'inbox'} {i}\r\n"
                        f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n"
                        f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nbody {i}\r\n"
                    ).encode()
                )
    chown_tree(dovecot.home / "mail", dovecot.mail_user)


def _add_one(settings: Settings, port: int, user: str) -> str:
    """One grant (its own transaction, a real login through the proxy), synced at once."""
    request = plaintext_request(port, user, PASSWORD, f"{user}@example.test")
    with session_scope(settings.require_database_url()) as db:
        grant_id = create_grant(db, settings, request).grant.id
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
    return grant_id


def add_grants(settings: Settings, port: int, users: list[str]) -> list[str]:
    """Grants for ``users``, each made and synced at once, in 2 processes.

    Each grant is synced right after it is made, in its own transaction, as the CLI and the
    API make them. Made all first (one transaction around all of a step's logins) and synced
    after, the N = 1,000 step failed twice on a loaded machine: once in the transaction left
    open across its 700 logins (``OperationalError: the connection is closed``), once because
    its grants waited unsynced longer than the engine's stall limit (``GRANT_STALL_S``, 15
    min), so reconciliation queued grant syncs that raced the benchmark's own
    (``UniqueViolation`` on the folders).
    """
    # spawned, not forked: this process runs the proxy's thread (a fork would copy its locks)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        ids = list(pool.map(_add_one, [settings] * len(users), [port] * len(users), users))
    with session_scope(settings.require_database_url()) as db:
        done = db.scalar(
            select(func.count())
            .select_from(Grant)
            .where(Grant.id.in_(ids), Grant.initial_sync_completed_at.is_not(None))
        )
    if done != len(ids):
        raise SystemExit(f"only {done} of {len(ids)} grants finished their initial sync")
    return ids


def watched(log: Path) -> int:
    """(grant, folder) pairs the listener reported watching."""
    return len(set(WATCHING.findall(log.read_text(errors="replace"))))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1.0)


def measure(
    meter: CpuMeter, proxy: CountingProxy, seconds: float
) -> tuple[dict[str, float], collections.Counter[str], str, str]:
    """CPU seconds per role and commands by name over ``seconds``; load before and after."""
    load_before = loadavg()
    before = proxy.snapshot()
    meter.start()
    time.sleep(seconds)
    cpu = meter.stop()
    commands = proxy.snapshot()
    commands.subtract(before)
    return cpu, +commands, load_before, loadavg()


ENGINE = ("listener", "sync worker", "webhooks worker", "beat", "redis", "postgres")


def report_cpu(label: str, cpu: dict[str, float], seconds: float, load: tuple[str, str]) -> float:
    """Print each role's share of one core; returns the engine's."""
    engine = sum(cpu[r] for r in ENGINE)
    print(f"  CPU over {seconds:.0f} s ({label}), % of one core:")
    for role in (*ENGINE, "dovecot"):
        print(f"    {role:<18} {100 * cpu[role] / seconds:7.2f} %")
    print(f"    {'engine (sum)':<18} {100 * engine / seconds:7.2f} %")
    print(
        f"    machine busy {100 * cpu['machine'] / seconds:.0f} % of one core (2 cores = 200 %);"
        f" load average {load[0]} -> {load[1]}"
    )
    return engine / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", default="100", help="comma-separated Ns, e.g. 100,300,1000")
    parser.add_argument("--minutes", type=float, default=5.0, help="measured window per N")
    parser.add_argument("--baseline-minutes", type=float, default=1.0, help="window with 0 grants")
    parser.add_argument("--messages", type=int, default=3, help="messages per folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    ns = sorted({int(n) for n in args.grants.split(",")})
    window_s = args.minutes * 60

    work = Path(tempfile.mkdtemp(prefix="steady-"))
    work.chmod(0o755)
    print(f"work folder {work}; N = {ns}; {args.minutes:g} min per N", flush=True)
    redis_server = EmbeddedRedis(work / "redis", free_port())
    redis_server.start()
    dovecot = BenchDovecot(work / "dovecot", free_port())
    dovecot.start()
    proxy = CountingProxy(dovecot.port).start()
    db_name = f"steady_{uuid.uuid4().hex[:8]}"
    db_url = create_database(db_name)
    settings = Settings(
        database_url=db_url,
        redis_url=redis_server.url,
        encryption_keys=generate_key(),  # type: ignore[arg-type]
        data_dir=work / "data",
    )
    # every login of this run goes to one server: the default provider budget (600 a minute)
    # would make the listener's 2N first logins the length of the run
    RateLimiter(redis.Redis.from_url(redis_server.url, socket_timeout=10)).set_limits(
        "generic", {"provider_logins_per_min": 100_000}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAP_PIPELINE_")}
    env.update(
        IMAP_PIPELINE_DATABASE_URL=db_url,
        IMAP_PIPELINE_REDIS_URL=redis_server.url,
        IMAP_PIPELINE_ENCRYPTION_KEYS=",".join(settings.encryption_key_list),
        IMAP_PIPELINE_DATA_DIR=str(work / "data"),
    )
    celery = [sys.executable, "-m", "celery", "-A", "workers"]
    roles = {
        "sync worker": [
            *celery, "worker", "-Q", ",".join(queue_names()), "-n", f"sync-{db_name}@%h",
            "-l", "info", "--concurrency", "4",
        ],
        "webhooks worker": [
            *celery, "worker", "-Q", "webhooks,maintenance", "-n", f"hooks-{db_name}@%h",
            "-l", "info", "--concurrency", "2",
        ],
        "beat": [*celery, "beat", "-l", "info", "--pidfile", "", "-s", str(work / "beat")],
        "listener": [sys.executable, "-m", "pipeline.cli", "listen"],
    }  # fmt: skip
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for role, argv in roles.items():
            with (work / f"{role.replace(' ', '-')}.log").open("wb") as log:
                procs[role] = subprocess.Popen(
                    argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
        master = int((dovecot.base_dir / "master.pid").read_text().split()[0])
        redis_process = redis_server._process  # the benchmark measures its CPU
        assert redis_process is not None and redis_process.pid is not None
        redis_pid = redis_process.pid
        meter = CpuMeter(
            {
                **{role: tree(p.pid) for role, p in procs.items()},
                "redis": tree(redis_pid),
                "postgres": cmdline_has(f" {db_name} "),
                "dovecot": tree(master),
            }
        )
        time.sleep(20)  # the roles load and connect
        base_s = args.baseline_minutes * 60
        print(f"\nbaseline: the engine with no grants, {base_s:.0f} s", flush=True)
        cpu, commands, *load = measure(meter, proxy, base_s)
        baseline = report_cpu("no grants", cpu, base_s, (load[0], load[1]))

        poll_s = settings.beat.poll_interval_s
        ideal = POLLED * 60 / poll_s + IDLE_CONNECTIONS * 2 * 60 / IDLE_RENEW_DEFAULT_S
        users: list[str] = []
        per_grant: dict[int, float] = {}
        engine_at: dict[int, float] = {}
        for n in ns:
            new = [f"s{i:05d}" for i in range(len(users), n)]
            started = time.monotonic()
            make_mailboxes(dovecot, new, args.messages)
            time.sleep(1.1)  # Dovecot re-reads its passwd-file at most once a second
            add_grants(settings, proxy.port, new)
            users += new
            print(
                f"\nN = {n}: {len(new)} grants added and synced in "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
            wait_for(
                lambda n=n: watched(work / "listener.log") >= IDLE_CONNECTIONS * n,
                CONNECT_TIMEOUT_S,
                f"the listener's {IDLE_CONNECTIONS * n} IDLE connections",
            )
            time.sleep(poll_s + 10)  # beat's next planning includes every grant
            cpu, commands, *load = measure(meter, proxy, window_s)
            minutes = window_s / 60
            total = sum(commands.values())
            got = total / n / minutes
            print(f"  IMAP commands: {total} in {minutes:g} min = {got:.2f} per grant per minute")
            for name, count in commands.most_common():
                print(f"    {name:<14} {count / n / minutes:7.3f} per grant per minute")
            print(
                f"  goal: {POLLED} polled folders every {poll_s:g} s + DONE/IDLE on "
                f"{IDLE_CONNECTIONS} connections every {IDLE_RENEW_DEFAULT_S / 60:g} min = "
                f"{ideal:.2f}; ratio {got / ideal:.2f} "
                f"({'met' if got <= ideal * 1.0001 else 'NOT met'})"
            )
            engine = report_cpu(f"N = {n}", cpu, window_s, (load[0], load[1]))
            engine_at[n] = engine
            per_grant[n] = (engine - baseline) / n
            print(
                f"  engine above the baseline: {100 * per_grant[n] * 1000:.3f} % of one core "
                f"per 1,000 grants ({60e3 * per_grant[n]:.2f} ms CPU per grant per minute)"
            )
        smallest = ns[0]
        print("\nsummary")
        for n in ns:
            ratio = per_grant[n] / per_grant[smallest] if per_grant[smallest] > 0 else float("nan")
            print(
                f"  N = {n:>5}: engine {100 * engine_at[n]:6.2f} % of one core; per grant "
                f"{ratio:.2f} x that of N = {smallest} (1.00 = linear)"
            )
        largest = ns[-1]
        at_goal = (
            engine_at[GOAL_GRANTS]
            if GOAL_GRANTS in engine_at
            else (baseline + per_grant[largest] * GOAL_GRANTS)
        )
        how = "measured" if GOAL_GRANTS in engine_at else f"extrapolated from N = {largest}"
        print(
            f"  1,000 idle grants ({how}): {100 * at_goal:.1f} % of one core; goal <= "
            f"{100 * GOAL_CORE_SHARE:.0f} %: {'met' if at_goal <= GOAL_CORE_SHARE else 'NOT met'}"
        )
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        dovecot.stop()
        redis_server.stop()
        drop_database(db_name)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
