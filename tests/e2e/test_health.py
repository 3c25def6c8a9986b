"""``imap-pipeline health ROLE`` against the roles started from their Procfile lines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from tests.support.processes import RoleProcess, pipeline_env, run_cli

pytestmark = pytest.mark.services

HEALTHY_TIMEOUT_S = 90  # four roles starting at once on a loaded 2-core machine
ROLES = ("sync", "webhooks", "beat", "listener")


def health(settings: Settings, role: str) -> tuple[int, str]:
    result = run_cli(settings, "health", role)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def roles(settings: Settings, tmp_path: Path) -> Iterator[dict[str, RoleProcess]]:
    env = pipeline_env(settings, IMAP_PIPELINE_SYNC_CONCURRENCY="1")
    started = {role: RoleProcess(role, env, tmp_path).start() for role in ROLES}
    yield started
    for process in started.values():
        process.stop()


def test_no_role_is_healthy_before_it_runs(settings: Settings) -> None:
    for role in ROLES:
        code, out = health(settings, role)
        assert code == 1, (role, out)
        assert f"FAIL {role}" in out, out


def test_every_role_is_healthy_while_it_runs_and_not_after_it_stopped(
    settings: Settings, roles: dict[str, RoleProcess]
) -> None:
    waiting = set(ROLES)
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    last: dict[str, str] = {}
    while waiting and time.monotonic() < deadline:
        for role in sorted(waiting):
            code, last[role] = health(settings, role)
            if code == 0:
                waiting.discard(role)
        time.sleep(0.5)
    logs = {r: roles[r].log()[-2000:] for r in waiting}
    assert not waiting, (last, logs)
    assert "ok   listener: heartbeat of" in last["listener"]

    roles["listener"].stop()  # a listener leaves its heartbeat behind only when it dies
    code, out = health(settings, "listener")
    assert code == 1, out
