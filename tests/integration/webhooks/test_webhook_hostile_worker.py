"""Hostile receivers against a real ``celery worker -Q webhooks`` with 2 processes (production's
default on 2 cores), Redis, Postgres, and a healthy receiver beside them.

Seen before: a receiver trickling its response headers one byte every 5 s kept a delivery task
alive until Celery's 600 s soft limit, and two of them stalled the 2-process worker: a healthy
destination got its event after 555 s instead of 0.8 s.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from hostile_receiver import HostileReceiver
from sqlalchemy.orm import Session
from webhook_receiver import Receiver
from webhook_worker_env import TEST_WEBHOOK_ENV, WorkerEnv, worker_env

from pipeline.config import Settings
from pipeline.crypto import SecretBox
from pipeline.db import session_scope
from pipeline.webhooks import outbox, repository
from pipeline.webhooks.service import WebhookService
from tests.support.waiting import wait_for
from workers import webhook_queue

pytestmark = pytest.mark.services

Uow = functools.partial[AbstractContextManager[Session]]
GRANT = str(uuid.uuid4())
TRIGGERS = ["message.created"]
WORKER_PROCESSES = 2
TRICKLING = 10
EVENTS = 6
EVENT_SPACING_S = 2.0  # events keep coming while the trickling attempts are in flight
PROMPT_S = 10.0  # generous: unloaded, the healthy destination gets an event in well under 1 s
DEADLINE_S = float(TEST_WEBHOOK_ENV["IMAP_PIPELINE_WEBHOOK_REQUEST_TIMEOUT_S"])
SLACK_S = 5.0  # what a loaded machine may add to a deadline
# Peak RSS a worker process may gain while receivers answer with gigabytes (a gzip bomb and a
# plain endless body): one network read and the slice kept, plus room for allocator noise.
RSS_GROWTH_BOUND_BYTES = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def celery_worker(
    pg_template: str, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerEnv]:
    """This module's worker: 2 processes, as ``imap-pipeline up`` runs it on 2 cores."""
    with worker_env(
        pg_template, redis_server, tmp_path_factory, concurrency=WORKER_PROCESSES
    ) as worker:
        yield worker


@pytest.fixture
def wuow(worker: WorkerEnv) -> Uow:
    """Unit of work on the worker's database."""
    return functools.partial(session_scope, worker.database_url)


@pytest.fixture
def wservice(worker: WorkerEnv) -> Iterator[WebhookService]:
    """The service with the worker's settings and encryption key."""
    with WebhookService(Settings.load().webhooks, SecretBox([worker.encryption_key])) as service:
        yield service


@pytest.fixture
def hostile() -> Iterator[HostileReceiver]:
    """Trickles one byte a second for up to two minutes per connection."""
    with HostileReceiver(interval_s=1.0, trickle_for_s=120.0) as r:
        yield r


def _create(uow: Uow, service: WebhookService, url: str) -> str:
    with uow() as s:
        return service.create(s, {"webhook_url": url, "trigger_types": TRIGGERS}).id


def _emit(uow: Uow, subject: str) -> float:
    with uow() as s:
        outbox.emit(
            s, grant_id=GRANT, type="message.created", obj={"id": subject}, subject_id=subject
        )
    t0 = time.monotonic()
    webhook_queue.kick()  # after the commit, as writers do
    return t0


def _attempts(uow: Uow, dest: str) -> list[tuple[int, str | None, int]]:
    """(attempt number, error class, latency ms) of every attempt to ``dest``."""
    out = []
    with uow() as s:
        for d in repository.deliveries_for(s, dest):
            for a in repository.attempts_for(s, d.delivery_id):
                out.append((a.attempt, a.error_class, a.latency_ms))
    return out


def test_trickling_destinations_do_not_delay_a_healthy_one(
    wuow: Uow, wservice: WebhookService, receiver: Receiver, hostile: HostileReceiver
) -> None:
    trickling = [
        _create(wuow, wservice, hostile.route(f"/t{i}", "trickle_headers"))
        for i in range(TRICKLING)
    ]
    healthy = _create(wuow, wservice, receiver.url("/hook"))

    latencies: list[float] = []
    trickling_at_arrival: list[int] = []
    for n in range(EVENTS):
        t0 = _emit(wuow, f"m{n}")
        got = receiver.wait_accepted("/hook", n + 1, timeout_s=120)
        trickling_at_arrival.append(hostile.active())
        latencies.append(got[-1].at - t0)
        while time.monotonic() < t0 + EVENT_SPACING_S:  # pace the next event
            time.sleep(0.05)

    assert max(latencies) < PROMPT_S, f"healthy destination latencies: {latencies}"
    # ... and that while every trickling destination had a request trickling at once.
    assert max(trickling_at_arrival) >= TRICKLING, trickling_at_arrival
    with wuow() as s:
        assert {d.state for d in repository.deliveries_for(s, healthy)} == {"delivered"}

    # The trickling destinations fail by their deadline, say why, and are retried later.
    wait_for(
        lambda: all(max((a for a, _, _ in _attempts(wuow, d)), default=0) >= 2 for d in trickling),
        "the trickling destinations to be retried",
        timeout_s=60,
        interval_s=0.2,
    )
    for dest in trickling:
        attempts = _attempts(wuow, dest)
        assert {error for _, error, _ in attempts} == {"DeadlineExceeded"}
        assert max(ms for _, _, ms in attempts) < (DEADLINE_S + SLACK_S) * 1000
        with wuow() as s:
            view = wservice.get(s, dest)
        assert view.status == "failing"
        assert (view.failure_reason or "").startswith("DeadlineExceeded")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_worker_memory_stays_bounded_while_receivers_answer_with_gigabytes(
    worker: WorkerEnv,
    wuow: Uow,
    wservice: WebhookService,
    receiver: Receiver,
    hostile: HostileReceiver,
) -> None:
    healthy = _create(wuow, wservice, receiver.url("/hook"))
    for n in range(4):  # warm both processes up (imports, HTTP client, pools)
        _emit(wuow, f"warm{n}")
    receiver.wait_accepted("/hook", 4, timeout_s=30)
    children = _children(worker.pid)
    assert len(children) == WORKER_PROCESSES
    rss_before = {pid: _status_kib(pid, "VmRSS") * 1024 for pid in children}

    bomb = _create(wuow, wservice, hostile.route("/bomb", "gzip_bomb"))
    huge = _create(wuow, wservice, hostile.route("/huge", "huge_body"))
    for n in range(6):
        _emit(wuow, f"big{n}")
    states: set[str] = set()

    def delivered() -> bool:
        nonlocal states
        with wuow() as s:
            states = {
                d.state
                for dest in (bomb, huge, healthy)
                for d in repository.deliveries_for(s, dest)
            }
        return states == {"delivered"}

    wait_for(delivered, lambda: f"every delivery delivered, still {states}", timeout_s=60)

    growth = {
        pid: _status_kib(pid, "VmHWM") * 1024 - rss_before[pid] for pid in _children(worker.pid)
    }
    assert max(growth.values()) < RSS_GROWTH_BOUND_BYTES, {
        pid: f"{g / 2**20:.1f} MiB" for pid, g in growth.items()
    }
    # What crossed the wire is what fits in socket buffers, not the gigabytes on offer.
    assert hostile.bytes_sent("/huge") < 6 * 64 * 1024 * 1024
    assert hostile.bytes_sent("/bomb") < 6 * 64 * 1024 * 1024
