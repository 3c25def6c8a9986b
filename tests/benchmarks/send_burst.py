"""A burst of sends to one grant through the API and the workers, next to raw smtplib.

    python tests/benchmarks/send_burst.py [--count 100] [--clients 20] [--workers 2]

Starts its own Postgres database (on ``IMAP_PIPELINE_TEST_PG``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), Redis, Dovecot, an aiosmtpd server with
STARTTLS and AUTH (it counts logins), the API process (``imap-pipeline api``) and a Celery
worker (``--workers`` processes). Connects one grant through ``/v3/connect/custom``, then sends
``--count`` messages to it from ``--clients`` threads with the official SDK and reports:

- the time until every send was answered (each answer comes after the SMTP server took the
  message and the copy was filed in Sent), the answers by status (a 429 would show here; a
  200 whose message id is null is counted apart), and the SMTP logins the workers used;
- the baseline, in the same run against the same SMTP server: the same number of messages
  over one smtplib connection (one STARTTLS, one AUTH, then ``send_message`` in a loop, no
  Sent copy), and the ratio of the two times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import ssl
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from nylas import Client  # noqa: E402
from nylas.models.errors import NylasApiError  # noqa: E402

from pipeline.config import ImapSettings, Settings  # noqa: E402
from pipeline.crypto import generate_key  # noqa: E402
from pipeline.db import migrate  # noqa: E402
from pipeline.dev.dovecot import LocalDovecot  # noqa: E402
from pipeline.dev.ports import free_port  # noqa: E402
from pipeline.dev.redis import EmbeddedRedis  # noqa: E402
from tests.integration.api.api_support import SmtpServer  # noqa: E402
from tests.support.mail import create_folder  # noqa: E402
from tests.support.processes import CeleryWorker, RoleProcess, pipeline_env  # noqa: E402
from tests.support.services import TlsFiles  # noqa: E402

ADMIN_URL = os.environ.get("IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
API_KEY = "bench-send-key-0123456789"
START_TIMEOUT_S = 60


def _admin(sql: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _message(sender: str, i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = f"r{i}@example.test"
    msg["Subject"] = f"baseline {i}"
    msg.set_content("b")
    return msg


def baseline(smtp: SmtpServer, ca_file: Path, user: str, password: str, count: int) -> float:
    """Seconds for ``count`` messages over one smtplib connection."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", smtp.port, timeout=60) as client:
        client.starttls(context=ctx)
        client.login(user, password)
        for i in range(count):
            client.send_message(_message(f"{user}@example.test", i))
    return time.perf_counter() - started


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--clients", type=int, default=20, help="threads sending at once")
    parser.add_argument("--workers", type=int, default=2, help="celery worker processes")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="send-bench-"))
    dbname = f"bench_send_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{dbname}"')
    database_url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{dbname}"
    redis_server = EmbeddedRedis(folder / "redis", free_port())
    redis_server.start()
    tls = TlsFiles(folder)
    dovecot = LocalDovecot(
        folder / "dovecot", free_port(), tls_cert=tls.cert_file, tls_key=tls.key_file
    )
    dovecot.start()
    user, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    dovecot.add_user(user, password)
    time.sleep(1.1)  # Dovecot re-reads its passwd-file at most once a second
    smtp = SmtpServer(str(tls.cert_file), str(tls.key_file), user, password)
    settings = Settings(
        database_url=database_url,
        redis_url=redis_server.url,
        encryption_keys=generate_key(),  # type: ignore[arg-type]
        imap=ImapSettings(ca_file=tls.ca_file),
        data_dir=folder / "data",
    )
    port = free_port()
    env = pipeline_env(
        settings,
        IMAP_PIPELINE_API_KEYS=API_KEY,
        IMAP_PIPELINE_API_PORT=str(port),
        IMAP_PIPELINE_MAIL_ALLOWED_NETWORKS="127.0.0.0/8",
        IMAP_PIPELINE_SEND_WAIT_S="300",
    )
    api = RoleProcess("api", env, folder)
    worker = CeleryWorker(env, folder, concurrency=args.workers)
    try:
        migrate(database_url)
        create_folder(dovecot, user, password, "Sent")
        api.start()
        worker.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the API did not start:\n{api.log()[-3000:]}")
            time.sleep(0.2)
        client = Client(API_KEY, api_uri=url, timeout=300)
        connected = httpx.post(
            f"{url}/v3/connect/custom",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
            json={
                "provider": "imap",
                "settings": {
                    "imap_username": user,
                    "imap_password": password,
                    "imap_host": "127.0.0.1",
                    "imap_port": dovecot.port,
                    "email": f"{user}@example.test",
                    "smtp_host": "127.0.0.1",
                    "smtp_port": smtp.port,
                    "smtp_tls": "starttls",
                    "smtp_username": user,
                    "smtp_password": password,
                },
            },
        )
        connected.raise_for_status()
        grant_id = connected.json()["data"]["id"]
        while "Sent" not in {f.name for f in client.folders.list(grant_id).data}:
            if time.monotonic() > deadline + START_TIMEOUT_S:
                raise SystemExit("the grant's folders were never synced")
            time.sleep(0.3)

        def send(i: int) -> str:
            try:
                sent = client.messages.send(
                    grant_id,
                    {"to": [{"email": f"r{i}@example.test"}], "subject": f"burst {i}", "body": "b"},
                )
                # the answer carries the id of the copy filed in Sent (issue 12: never null)
                return "200" if sent.data.id else "200 with id null"
            except NylasApiError as exc:
                return str(exc.status_code)

        logins_before = smtp.logins
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            answers = Counter(pool.map(send, range(args.count)))
        pipeline_s = time.perf_counter() - started
        logins = smtp.logins - logins_before
        raw_s = baseline(smtp, tls.ca_file, user, password, args.count)
        print(f"burst of {args.count} sends to one grant, {args.clients} clients at once")
        print(f"  pipeline (API + {args.workers} worker processes): {pipeline_s:.2f} s until all")
        print(f"    answered, {args.count / pipeline_s:.1f} sends/s; answers {dict(answers)}")
        print(f"    SMTP logins used: {logins} (the old inline send: one per send)")
        print(f"  baseline (smtplib, one connection, no Sent copy): {raw_s:.2f} s")
        print(f"  ratio pipeline/baseline: {pipeline_s / raw_s:.1f}x")
        return 0 if answers == Counter({"200": args.count}) else 1
    finally:
        worker.stop()
        api.stop()
        smtp.close()
        dovecot.stop()
        redis_server.stop()
        _admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        shutil.rmtree(folder, ignore_errors=True)  # Dovecot's mail, Redis, logs


if __name__ == "__main__":
    sys.exit(main())
