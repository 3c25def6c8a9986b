"""``imap-pipeline listen`` as operators run it: two processes, real Celery enqueues, a kill."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO

import pytest
import redis

from pipeline.config import Settings
from pipeline.redis import LISTENERS_KEY, conn_key, lease_key
from tests.integration.listener.listener_harness import WAIT_S, connect_grant
from tests.support.mail import append, make_message
from tests.support.services import MailUser
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

TAKEOVER_LIMIT_S = 30.0  # issue 3: a dead listener's grants are watched again within 30 s
STOP_TIMEOUT_S = 20.0
QUEUE = "sync.generic"  # the generic preset's Celery queue, a Redis list under kombu


def listener_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    assert settings.encryption_keys is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAP_PIPELINE_")}
    env.update(
        IMAP_PIPELINE_DATABASE_URL=settings.require_database_url(),
        IMAP_PIPELINE_REDIS_URL=settings.require_redis_url(),
        IMAP_PIPELINE_ENCRYPTION_KEYS=settings.encryption_keys.get_secret_value(),
        IMAP_PIPELINE_IMAP_CA_FILE=str(settings.imap.ca_file),
        IMAP_PIPELINE_DATA_DIR=str(tmp_path / "data"),
    )
    return env


@pytest.fixture
def start_listener(
    settings: Settings, tmp_path: Path
) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[BinaryIO] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("wb")
        logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "listen", "--id", name],
            env=listener_env(settings, tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[3],
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    for log in logs:
        log.close()


def owners(client: redis.Redis[bytes], grants: list[str]) -> dict[str, str | None]:
    values = client.mget([lease_key(g) for g in grants])
    return {g: v.decode() if v else None for g, v in zip(grants, values, strict=True)}


def slots_taken(client: redis.Redis[bytes], grant_id: str, n: int) -> bool:
    """Whether at least ``n`` connection slots of the grant are held."""
    return int(client.zcard(conn_key(grant_id))) >= n


def sync_requests(client: redis.Redis[bytes]) -> list[list[str]]:
    """Arguments of every ``pipeline.sync.folder`` message waiting in the broker."""
    out = []
    for raw in client.lrange(QUEUE, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "pipeline.sync.folder":
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            out.append(args)
    return out


def test_two_listener_processes_split_the_grants_and_survive_a_kill(
    settings: Settings,
    _mail_user_pool: Iterator[MailUser],
    start_listener: Callable[[str], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    start = start_listener
    users = [next(_mail_user_pool) for _ in range(4)]
    grants = [connect_grant(settings, u) for u in users]
    ids = [g for g, _, _ in grants]
    client: redis.Redis[bytes] = redis.Redis.from_url(
        settings.require_redis_url(), socket_timeout=5
    )
    first = start("P1")
    second = start("P2")

    def split() -> bool:
        held = list(owners(client, ids).values())
        return held.count("P1") == 2 and held.count("P2") == 2

    wait_for(split, "two grants per listener", timeout_s=40)
    # each grant's two connections belong to its lease owner, and to nobody else
    for grant_id, owner in owners(client, ids).items():
        wait_for(partial(slots_taken, client, grant_id, 2), "two connections", timeout_s=WAIT_S)
        holders = {m.decode() for m in client.zrange(conn_key(grant_id), 0, -1)}
        assert all(h.startswith(f"listener:{owner}:") for h in holders), holders

    # a new message becomes a sync request in the broker, where no worker runs yet
    grant_id, inbox, _ = grants[0]
    wait_for(
        lambda: len(sync_requests(client)) >= 1, "connect-time sync requests", timeout_s=WAIT_S
    )
    time.sleep(1.5)  # the connect-time events' debounce window passes
    before = sync_requests(client).count([grant_id, inbox])
    user = users[0]
    append(user.server, user.name, user.password, make_message("to the broker"))
    wait_for(
        lambda: sync_requests(client).count([grant_id, inbox]) > before,
        "a pipeline.sync.folder message for the Inbox",
        timeout_s=WAIT_S,
    )

    # P1 dies hard: no goodbye, its leases just stop being renewed
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    died = time.monotonic()
    wait_for(
        lambda: set(owners(client, ids).values()) == {"P2"},
        "P2 taking over every grant",
        timeout_s=TAKEOVER_LIMIT_S,
    )
    takeover_s = time.monotonic() - died
    assert takeover_s < TAKEOVER_LIMIT_S
    for grant_id in ids:
        wait_for(partial(slots_taken, client, grant_id, 2), "P2 connected", timeout_s=WAIT_S)

    # P2 stops cleanly: leases, slots and its heartbeat are given back
    second.send_signal(signal.SIGTERM)
    assert second.wait(STOP_TIMEOUT_S) == 0, (tmp_path / "P2.log").read_text()
    assert set(owners(client, ids).values()) == {None}
    assert client.zrange(LISTENERS_KEY, 0, -1) == [b"P1"] or client.zcard(LISTENERS_KEY) == 0
    # P2's slots are gone; P1's (killed) lapse on their own
    for grant_id in ids:
        left = [m.decode() for m in client.zrange(conn_key(grant_id), 0, -1)]
        assert not [h for h in left if h.startswith("listener:P2:")], left
    client.close()
