"""Prometheus metrics scraped from real role processes after they did work."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import Settings
from pipeline.dev.mailgen import GeneratedMessage
from pipeline.dev.ports import free_port
from pipeline.dev.seed import seed_maildir
from tests.integration.api.api_support import Receiver
from tests.support.grants import connect
from tests.support.mail import append, make_message
from tests.support.processes import RoleProcess, pipeline_env
from tests.support.services import MailUser
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

WAIT_S = 120  # roles starting and a first sync on a loaded 2-core machine
MESSAGES = 25
SCRAPE_TIMEOUT_S = 10


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` on ``port``: (name, sorted labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(port: int, name: str, **labels: str) -> float | None:
    try:
        return scrape(port).get((name, tuple(sorted(labels.items()))))
    except httpx.HTTPError:
        return None  # not serving yet


@pytest.fixture
def ports() -> dict[str, int]:
    return {role: free_port() for role in ("sync", "beat", "api", "listener", "webhooks")}


@pytest.fixture
def roles(
    settings: Settings, tmp_path: Path, ports: dict[str, int]
) -> Iterator[dict[str, RoleProcess]]:
    started: dict[str, RoleProcess] = {}
    for role, port in ports.items():
        env = pipeline_env(
            settings,
            IMAP_PIPELINE_SYNC_CONCURRENCY="2",  # two pool processes: their counters add up
            IMAP_PIPELINE_METRICS_PORT=str(port),
            IMAP_PIPELINE_API_PORT=str(free_port()),
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics" / role),
            IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",  # the test's receiver
        )
        started[role] = RoleProcess(role, env, tmp_path).start()
    yield started
    for process in started.values():
        process.stop()


def test_roles_serve_what_they_did_on_their_metrics_port(
    settings: Settings,
    mail_user: MailUser,
    celery_client: None,
    roles: dict[str, RoleProcess],
    ports: dict[str, int],
) -> None:
    from workers import enqueue

    now = datetime.now(UTC).replace(microsecond=0)
    seed_maildir(
        mail_user.server.maildir(mail_user.name),
        (
            GeneratedMessage("INBOX", now - timedelta(minutes=i), (), make_message(f"m{i}"))
            for i in range(MESSAGES)
        ),
        owner=mail_user.server.mail_user,
    )
    grant_id = connect(settings, mail_user)
    enqueue.sync_grant(grant_id, "generic")

    sync = ports["sync"]
    generic = (("provider", "generic"),)
    wait_for(
        lambda: (
            (sample(sync, "imap_pipeline_messages_synced_total", provider="generic") or 0)
            >= MESSAGES
        ),
        f"{MESSAGES} messages counted on the sync worker's metrics port",
        timeout_s=WAIT_S,
    )
    metrics = scrape(sync)
    assert metrics[("imap_pipeline_messages_synced_total", generic)] == MESSAGES
    assert metrics[("imap_pipeline_logins_total", generic)] >= 1
    assert metrics[("imap_pipeline_sync_lag_seconds_count", generic)] >= 1

    # beat reads the backlog at scrape time: every queue, and the outbox
    beat = scrape_when_up(ports["beat"])
    queues = {dict(labels)["queue"] for name, labels in beat if name == "imap_pipeline_queue_depth"}
    assert {"sync.generic", "webhooks", "maintenance"} <= queues
    assert ("imap_pipeline_outbox_depth", (("kind", "deliveries"),)) in beat

    assert scrape_when_up(ports["api"]) is not None  # the API serves its port too

    # the listener holds an IDLE connection per watched folder (this mailbox: its Inbox)
    listener = ports["listener"]
    wait_for(
        lambda: sample(listener, "imap_pipeline_idle_connections", state="held") == 1,
        "the Inbox's IDLE connection held on the listener's metrics port",
        timeout_s=WAIT_S,
    )
    assert sample(listener, "imap_pipeline_idle_connections", state="waiting") == 0
    assert sample(listener, "imap_pipeline_logins_total", provider="generic") == 1

    # new mail reaches a webhook destination: the webhooks worker counts the delivery
    receiver = Receiver()
    try:
        added = subprocess.run(
            [sys.executable, "-m", "pipeline.cli",
             "webhooks", "add", receiver.url, "--triggers", "message.created"],
            env=pipeline_env(settings, IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8"),
            capture_output=True, text=True, timeout=SCRAPE_TIMEOUT_S * 6, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stdout + added.stderr
        append(mail_user.server, mail_user.name, mail_user.password, make_message("fresh"))
        hooks = ports["webhooks"]
        wait_for(
            lambda: (
                (sample(hooks, "imap_pipeline_webhook_deliveries_total", outcome="delivered") or 0)
                >= 1
            ),
            "a delivered webhook counted on the webhooks worker's metrics port",
            timeout_s=WAIT_S,
        )
        latency = scrape(hooks)[
            ("imap_pipeline_webhook_delivery_seconds_count", (("outcome", "delivered"),))
        ]
        assert latency >= 1
    finally:
        receiver.close()


def scrape_when_up(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def up() -> bool:
        nonlocal found
        try:
            found = scrape(port)
        except httpx.HTTPError:
            return False
        return True

    wait_for(up, f"metrics on port {port}", timeout_s=WAIT_S)
    return found
