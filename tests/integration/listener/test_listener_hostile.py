"""One listener process, hostile IMAP servers beside a normal grant (issue 9).

``imap-pipeline listen`` runs as operators run it. One grant is a real Dovecot account; the
others point at fake servers (``tests.support.fake_imap``, each in its own process) that flood
untagged responses while the listener idles, flood during EXAMINE, announce a 2 GiB literal,
send a line that never ends, trickle their greeting one byte every 5 s, or answer with malformed
lines. Seen before: one flooding grant grew the shared listener to 3.3 GB within the 60 s command
timeout, and again on every reconnect.

Asserted, as an operator would see it: the listener's memory stays bounded (``/proc/PID/status``:
its peak, VmHWM, against its resident size before the hostile grants came), every hostile grant
has a status that names what it did (``imap-pipeline limits show --grant``) and backs off with
a growing delay (the listener's log), and the normal grant is never disconnected and still turns
a new message into a sync request promptly.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from pipeline.config import Settings
from pipeline.crypto import SecretBox
from pipeline.db import session_scope
from pipeline.listener.leases import conn_key
from pipeline.models import Folder, Grant
from tests.integration.listener.listener_harness import connect_grant, wait_for
from tests.support.fake_imap import FakeImapProcess
from tests.support.mail import append, make_message
from tests.support.processes import pipeline_env, run_cli
from tests.support.services import MailUser

pytestmark = pytest.mark.services

QUEUE = "sync.generic"  # the generic preset's Celery queue, a Redis list under kombu
# The listener's deadlines, shortened so that a test sees several attempts; back-off from
# 0.5 s doubling to 8 s: attempts 1-4 of a flooding grant come within about 10 s.
LISTENER_ENV = {
    "IMAP_PIPELINE_LISTENER_PLAN_REFRESH_S": "1",
    "IMAP_PIPELINE_LISTENER_CONNECT_TIMEOUT_S": "4",
    "IMAP_PIPELINE_LISTENER_COMMAND_TIMEOUT_S": "8",
    "IMAP_PIPELINE_LISTENER_SESSION_TIMEOUT_S": "12",
    "IMAP_PIPELINE_LISTENER_BACKOFF_BASE_S": "0.5",
    "IMAP_PIPELINE_LISTENER_BACKOFF_MAX_S": "8",
}
# Whatever ten hostile connections send, the listener grows by less than this. Each holds at
# most ~0.7 MiB (protocol.py's bounds); the rest is headroom for the interpreter's allocator
# and code paths run for the first time. Before issue 9 one flood passed 1 GiB in seconds.
RSS_GROWTH_MAX_KIB = 48 * 1024
WAIT_S = 60.0  # generous: the machine is shared; conditions are polled, never slept on
EVENT_WAIT_S = 30.0  # APPEND -> sync request (about a second when idle)


@dataclass(frozen=True)
class Hostile:
    """One hostile server: how to start it and what its grant's status must say."""

    name: str
    args: tuple[str, ...]
    says: str  # a regular expression the connection's status error must match
    script: str = "normal"


HOSTILES = [
    # "+ idling" first: the listener is IDLE when the flood of EXISTS comes
    Hostile("idle-flood", ("--on", "IDLE=flood:+ idling\r\n* 1 EXISTS"), r"of IDLE \(a flood\)"),
    Hostile("examine-flood", ("--on", "EXAMINE=flood"), r"in answer to EXAMINE \(a flood\)"),
    Hostile("idle-literal", ("--on", "IDLE=literal:2147483648"), r"literal of 2,147,483,648"),
    Hostile("idle-endless-line", ("--on", "IDLE=endless-line"), r"line longer than 64 KiB"),
    Hostile("greeting-trickle", (), r"did not connect and greet within 4 s", "greeting-trickle"),
    Hostile("examine-malformed", ("--on", "EXAMINE=malformed"), r"Unexpected IMAP line"),
]


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident size) of a process, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def hostile_grant(settings: Settings, port: int, name: str) -> tuple[str, list[str]]:
    """A grant on a fake server, stored as ``grants add`` would (its login is not tried here:
    some fakes never let one finish); returns its id and folder ids."""
    sealed = SecretBox(settings.encryption_key_list).seal_json({"imap_password": "any"})
    with session_scope(settings.require_database_url()) as db:
        grant = Grant(
            email=f"{name}@hostile.test",
            provider="generic",
            imap_host="127.0.0.1",
            imap_port=port,
            imap_tls="plain",
            imap_username=name,
            verify_tls=False,
            secrets_sealed=sealed,
            grant_status="valid",
        )
        db.add(grant)
        db.flush()
        folders = [
            Folder(grant_id=grant.id, name="INBOX", raw_name="INBOX", role="inbox"),
            Folder(grant_id=grant.id, name="Sent", raw_name="Sent", role="sent"),
        ]
        db.add_all(folders)
        db.flush()
        return grant.id, [f.id for f in folders]


def listener_status(settings: Settings, grant_id: str) -> dict[str, dict[str, object]]:
    """What ``imap-pipeline limits show generic --grant G --json`` says about the listener."""
    done = run_cli(settings, "limits", "show", "generic", "--grant", grant_id, "--json")
    assert done.returncode == 0, done.stderr
    status: dict[str, dict[str, object]] = json.loads(done.stdout)["grant"]["listener"]
    return status


def sync_requests(client: redis.Redis[bytes], grant_id: str, folder_id: str) -> int:
    """``pipeline.sync.folder`` messages for one folder waiting in the broker."""
    count = 0
    for raw in client.lrange(QUEUE, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "pipeline.sync.folder":
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            count += args[:2] == [grant_id, folder_id]
    return count


@pytest.fixture
def hostile_servers() -> Iterator[list[FakeImapProcess]]:
    servers: list[FakeImapProcess] = []
    try:
        for hostile in HOSTILES:
            servers.append(FakeImapProcess(*hostile.args, script=hostile.script).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def listener(settings: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log_path = tmp_path / "listener.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "listen", "--id", "L-hostile"],
            env=pipeline_env(settings, **LISTENER_ENV),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[3],
        )
    try:
        yield proc, log_path
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_hostile_servers_cost_only_their_own_grants(
    settings: Settings,
    mail_user: MailUser,
    hostile_servers: list[FakeImapProcess],
    listener: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, log_path = listener
    client: redis.Redis[bytes] = redis.Redis.from_url(
        settings.require_redis_url(), socket_timeout=5
    )
    normal, inbox, _sent = connect_grant(settings, mail_user)

    def normal_idling() -> bool:
        status = listener_status(settings, normal)
        return len(status) == 2 and all(s["state"] == "idling" for s in status.values())

    wait_for(normal_idling, timeout_s=WAIT_S, what="the normal grant idling")
    watching_since = {f: s["at"] for f, s in listener_status(settings, normal).items()}
    before = memory_kib(proc.pid)["VmRSS"]

    hostile = {
        h.name: hostile_grant(settings, server.port, h.name)
        for h, server in zip(HOSTILES, hostile_servers, strict=True)
    }

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    def attempts(grant_id: str) -> list[int]:
        """The listener's reconnect attempts for a grant, from its warnings, in order."""
        pattern = rf"grant={grant_id} folder=\S+ disconnected.*\(attempt (\d+)\)"
        return [int(n) for n in re.findall(pattern, log_text())]

    # every hostile grant: disconnected, backed off with a growing delay, and a status that
    # says why, for both of its connections
    for h in HOSTILES:
        grant_id, folders = hostile[h.name]
        wait_for(
            lambda g=grant_id: max(attempts(g), default=0) >= 2,  # type: ignore[misc]
            timeout_s=WAIT_S,
            what=f"{h.name}: a second attempt after a back-off",
        )
        status = listener_status(settings, grant_id)
        assert set(status) == set(folders), (h.name, status)
        for entry in status.values():
            assert entry["state"] in ("backoff", "connecting", "waiting_slot"), (h.name, entry)
            assert re.search(h.says, str(entry["error"])), (h.name, entry)
        if h.name == "idle-flood":
            wait_for(
                lambda g=grant_id: max(attempts(g), default=0) >= 4,  # type: ignore[misc]
                timeout_s=WAIT_S,
                what="the flooding grant's fourth attempt",
            )
            delays = [
                float(d)
                for d in re.findall(
                    rf"grant={grant_id} folder={folders[0]} .*reconnecting in ([\d.]+) s",
                    log_text(),
                )
            ]
            # equal jitter: attempt n waits between 0.25 * 2**n and 0.5 * 2**n s (capped at 8):
            # the delay never falls back to the first attempt's (at most 0.5 s)
            assert all(d > 0.5 for d in delays[2:]), delays

    peak = memory_kib(proc.pid)["VmHWM"]
    growth = peak - before
    print(f"listener RSS before hostile grants {before} KiB, peak after {peak} KiB: +{growth} KiB")
    assert growth < RSS_GROWTH_MAX_KIB, f"the listener grew by {growth} KiB"

    # the normal grant was never disconnected, and its mail still becomes a sync request
    assert client.zcard(conn_key(normal)) == 2
    status = listener_status(settings, normal)
    assert {f: s["at"] for f, s in status.items()} == watching_since, status
    requests = sync_requests(client, normal, inbox)
    appended = time.monotonic()
    append(mail_user.server, mail_user.name, mail_user.password, make_message("beside hostiles"))
    wait_for(
        lambda: sync_requests(client, normal, inbox) > requests,
        timeout_s=EVENT_WAIT_S,
        what="the normal grant's Inbox change as a sync request",
    )
    print(f"APPEND -> sync request of the normal grant: {time.monotonic() - appended:.2f} s")
    assert proc.poll() is None, log_text()[-3000:]
    client.close()
