"""kick() and enqueue_deliver(): coalesced enqueues, cleared by the task when it starts.

Redis logic only, on fakeredis; publishing is replaced by a recorder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import redis

from beat_schedule import BEAT_SCHEDULE
from pipeline.config import Settings
from pipeline.redis import WEBHOOK_KICK_KEY, webhook_deliver_at_key
from workers import webhook_queue

MAX_COUNTDOWN_S = 900.0


@dataclass
class Published:
    calls: list[tuple[str, list[str], float | None]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, task_name: str, args: list[str], *, countdown: float | None = None) -> None:
        if self.fail:
            raise redis.ConnectionError("broker down")
        self.calls.append((task_name, list(args), countdown))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[fakeredis.FakeRedis, Published]]:
    r = fakeredis.FakeRedis()
    published = Published()
    monkeypatch.setattr(webhook_queue, "_flags", (os.getpid(), r))
    monkeypatch.setattr(webhook_queue, "_publish", published)
    monkeypatch.setattr(webhook_queue, "_max_countdown_s", lambda: MAX_COUNTDOWN_S)
    yield r, published


def test_kicks_coalesce_until_the_dispatch_starts(fake: Any) -> None:
    r, published = fake
    for _ in range(100):
        webhook_queue.kick()
    assert published.calls == [("pipeline.webhooks.dispatch", [], None)]
    webhook_queue.clear_flag(WEBHOOK_KICK_KEY)  # what the dispatch task does first
    webhook_queue.kick()
    assert len(published.calls) == 2
    assert 0 < r.ttl(WEBHOOK_KICK_KEY) <= webhook_queue.FLAG_TTL_S


def test_kick_never_raises_and_leaves_no_flag_behind(fake: Any) -> None:
    r, published = fake
    published.fail = True
    webhook_queue.kick()
    assert r.get(WEBHOOK_KICK_KEY) is None
    published.fail = False
    webhook_queue.kick()
    assert len(published.calls) == 1


def test_kick_survives_redis_errors(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    r, published = fake

    def broken(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("redis down")

    monkeypatch.setattr(r, "set", broken)
    webhook_queue.kick()
    webhook_queue.enqueue_deliver("d-1")
    webhook_queue.schedule_deliver("d-1", 5.0)
    assert published.calls == []


def test_deliver_enqueues_coalesce_per_destination_and_carry_only_its_id(fake: Any) -> None:
    _, published = fake
    webhook_queue.enqueue_deliver("d-1")
    webhook_queue.enqueue_deliver("d-1")
    webhook_queue.enqueue_deliver("d-2")
    assert published.calls == [
        ("pipeline.webhooks.deliver", ["d-1"], None),
        ("pipeline.webhooks.deliver", ["d-2"], None),
    ]


def test_scheduled_drains_keep_the_soonest_and_cap_the_countdown(fake: Any) -> None:
    _, published = fake
    webhook_queue.schedule_deliver("d-1", 100.0)
    webhook_queue.schedule_deliver("d-1", 200.0)  # later than the one scheduled: skipped
    webhook_queue.schedule_deliver("d-1", 10.0)  # sooner: scheduled as well
    webhook_queue.schedule_deliver("d-2", 10_000.0)  # capped below the visibility timeout
    webhook_queue.schedule_deliver("d-3", 0.0)  # due now: enqueued at once
    assert [c[2] for c in published.calls] == [100.0, 10.0, MAX_COUNTDOWN_S, None]


def test_beat_entries_run_on_the_webhooks_queue_and_expire() -> None:
    entries = {k: v for k, v in BEAT_SCHEDULE.items() if k.startswith("webhooks-")}
    assert {e["task"] for e in entries.values()} == {
        "pipeline.webhooks.sweep",
        "pipeline.webhooks.purge",
    }
    for entry in entries.values():
        assert entry["options"]["queue"] == "webhooks"
        assert 0 < entry["options"]["expires"] <= entry["schedule"]


def test_a_drain_that_already_ran_does_not_block_the_next_schedule(fake: Any) -> None:
    r, published = fake
    webhook_queue.schedule_deliver("d-1", 5.0)
    r.set(webhook_deliver_at_key("d-1"), repr(0.0).encode())  # its time has passed
    webhook_queue.schedule_deliver("d-1", 5.0)  # e.g. from inside that very drain
    assert len(published.calls) == 2


def test_kick_without_redis_configured_only_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(webhook_queue, "_flags", None)
    monkeypatch.setattr(webhook_queue, "get_settings", lambda: Settings(redis_url=None))
    webhook_queue.kick()
    assert "IMAP_PIPELINE_REDIS_URL" in caplog.text


def test_a_forked_child_makes_its_own_client(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    r, _ = fake
    monkeypatch.setattr(webhook_queue, "_flags", (os.getpid() + 1, r))  # "inherited"
    monkeypatch.setattr(
        webhook_queue, "get_settings", lambda: Settings(redis_url="redis://127.0.0.1:1/0")
    )
    client = webhook_queue.flags()
    assert client is not r
    client.close()
