"""Three machines (network namespaces), each running a sync worker and a listener against one
Postgres, Redis and IMAP server: grants are spread over the listeners, and when one machine
goes down its grants are watched again within 30 s and the mail that arrived meanwhile is
synced, once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.dev.mailgen import GeneratedMessage
from pipeline.dev.seed import seed_maildir
from pipeline.models import Grant, Message
from tests.support import netns
from tests.support.mail import append, make_message
from tests.support.processes import RoleProcess, pipeline_env
from tests.support.services import MailUser
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

USERS = 6  # grants: two per machine when spread evenly
SEEDED = 3  # messages in each Inbox before the grants are added
TAKEOVER_S = 30.0  # what the README promises for a machine that goes down
SETTLE_S = 180.0  # three machines starting and syncing on a loaded 2-core machine
CLI_TIMEOUT_S = 120


def via(url: str, host: str) -> str:
    """``url`` with its host replaced by ``host`` (same port, user, database)."""
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{host}:{parts.port}"))


@pytest.fixture
def network() -> Iterator[netns.Network]:
    reason = netns.available()
    if reason:
        pytest.skip(reason)
    with netns.Network(machines=3) as net:
        yield net


def owners(r: redis.Redis[bytes], grant_ids: list[str]) -> dict[str, str]:
    """grant id -> the machine whose listener holds its lease (listener ids are host:pid:…)."""
    found = {}
    for grant_id in grant_ids:
        owner = r.get(f"imap-pipeline:lease:{grant_id}")
        if owner:
            found[grant_id] = owner.decode().split(":", 1)[0]
    return found


def stored(settings: Settings) -> dict[str, list[str]]:
    """grant id -> subjects of its stored messages."""
    with session_scope(settings.require_database_url()) as db:
        rows = db.execute(select(Message.grant_id, Message.subject)).all()
    out: dict[str, list[str]] = {}
    for grant_id, subject in rows:
        out.setdefault(grant_id, []).append(subject)
    return out


def test_grants_move_to_the_other_machines_when_one_goes_down_and_nothing_is_lost(
    settings: Settings,
    _mail_user_pool: Iterator[MailUser],
    network: netns.Network,
    tmp_path: Path,
) -> None:
    users = [next(_mail_user_pool) for _ in range(USERS)]
    now = datetime.now(UTC).replace(microsecond=0)
    for user in users:
        seed_maildir(
            user.server.maildir(user.name),
            (
                GeneratedMessage(
                    "INBOX", now - timedelta(minutes=i), (), make_message(f"{user.name} old {i}")
                )
                for i in range(SEEDED)
            ),
            owner=user.server.mail_user,
        )
    database_url, redis_url = settings.require_database_url(), settings.require_redis_url()
    dovecot = users[0].server
    network.forward(
        urlsplit(database_url).port or 5432, urlsplit(redis_url).port or 6379, dovecot.port
    )
    env = pipeline_env(
        settings,
        IMAP_PIPELINE_DATABASE_URL=via(database_url, netns.SVC_ADDRESS),
        IMAP_PIPELINE_REDIS_URL=via(redis_url, netns.SVC_ADDRESS),
        IMAP_PIPELINE_MAIL_ALLOWED_NETWORKS=f"{netns.SUBNET}.0/24",  # the IMAP server's network
        IMAP_PIPELINE_SYNC_CONCURRENCY="1",
    )
    machines: dict[str, list[RoleProcess]] = {}
    for machine in network.machines:
        wrap = network.machine_argv(machine, [])
        machines[machine] = [
            RoleProcess(role, env, tmp_path, wrap=wrap).start() for role in ("sync", "listener")
        ]
    try:
        grant_ids = []
        for user in users:  # added from the first machine, as an operator would
            added = subprocess.run(
                network.machine_argv(
                    network.machines[0],
                    [
                        sys.executable, "-m", "pipeline.cli", "grants", "add",
                        "--email", user.email,
                        "--host", netns.SVC_ADDRESS, "--port", str(dovecot.port),
                        "--tls", "plain", "--allow-plaintext",
                        "--username", user.name, "--password-stdin", "--json",
                    ],
                ),
                input=user.password + "\n",
                env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
            )  # fmt: skip
            assert added.returncode == 0, added.stdout + added.stderr
            grant_ids.append(json.loads(added.stdout)["id"])

        r = redis.Redis.from_url(redis_url, socket_timeout=5)

        def all_synced() -> bool:
            with session_scope(database_url) as db:
                done = db.scalar(
                    select(func.count()).select_from(Grant).where(Grant.sync_state == "synced")
                )
            return done == USERS

        wait_for(all_synced, "every grant's initial sync", timeout_s=SETTLE_S)

        def spread_over_all() -> bool:
            held = owners(r, grant_ids)
            return len(held) == USERS and len(set(held.values())) == len(network.machines)

        wait_for(spread_over_all, "every grant leased, on all 3 listeners", timeout_s=SETTLE_S)
        spread = owners(r, grant_ids)

        # machine 2 goes down: its link first (nothing it held is closed politely), then it dies
        victim = network.machines[1]
        short = victim.rsplit("-", 1)[1]
        orphaned = [g for g, machine in spread.items() if machine == short]
        assert orphaned
        netns._ip("-n", network.svc, "link", "set", "m2", "down")
        for process in machines[victim]:
            process.kill()
        went_down = time.monotonic()

        # mail arrives for its grants while nobody watches them
        by_grant = dict(zip(grant_ids, users, strict=True))
        for grant_id in orphaned:
            user = by_grant[grant_id]
            append(dovecot, user.name, user.password, make_message(f"{user.name} while down"))

        survivors = {m.rsplit("-", 1)[1] for m in network.machines if m != victim}
        wait_for(
            lambda: all(owners(r, orphaned).get(g) in survivors for g in orphaned),
            "the orphaned grants to be leased by the other machines",
            timeout_s=TAKEOVER_S * 3,
        )
        took_over = time.monotonic() - went_down
        print(f"grants of the machine that went down watched again after {took_over:.1f} s")
        assert took_over <= TAKEOVER_S

        def caught_up() -> bool:
            have = stored(settings)
            return all(f"{by_grant[g].name} while down" in have.get(g, []) for g in orphaned)

        wait_for(caught_up, "the mail that arrived while the machine was down", timeout_s=SETTLE_S)
        have = stored(settings)
        for grant_id, user in by_grant.items():
            expected = {f"{user.name} old {i}" for i in range(SEEDED)}
            if grant_id in orphaned:
                expected.add(f"{user.name} while down")
            subjects = have.get(grant_id, [])
            assert sorted(subjects) == sorted(expected), (user.name, subjects)  # once each
    finally:
        for processes in machines.values():
            for process in processes:
                process.stop()
