"""Exactly one scheduler: two ``celery beat`` processes against one Redis, one standby."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from beat_schedule import BEAT_LOCK_TIMEOUT_S, BEAT_MAX_LOOP_S
from pipeline.config import Settings
from tests.support.processes import pipeline_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

TICK_S = 2.0
TEST_QUEUE = "beat-test"
OBSERVE_S = 16.0
START_TIMEOUT_S = 30.0
TAKEOVER_LIMIT_S = 60.0  # the issue: a standby takes over within a minute

# The production app with the production redbeat settings; only the schedule is a fast tick.
APP_MODULE = f'''
from beat_schedule import beat_settings
from workers.app import app

app.conf.update(beat_settings(app.conf.broker_url))
app.conf.beat_schedule = {{
    "tick": {{"task": "imap_pipeline.test.tick", "schedule": {TICK_S},
              "options": {{"queue": "{TEST_QUEUE}"}}}},
}}
'''


class Beat:
    """``celery beat`` in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], folder: Path, name: str) -> None:
        self.log_path = folder / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "beatapp", "beat", "-l", "info",
                    "-s", str(folder / f"{name}.schedule"), "--pidfile", "",
                ],
                env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sent(self) -> int:
        return self.log().count("Sending due task tick")

    def wait_for(self, text: str, timeout_s: float) -> float:
        """Wait until its log shows ``text``; returns the seconds it took."""

        def logged() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"beat exited:\n{self.log()[-3000:]}")
            return text in self.log()

        return wait_for(logged, lambda: f"{text!r}:\n{self.log()[-3000:]}", timeout_s)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


@pytest.fixture
def beat_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "beatapp.py").write_text(APP_MODULE)
    repo = str(Path(__file__).resolve().parents[3])
    return pipeline_env(settings, PYTHONPATH=os.pathsep.join([str(tmp_path), repo]))


@pytest.fixture
def beats(beat_env: dict[str, str], tmp_path: Path) -> Iterator[list[Beat]]:
    started: list[Beat] = []
    yield started
    for beat in started:
        beat.stop(signal.SIGKILL)


def test_two_beats_send_each_job_once_and_the_standby_takes_over(
    beat_env: dict[str, str], tmp_path: Path, beats: list[Beat], redis_url: str
) -> None:
    queue = redis.Redis.from_url(redis_url, socket_timeout=5)
    first = Beat(beat_env, tmp_path, "first")
    beats.append(first)
    first.wait_for("Acquired lock", START_TIMEOUT_S)
    second = Beat(beat_env, tmp_path, "second")
    beats.append(second)
    second.wait_for("beat: Starting", START_TIMEOUT_S)

    before = int(queue.llen(TEST_QUEUE))
    time.sleep(OBSERVE_S)  # a fixed window: count what the beats send in it
    sent = int(queue.llen(TEST_QUEUE)) - before
    expected = OBSERVE_S / TICK_S
    # one beat sends once per tick; two would send about twice as many
    assert expected - 2 <= sent <= expected + 1, (sent, expected)
    assert second.sent() == 0
    assert "Acquired lock" not in second.log()

    first.stop(signal.SIGKILL)  # a crash: the lock is not released, it has to lapse
    took = second.wait_for("Acquired lock", TAKEOVER_LIMIT_S)
    assert took <= BEAT_LOCK_TIMEOUT_S + 2 * BEAT_MAX_LOOP_S
    second.wait_for("Sending due task tick", 2 * TICK_S + BEAT_MAX_LOOP_S)
