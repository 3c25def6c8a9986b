"""``imap-pipeline health ROLE`` against the roles started from their Procfile lines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from tests.support.processes import RoleProcess, pipeline_env, run_cli
from tests.support.waiting import wait_for

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
    last: dict[str, str] = {}

    def healthy() -> bool:
        for role in sorted(waiting):
            code, last[role] = health(settings, role)
            if code == 0:
                waiting.discard(role)
        return not waiting

    def unhealthy() -> str:
        return f"every role healthy: {(last, {r: roles[r].log()[-2000:] for r in waiting})}"

    wait_for(healthy, unhealthy, HEALTHY_TIMEOUT_S, interval_s=0.5)
    assert "ok   listener: heartbeat of" in last["listener"]

    roles["listener"].stop()  # a listener leaves its heartbeat behind only when it dies
    code, out = health(settings, "listener")
    assert code == 1, out
