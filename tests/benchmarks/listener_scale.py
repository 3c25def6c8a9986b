"""Benchmark: one ``imap-pipeline listen`` process holding N grants (2 IDLE connections each).

One command (from the repository root)::

    .venv/bin/python tests/benchmarks/listener_scale.py               # 1,000 grants
    .venv/bin/python tests/benchmarks/listener_scale.py --grants 100  # quicker

It starts a dedicated Dovecot (STARTTLS with a throwaway CA, the settings of
``pipeline/dev/dovecot.py`` for many sessions), a private Redis and a throwaway Postgres
database, creates N users with an Inbox and a Sent folder and N grants with their folder rows,
then runs ``imap-pipeline listen`` as a subprocess, exactly as an operator would, and reports:

- resident memory of the listener per IDLE connection (RSS after all connected minus RSS with
  no grants, divided by the connections), and the same for threads over imaplib (one thread
  and one imaplib IDLE connection each, ``--threads-sample`` of them, in this process): the
  measurement behind the choice of an event loop;
- CPU of the listener while everything idles (``--idle-seconds``);
- APPEND -> event latency (the ``pipeline.sync.folder`` message appearing in the broker list
  ``sync.generic``) p50/p99 over ``--samples`` APPENDs, next to the floor: a bare imaplib IDLE
  client's APPEND -> ``* n EXISTS`` on the same mailboxes in the same run;
- time to reconnect every connection after a Dovecot restart, and a clean shutdown's duration.
  Every login takes a turn of the shared login budget (pipeline.limits): all connections go
  to one server, so the provider budget of ``generic:127.0.0.1`` (600 a minute unless
  ``--provider-logins-per-min`` says otherwise) sets the pace of the start-up and the reconnect.

Measured 2026-11-26 on the development machine (2 cores, 23 GiB, Dovecot on the same host),
1,000 grants = 2,000 STARTTLS IDLE connections, one listener process::

    RSS per connection, asyncio listener       62.4 KiB  (222.5 MiB total)
    RSS per connection, imaplib threads        85.4 KiB
    CPU while idle                             1.2 %     of one core
    connect all at start-up                    38.4 s    (30-38 s over runs)
    reconnect all after Dovecot restart        17.4 s    (17-28 s over runs; the listener was
                                                          busy 5.7 s of it, so most of the time
                                                          goes elsewhere: Dovecot starting 2,000
                                                          sessions on the same two cores)
    clean shutdown (DONE + LOGOUT of all)      4.4 s
    APPEND -> sync request p50 / p99           0.507 / 0.599 s
    floor: APPEND -> EXISTS p50 / p99          0.505 / 0.549 s

Since the listener logs in on the shared budget (same machine, same day, 1,000 grants, default
600 logins a minute; the budget allows 2,000 logins in 199.0 s)::

    connect all at start-up                    196.6 s
    reconnect all after Dovecot restart        199.9 s   (listener CPU meanwhile 18.9 s)
    with --grants 200: 38.4 s / 39.9 s (2.8 s before); with --grants 200
    --provider-logins-per-min 6000: 2.7 s / 2.9 s
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import imaplib
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
import redis
import trustme

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.crypto import SecretBox, generate_key  # noqa: E402
from pipeline.db import migrate, session_scope  # noqa: E402
from pipeline.dev.dovecot import LocalDovecot  # noqa: E402
from pipeline.dev.folders import chown_tree  # noqa: E402
from pipeline.dev.ports import free_port  # noqa: E402
from pipeline.dev.redis import EmbeddedRedis  # noqa: E402
from pipeline.limits import RateLimiter, capacity  # noqa: E402
from pipeline.limits.buckets import PROVIDER_LOGINS_PER_MIN  # noqa: E402
from pipeline.models import Folder, Grant  # noqa: E402

ADMIN_URL = os.environ.get("IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
QUEUE = "sync.generic"  # where the generic preset's sync requests go (a Redis list)
PASSWORD = "bench-password"
CONNECT_TIMEOUT_S = 600.0  # all connections up (start or after a restart)
SETTLE_S = 3.0  # let the listener finish start-up before measuring its baseline
IMAP_TIMEOUT_S = 30.0
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .* watching grant=")


# --- small helpers ------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def wait(condition: object, timeout_s: float, what: str, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every_s)


def message(i: int) -> bytes:
    return (
        f"From: bench@example.test\r\nTo: u@example.test\r\nSubject: sample {i}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n\r\nbody {i}\r\n"
    ).encode()


# --- a bare imaplib IDLE client (the floor, and the threads-per-connection comparison) ----------
@dataclass
class IdleClient:
    """One imaplib connection in IDLE on a thread; records when ``* n EXISTS`` arrives."""

    host: str
    port: int
    user: str
    ctx: ssl.SSLContext
    seen: list[float] = field(default_factory=list)
    conn: imaplib.IMAP4 | None = None
    thread: threading.Thread | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = imaplib.IMAP4(self.host, self.port, timeout=IMAP_TIMEOUT_S)
        conn.starttls(self.ctx)
        conn.login(self.user, PASSWORD)
        conn.select("INBOX", readonly=True)
        self.conn = conn
        sock = conn.sock
        sock.settimeout(None)
        tag = conn._new_tag()  # type: ignore[attr-defined]
        conn.send(tag + b" IDLE\r\n")
        buf = b""
        while b"\r\n" not in buf:
            buf += sock.recv(4096)
        self.ready.set()
        buf = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                if line.endswith(b"EXISTS"):
                    self.seen.append(now)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.shutdown()


# --- set-up -------------------------------------------------------------------------------------
def make_users(dovecot: LocalDovecot, n: int) -> list[str]:
    names = [f"b{i:05d}" for i in range(n)]
    for u in names:
        dovecot.add_user(u, PASSWORD)
        for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
            (dovecot.maildir(u) / sub).mkdir(parents=True, exist_ok=True)
    chown_tree(dovecot.home / "mail", dovecot.mail_user)
    return names


def make_grants(db_url: str, key: str, port: int, users: list[str]) -> dict[str, tuple[str, str]]:
    """Grants with Inbox/Sent rows; returns user -> (grant id, inbox folder id)."""
    box = SecretBox([key])
    out: dict[str, tuple[str, str]] = {}
    with session_scope(db_url) as db:
        for u in users:
            grant = Grant(
                email=f"{u}@example.test",
                provider="generic",
                imap_host="127.0.0.1",
                imap_port=port,
                imap_tls="starttls",
                imap_username=u,
                verify_tls=True,
                secrets_sealed=box.seal_json({"imap_password": PASSWORD}),
                grant_status="valid",
                sync_state="synced",
            )
            db.add(grant)
            db.flush()
            inbox = Folder(grant_id=grant.id, name="INBOX", raw_name="INBOX", role="inbox")
            sent = Folder(grant_id=grant.id, name="Sent", raw_name="Sent", role="sent")
            db.add_all([inbox, sent])
            db.flush()
            out[u] = (grant.id, inbox.id)
    return out


def watching_times(log: Path, since: datetime) -> list[datetime]:
    """Timestamps of "watching" log lines (one per successful connection) after ``since``."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        match = LOG_TIME.match(line)
        if match:
            when = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")
            if when >= since:
                out.append(when)
    return out


def ideal_s(logins_per_min: float, logins: int) -> float:
    """Least time for ``logins`` logins within the provider's login budget (burst, then rate)."""
    rate = logins_per_min / 60
    return max(0.0, (logins - capacity(rate)) / rate)


def drain(client: redis.Redis[bytes]) -> int:
    n = int(client.llen(QUEUE))
    client.delete(QUEUE)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grants", type=int, default=1000, help="grants (2 connections each)")
    parser.add_argument("--samples", type=int, default=200, help="APPENDs for the latency")
    parser.add_argument("--mailboxes", type=int, default=20, help="mailboxes the APPENDs rotate")
    parser.add_argument("--spacing-s", type=float, default=0.1, help="time between APPENDs")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="CPU sampling window")
    parser.add_argument("--threads-sample", type=int, default=200, help="imaplib threads to size")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--provider-logins-per-min",
        type=float,
        default=None,
        help="override the generic provider's login budget (imap-pipeline limits set generic "
        f"provider_logins_per_min=N; default {PROVIDER_LOGINS_PER_MIN:g}, shared by every "
        "listener and worker logging in to one server): what it costs a mass reconnect",
    )
    args = parser.parse_args()
    n_conn = 2 * args.grants
    work = Path(tempfile.mkdtemp(prefix="listener-bench-"))
    work.chmod(0o755)
    print(f"work folder {work}; {args.grants} grants -> {n_conn} IDLE connections", flush=True)

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = work / "ca.pem", work / "cert.pem", work / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    for p in (ca_file, cert_file, key_file):
        p.chmod(0o644)
    tls = ssl.create_default_context(cafile=str(ca_file))

    redis_server = EmbeddedRedis(work / "redis", free_port())
    redis_server.start()
    redis_url = redis_server.url
    rc: redis.Redis[bytes] = redis.Redis.from_url(redis_url, socket_timeout=10)
    limiter = RateLimiter(rc)
    if args.provider_logins_per_min:
        limiter.set_limits("generic", {"provider_logins_per_min": args.provider_logins_per_min})
    logins_per_min = limiter.limits("generic").provider_logins_per_min

    db_name = f"listener_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')  # type: ignore[arg-type]
    db_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + db_name
    migrate(db_url)

    dovecot = LocalDovecot(work / "dovecot", free_port(), tls_cert=cert_file, tls_key=key_file)
    dovecot.start()
    listener: subprocess.Popen[bytes] | None = None
    floor: list[IdleClient] = []
    log_path = work / "listener.log"
    log_file = log_path.open("wb")
    try:
        t = time.monotonic()
        users = make_users(dovecot, args.grants)
        time.sleep(1.1)  # Dovecot re-reads its passwd-file at most once a second
        key = generate_key()
        print(f"set-up of {args.grants} users: {time.monotonic() - t:.1f} s", flush=True)

        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAP_PIPELINE_")}
        env.update(
            IMAP_PIPELINE_DATABASE_URL=db_url,
            IMAP_PIPELINE_REDIS_URL=redis_url,
            IMAP_PIPELINE_ENCRYPTION_KEYS=key,
            IMAP_PIPELINE_IMAP_CA_FILE=str(ca_file),
            IMAP_PIPELINE_DATA_DIR=str(work / "data"),
        )
        listener = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "listen", "--id", "bench"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        # One warm-up grant first: the baseline then includes everything a listener loads
        # once (Celery's producer, TLS, SQLAlchemy), not per connection.
        started = datetime.now()
        grants = make_grants(db_url, key, dovecot.port, users[:1])
        wait(lambda: len(watching_times(log_path, started)) >= 2, 60, "warm-up grant")
        time.sleep(SETTLE_S)
        base_rss = rss_kib(listener.pid)
        print(f"listener with one grant: RSS {base_rss / 1024:.1f} MiB", flush=True)

        started = datetime.now()
        t = time.monotonic()
        grants |= make_grants(db_url, key, dovecot.port, users[1:])
        wait(
            lambda: len(watching_times(log_path, started)) >= n_conn - 2,
            CONNECT_TIMEOUT_S,
            "all connections",
            every_s=0.5,
        )
        del t
        connected = watching_times(log_path, started)
        connect_s = (connected[n_conn - 3] - connected[0]).total_seconds()
        time.sleep(SETTLE_S)
        full_rss = rss_kib(listener.pid)
        per_conn_kib = (full_rss - base_rss) / (n_conn - 2)
        print(
            f"all {n_conn} connections up ({connect_s:.1f} s from the first to the last); "
            f"RSS {full_rss / 1024:.1f} MiB",
            flush=True,
        )

        # CPU while idle
        drain(rc)
        c0, w0 = cpu_s(listener.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_cpu_pct = 100 * (cpu_s(listener.pid) - c0) / (time.monotonic() - w0)

        # latency: APPEND -> sync request in the broker, next to the IDLE floor
        sample_users = users[: min(args.mailboxes, len(users))]
        floor = [IdleClient("127.0.0.1", dovecot.port, u, tls) for u in sample_users]
        for c in floor:
            c.start()
        for c in floor:
            if not c.ready.wait(IMAP_TIMEOUT_S):
                raise SystemExit("floor client did not reach IDLE")
        appenders = {}
        for u in sample_users:
            a = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=IMAP_TIMEOUT_S)
            a.starttls(tls)
            a.login(u, PASSWORD)
            appenders[u] = a
        time.sleep(1.5)
        drain(rc)
        inbox_of = {grants[u][1]: u for u in sample_users}
        arrived: dict[str, list[float]] = {u: [] for u in sample_users}
        stop_pop = threading.Event()

        def pop_events() -> None:
            popper: redis.Redis[bytes] = redis.Redis.from_url(redis_url, socket_timeout=10)
            while not stop_pop.is_set():
                item = popper.brpop([QUEUE], timeout=1)
                if item is None:
                    continue
                now = time.monotonic()
                body = json.loads(base64.b64decode(json.loads(item[1])["body"]))
                folder_id = body[0][1]
                if folder_id in inbox_of:
                    arrived[inbox_of[folder_id]].append(now)
            popper.close()

        popper = threading.Thread(target=pop_events, daemon=True)
        popper.start()
        sent_at: list[tuple[str, float, int]] = []  # user, time, floor index
        for i in range(args.samples):
            u = sample_users[i % len(sample_users)]
            fc = floor[i % len(sample_users)]
            t0 = time.monotonic()
            sent_at.append((u, t0, len(fc.seen)))
            appenders[u].append("INBOX", None, None, message(i))
            time.sleep(args.spacing_s)
        time.sleep(3.0)
        stop_pop.set()
        popper.join(5)
        listener_lat: list[float] = []
        floor_lat: list[float] = []
        for i, (u, t0, seen_before) in enumerate(sent_at):
            fc = floor[i % len(sample_users)]
            if len(fc.seen) > seen_before:
                floor_lat.append(fc.seen[seen_before] - t0)
            later = [a for a in arrived[u] if a >= t0]
            if later:
                listener_lat.append(min(later) - t0)
                arrived[u].remove(min(later))
        for a in appenders.values():
            with contextlib.suppress(Exception):
                a.logout()

        # threads over imaplib: memory per connection in this process, for comparison
        threads_kib = float("nan")
        if args.threads_sample:
            before = rss_kib(os.getpid())
            extra = [
                IdleClient("127.0.0.1", dovecot.port, users[i % len(users)], tls)
                for i in range(args.threads_sample)
            ]
            for c in extra:
                c.start()
            for c in extra:
                c.ready.wait(IMAP_TIMEOUT_S)
            time.sleep(1.0)
            threads_kib = (rss_kib(os.getpid()) - before) / args.threads_sample
            for c in extra:
                c.close()

        # reconnect everything after a server restart
        for c in floor:
            c.close()
        floor = []
        cpu_before = cpu_s(listener.pid)
        dovecot.stop()
        dovecot.start()
        back = datetime.now()
        wait(
            lambda: len(watching_times(log_path, back)) >= n_conn,
            CONNECT_TIMEOUT_S,
            "reconnect of every connection",
            every_s=0.2,
        )
        reconnect_cpu_s = cpu_s(listener.pid) - cpu_before
        times = watching_times(log_path, back)
        reconnect_log_s = (times[n_conn - 1] - back).total_seconds()

        t = time.monotonic()
        listener.terminate()
        listener.wait(60)
        shutdown_s = time.monotonic() - t

        rows = [
            (
                "RSS per connection, asyncio listener",
                f"{per_conn_kib:.1f} KiB",
                f"total {full_rss / 1024:.1f} MiB, {base_rss / 1024:.1f} MiB with one grant",
            ),
            (
                "RSS per connection, imaplib threads",
                f"{threads_kib:.1f} KiB",
                f"{args.threads_sample} threads in the benchmark process",
            ),
            ("CPU while idle", f"{idle_cpu_pct:.2f} %", f"over {args.idle_seconds:.0f} s"),
            ("connect all at start-up", f"{connect_s:.1f} s", "first -> last connection idling"),
            (
                "reconnect all after Dovecot restart",
                f"{reconnect_log_s:.1f} s",
                "Dovecot accepting again -> last connection idling",
            ),
            (
                "login budget of the server",
                f"{logins_per_min:g} / min",
                f"{ideal_s(logins_per_min, n_conn):.1f} s for {n_conn} logins at that rate",
            ),
            (
                "listener CPU during that reconnect",
                f"{reconnect_cpu_s:.1f} s",
                "CPU seconds; near the reconnect time, the listener would be the bottleneck",
            ),
            (
                "clean shutdown (SIGTERM -> exit)",
                f"{shutdown_s:.1f} s",
                f"exit code {listener.returncode}",
            ),
        ]
        for name, lat in (
            ("APPEND -> sync request", listener_lat),
            ("floor: APPEND -> EXISTS", floor_lat),
        ):
            if lat:
                rows.append(
                    (
                        f"{name} p50 / p99",
                        f"{statistics.median(lat):.3f} / {pct(lat, 99):.3f} s",
                        f"{len(lat)}/{args.samples} seen",
                    )
                )
            else:
                rows.append((name, "no samples", f"see {log_path}"))
        print(
            f"\nListener scale: {args.grants} grants, {n_conn} IDLE connections (STARTTLS), "
            "one process"
        )
        for name, value, note in rows:
            print(f"  {name:<38} {value:>16}  ({note})")
    finally:
        for c in floor:
            c.close()
        if listener is not None and listener.poll() is None:
            listener.kill()
            listener.wait(10)
        log_file.close()
        dovecot.stop()
        redis_server.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')  # type: ignore[arg-type]
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
