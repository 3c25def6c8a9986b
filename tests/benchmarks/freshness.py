"""Freshness: APPEND to the Inbox -> signed webhook received, through the real live path.

    python tests/benchmarks/freshness.py [--messages 200]

Runs Dovecot, a Celery worker (as `up` runs it), an `imap-pipeline listen` process and a local
HTTP receiver. For each message it APPENDs, it measures the time until the receiver gets the
`message.created` notification, and, in the same run, the floor: the time until a bare IMAP
client idling on the same Inbox sees `* n EXISTS`. Prints p50/p99 of both and the difference.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from pipeline.config import Settings  # noqa: E402
from pipeline.crypto import SecretBox, generate_key  # noqa: E402
from pipeline.db import migrate, session_scope, sessionmaker_for  # noqa: E402
from pipeline.grants.schemas import GrantRequest  # noqa: E402
from pipeline.grants.service import create_grant  # noqa: E402
from pipeline.local import free_port  # noqa: E402
from pipeline.local.dovecot import LocalDovecot  # noqa: E402
from pipeline.local.redis import EmbeddedRedis  # noqa: E402
from pipeline.sync.runner import sync_grant_inline  # noqa: E402
from pipeline.webhooks.service import WebhookService  # noqa: E402
from pipeline.webhooks.settings import WebhookSettings  # noqa: E402
from tests.integration.webhooks.webhook_receiver import Receiver  # noqa: E402
from tests.support.mail import make_message  # noqa: E402
from tests.support.processes import CeleryWorker, pipeline_env  # noqa: E402

PG_ADMIN = os.environ.get("IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
WAIT_S = 30.0  # per message, for either side


class IdleFloor:
    """A bare IMAP client in IDLE on the Inbox, timing each ``* n EXISTS``."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.conn = imaplib.IMAP4("127.0.0.1", port, timeout=60)
        self.conn.login(user, password)
        self.conn.select("INBOX")
        self.arrivals: list[float] = []
        self.cond = threading.Condition()
        self.conn.send(b"f1 IDLE\r\n")
        self.conn.readline()  # "+ idling"
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                line = self.conn.readline()
            except (OSError, imaplib.IMAP4.abort):
                return
            if not line:
                return
            if line.rstrip().endswith(b"EXISTS"):
                with self.cond:
                    self.arrivals.append(time.monotonic())
                    self.cond.notify_all()

    def wait(self, count: int) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.arrivals) >= count, WAIT_S):
                raise TimeoutError("the bare IDLE client saw no EXISTS")
            return self.arrivals[count - 1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ipfresh-"))
    work.chmod(0o755)
    dbname = f"ipfresh_{uuid.uuid4().hex[:8]}"
    redis_server = EmbeddedRedis(work / "redis", free_port())
    redis_server.start()
    dovecot = LocalDovecot(work / "dovecot", free_port())
    dovecot.start()
    receiver = Receiver()
    receiver.start()
    procs: list[subprocess.Popen[bytes]] = []
    worker: CeleryWorker | None = None
    try:
        user, password = "fresh", uuid.uuid4().hex
        dovecot.add_user(user, password)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')  # type: ignore[arg-type]
        db_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname
        migrate(db_url)
        settings = Settings(
            database_url=db_url,
            redis_url=redis_server.url,
            encryption_keys=generate_key(),  # type: ignore[arg-type]
            data_dir=work / "data",
        )
        request = GrantRequest(
            email="fresh@example.test",
            password=password,  # type: ignore[arg-type]
            imap_host="127.0.0.1",
            imap_port=dovecot.port,
            imap_tls="plain",
            imap_username=user,
            allow_plaintext=True,
        )
        with session_scope(db_url) as db:
            grant_id = create_grant(db, settings, request).grant.id
        sync_grant_inline(sessionmaker_for(db_url), settings, grant_id)
        hooks = WebhookSettings(allow_private_destinations=True)
        with (
            WebhookService(hooks, SecretBox(settings.encryption_key_list)) as service,
            session_scope(db_url) as db,
        ):
            service.create(
                db, {"webhook_url": receiver.url("/hook"), "trigger_types": ["message.created"]}
            )
        env = pipeline_env(settings, IMAP_PIPELINE_WEBHOOK_ALLOW_PRIVATE_DESTINATIONS="true")
        env.update({k: v for k, v in os.environ.items() if k.startswith("IMAP_PIPELINE_LISTENER_")})
        worker = CeleryWorker(env, work, concurrency=4).start()
        with (work / "listener.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "pipeline.cli", "listen"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        time.sleep(4)  # the listener claims the grant and enters IDLE
        floor = IdleFloor(dovecot.port, user, password)
        appender = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=60)
        appender.login(user, password)
        pipeline_s: list[float] = []
        floor_s: list[float] = []
        for i in range(args.messages):
            subject = f"fresh {i} {uuid.uuid4().hex[:6]}"
            raw = make_message(subject)
            started = time.monotonic()
            appender.append("INBOX", None, imaplib.Time2Internaldate(datetime.now(UTC)), raw)
            floor_s.append(floor.wait(i + 1) - started)
            got = receiver.wait_for(
                lambda items, s=subject: any(
                    r.json()["data"]["object"].get("subject") == s for r in items
                ),
                WAIT_S,
            )
            arrived = next(
                r.at for r in got if r.json()["data"]["object"].get("subject") == subject
            )
            pipeline_s.append(arrived - started)
            time.sleep(0.05)
        appender.logout()
        p50, p99 = pct(pipeline_s, 0.5), pct(pipeline_s, 0.99)
        f50, f99 = pct(floor_s, 0.5), pct(floor_s, 0.99)
        print(f"{args.messages} messages, APPEND -> ...")
        print(f"floor     bare IDLE client sees EXISTS:  p50 {f50:.3f}s  p99 {f99:.3f}s")
        print(f"pipeline  signed webhook received:       p50 {p50:.3f}s  p99 {p99:.3f}s")
        print(
            f"over the floor: p50 +{p50 - f50:.3f}s, p99 +{p99 - f99:.3f}s; "
            f"mean {statistics.fmean(pipeline_s):.3f}s"
        )
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        if worker is not None:
            worker.stop()
        receiver.stop()
        dovecot.stop()
        redis_server.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
