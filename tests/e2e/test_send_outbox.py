"""Sending through the workers, with real processes (issue 12 item 4): the API process
(``imap-pipeline api``), a Celery worker (``celery -A workers worker``, killed with SIGKILL
where a crash is the point) and beat, Dovecot, and an aiosmtpd server with STARTTLS and AUTH
that counts its logins. Driven with the official SDK.

- a worker killed after the SMTP server took the message, before its answer was recorded:
  the message is never sent again (one email), and the send says it is unconfirmed;
- a worker killed before the data went: the send is taken again and goes out once;
- a burst of 100 sends to one grant: all answered 200 (no 429), over a handful of logins;
- a scheduled send survives a worker restart and goes out when due, once.
"""

from __future__ import annotations

import email
import email.policy
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nylas import Client
from nylas.models.errors import NylasApiError

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.dev.ports import free_port
from tests.integration.api.api_support import SmtpServer
from tests.support.mail import create_folder
from tests.support.processes import CeleryWorker, RoleProcess, pipeline_env
from tests.support.services import MailUser, TlsFiles
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

API_KEY = "e2e-send-key-0123456789"
START_TIMEOUT_S = 60
LEASE_S = 6  # IMAP_PIPELINE_OUTBOX_LEASE_S: a dead worker's sends are free after this
SWEEP_S = 1  # IMAP_PIPELINE_OUTBOX_SWEEP_INTERVAL_S
SETTLE_TIMEOUT_S = 60


@dataclass
class Stack:
    """The API, a worker and beat as processes, and the SMTP server they send to."""

    url: str
    env: dict[str, str]
    log_dir: Path
    worker: CeleryWorker
    settings: Settings

    def nylas(self, timeout: int = 180) -> Client:
        return Client(API_KEY, api_uri=self.url, timeout=timeout)

    def restart_worker(self) -> None:
        self.worker = CeleryWorker(self.env, self.log_dir, concurrency=2).start()


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    env = pipeline_env(
        settings,
        IMAP_PIPELINE_API_KEYS=API_KEY,
        IMAP_PIPELINE_API_PORT=str(port),
        IMAP_PIPELINE_MAIL_ALLOWED_NETWORKS="127.0.0.0/8",  # Dovecot and aiosmtpd are local
        IMAP_PIPELINE_OUTBOX_LEASE_S=str(LEASE_S),
        IMAP_PIPELINE_OUTBOX_SWEEP_INTERVAL_S=str(SWEEP_S),
        # the machine running the tests is shared and may be slow: an answer comes by then
        IMAP_PIPELINE_SEND_WAIT_S="120",
    )
    api = RoleProcess("api", env, tmp_path).start()
    beat = RoleProcess("beat", env, tmp_path).start()
    worker = CeleryWorker(env, tmp_path, concurrency=2)
    try:
        worker.start()
        url = f"http://127.0.0.1:{port}"
        api.wait_healthy(url, START_TIMEOUT_S)
        running = Stack(url=url, env=env, log_dir=tmp_path, worker=worker, settings=settings)
        yield running
    finally:
        running_worker = locals().get("running")
        (running_worker.worker if running_worker else worker).stop()
        beat.stop()
        api.stop()


def connect(stack: Stack, user: MailUser, smtp: SmtpServer) -> str:
    """A grant through the API process; waits until the worker synced its folders."""
    create_folder(user.server, user.name, user.password, "Sent")
    body = {
        "provider": "imap",
        "settings": {
            "imap_username": user.name,
            "imap_password": user.password,
            "imap_host": "127.0.0.1",
            "imap_port": user.server.port,
            "email": user.email,
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_tls": "starttls",
            "smtp_username": user.name,
            "smtp_password": user.password,
        },
    }
    response = httpx.post(
        f"{stack.url}/v3/connect/custom",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    grant_id = str(response.json()["data"]["id"])
    wait_for(
        lambda: "Sent" in {f.name for f in stack.nylas().folders.list(grant_id).data},
        lambda: f"the Sent folder:\n{stack.worker.log()[-3000:]}",
        SETTLE_TIMEOUT_S,
        interval_s=0.3,
    )
    return grant_id


def outbox_rows(settings: Settings) -> list[dict[str, Any]]:
    from sqlalchemy import text

    with session_scope(settings.require_database_url()) as db:
        rows = db.execute(
            text("SELECT state, error, attempts FROM send_outbox ORDER BY created_at")
        )
        return [dict(r._mapping) for r in rows]


@pytest.fixture
def make_smtp(tls_files: TlsFiles, mail_user: MailUser) -> Iterator[Any]:
    servers: list[SmtpServer] = []

    def make(**options: Any) -> SmtpServer:
        server = SmtpServer(
            str(tls_files.cert_file),
            str(tls_files.key_file),
            mail_user.name,
            mail_user.password,
            **options,
        )
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_a_worker_killed_after_the_server_took_the_message_never_sends_it_again(
    make_smtp: Any, stack: Stack, mail_user: MailUser
) -> None:
    smtp = make_smtp(data_delay_s=12)  # keeps the message, answers 12 s later
    grant_id = connect(stack, mail_user, smtp)
    key = {"headers": {"Idempotency-Key": "crash-after-data"}}
    body = {"to": [{"email": "bob@example.test"}], "subject": "Exactly once", "body": "x"}
    outcome: list[Any] = []

    def send() -> None:
        try:
            outcome.append(stack.nylas().messages.send(grant_id, dict(body), overrides=key))  # type: ignore[arg-type]
        except NylasApiError as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    wait_for(
        lambda: len(smtp.messages) == 1,
        "the server to get the message",
        timeout_s=SETTLE_TIMEOUT_S,
    )
    stack.worker.kill()  # before the server's 250 came back
    stack.restart_worker()
    sender.join(timeout=SETTLE_TIMEOUT_S + 30)
    (answer,) = outcome
    assert isinstance(answer, NylasApiError), answer
    assert answer.status_code == 504 and "not sent again" in answer.args[0]
    (row,) = outbox_rows(stack.settings)
    assert row["state"] == "failed" and row["error"]["unconfirmed"] is True
    # the same key answers the same, and nothing is sent again, however long we wait
    with pytest.raises(NylasApiError) as repeated:
        stack.nylas().messages.send(grant_id, dict(body), overrides=key)  # type: ignore[arg-type]
    assert repeated.value.status_code == 504
    time.sleep(LEASE_S + 3 * SWEEP_S)  # time for a resend, which must not come
    assert len(smtp.messages) == 1


def test_a_worker_killed_before_the_data_sends_it_once_after_the_restart(
    make_smtp: Any, stack: Stack, mail_user: MailUser
) -> None:
    smtp = make_smtp(first_rcpt_delay_s=12)  # the first RCPT TO hangs; the worker dies there
    grant_id = connect(stack, mail_user, smtp)
    outcome: list[Any] = []

    def send() -> None:
        outcome.append(
            stack.nylas()
            .messages.send(
                grant_id,
                {"to": [{"email": "bob@example.test"}], "subject": "Once more", "body": "y"},
            )
            .data
        )

    sender = threading.Thread(target=send)
    sender.start()
    wait_for(lambda: smtp.logins == 1, "the worker to log in", timeout_s=SETTLE_TIMEOUT_S)
    wait_for(lambda: smtp.delaying, "the worker to be held in RCPT TO", SETTLE_TIMEOUT_S)
    stack.worker.kill()
    assert smtp.messages == []
    stack.restart_worker()
    sender.join(timeout=SETTLE_TIMEOUT_S + 30)
    (sent,) = outcome
    assert sent.id and sent.subject == "Once more"
    assert len(smtp.messages) == 1
    (row,) = outbox_rows(stack.settings)
    assert row["state"] == "sent" and row["attempts"] == 2


def test_a_burst_of_100_sends_all_go_out_over_a_few_logins(
    make_smtp: Any, stack: Stack, mail_user: MailUser
) -> None:
    smtp = make_smtp()
    grant_id = connect(stack, mail_user, smtp)
    client = stack.nylas(timeout=180)

    def send(i: int) -> str:
        message = client.messages.send(
            grant_id,
            {"to": [{"email": f"r{i}@example.test"}], "subject": f"burst {i}", "body": "b"},
        ).data
        assert message.id
        return str(message.id)

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(send, range(100)))  # a 429 or any error raises here
    assert len(set(ids)) == 100
    subjects = sorted(
        str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])
        for _, _, raw in smtp.messages
    )
    assert subjects == sorted(f"burst {i}" for i in range(100))
    assert smtp.logins <= 10, smtp.logins  # one per connection, at most 2 at once


def test_a_scheduled_send_survives_a_worker_restart_and_goes_when_due(
    make_smtp: Any, stack: Stack, mail_user: MailUser
) -> None:
    smtp = make_smtp()
    grant_id = connect(stack, mail_user, smtp)
    client = stack.nylas()
    send_at = int(time.time()) + 6
    scheduled = client.messages.send(
        grant_id,
        {"to": [{"email": "bob@example.test"}], "subject": "Later", "send_at": send_at},
    ).data
    assert scheduled.schedule_id
    stack.worker.kill()  # it held the countdown task; Redis keeps it for 30 minutes
    time.sleep(max(0.0, send_at - time.time()) + 1)  # past due, with no worker to send it
    assert smtp.messages == []
    stack.restart_worker()
    wait_for(
        lambda: len(smtp.messages) == 1, "the scheduled send to go", timeout_s=SETTLE_TIMEOUT_S
    )
    assert time.time() >= send_at
    found = client.messages.find_scheduled_message(grant_id, scheduled.schedule_id).data
    wait_for(
        lambda: (
            client.messages.find_scheduled_message(grant_id, scheduled.schedule_id).data.status.code
            == "success"
        ),
        "the schedule to read success",
        timeout_s=SETTLE_TIMEOUT_S,
    )
    assert found.schedule_id == scheduled.schedule_id
    time.sleep(3 * SWEEP_S)  # time for a second send, which must not come
    assert len(smtp.messages) == 1
