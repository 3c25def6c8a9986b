"""The numbers and rules of the periodic jobs and the rate limiter, without services."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest

import beat_schedule
from pipeline.config import BeatSettings, Settings, reset_settings
from pipeline.limits import RateLimiter, capacity, default_limits, scope_of
from pipeline.maintenance.purge import PURGE_BUDGET_S
from pipeline.maintenance.sweep import (
    STOPPED_RETRY_MAX_S,
    STOPPED_RETRY_S,
    UIDVALIDITY_STOP_AFTER,
    retry_delay_s,
    sweep_offset,
)
from pipeline.presets import preset


@pytest.fixture
def visibility_timeout_s(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The broker's visibility timeout, read from the Celery configuration."""
    monkeypatch.setenv("IMAP_PIPELINE_REDIS_URL", "redis://127.0.0.1:1/0")
    reset_settings()  # an app configured first in this test has a broker URL
    from workers.celeryconfig import celery_config

    conf = celery_config(Settings(redis_url="redis://127.0.0.1:1/0"))
    yield conf["broker_transport_options"]["visibility_timeout"]
    reset_settings()


@pytest.mark.usefixtures("visibility_timeout_s")  # the app reads its configuration
def test_every_scheduled_job_is_a_registered_task_with_a_queue() -> None:
    import workers.tasks.beat  # registers the tasks
    import workers.tasks.send  # registers the tasks
    import workers.tasks.webhooks  # registers the tasks
    from workers.app import app

    assert workers.tasks.beat.purge_task.name in app.tasks
    assert beat_schedule.BEAT_SCHEDULE
    for name, entry in beat_schedule.BEAT_SCHEDULE.items():
        assert entry["task"] in app.tasks, name
        assert entry["options"]["queue"] in (beat_schedule.MAINTENANCE_QUEUE, "webhooks", "send")
        # a missed run is dropped rather than replayed late; no entry carries a countdown, which
        # past the broker's visibility timeout would have Redis hand the message out twice
        assert entry["options"]["expires"] == entry["schedule"]
        assert "countdown" not in entry["options"] and "eta" not in entry["options"]
    assert beat_schedule.BEAT_SCHEDULE["uidvalidity-sweep"]["schedule"] == 5 * 60


def test_folder_discovery_is_scheduled_at_most_every_five_minutes_and_configurable() -> None:
    default = beat_schedule.BEAT_SCHEDULE["folder-discovery"]
    assert default["task"] == "pipeline.maintenance.discover_folders"
    assert default["schedule"] <= 5 * 60
    assert Settings().beat.folder_discovery_interval_s <= 5 * 60
    assert (
        beat_schedule.beat_schedule(BeatSettings(folder_discovery_interval_s=90))[
            "folder-discovery"
        ]["schedule"]
        == 90.0
    )


def test_the_webhook_entries_match_what_the_webhook_tasks_ask_for() -> None:
    from workers.tasks import webhooks

    sweep = beat_schedule.BEAT_SCHEDULE["webhooks-sweep"]
    purge = beat_schedule.BEAT_SCHEDULE["webhooks-purge"]
    assert (sweep["task"], purge["task"]) == (webhooks.SWEEP_TASK, webhooks.PURGE_TASK)
    assert sweep["options"]["queue"] == purge["options"]["queue"] == webhooks.WEBHOOK_QUEUE


def test_the_scheduler_is_redbeat_with_a_standby_within_a_minute() -> None:
    conf = beat_schedule.beat_settings("redis://example.test:6379/0")
    assert conf["beat_scheduler"] == "redbeat.RedBeatScheduler"
    assert conf["redbeat_redis_url"] == "redis://example.test:6379/0"
    assert conf["redbeat_lock_timeout"] + conf["beat_max_loop_interval"] < 60
    assert conf["redbeat_lock_key"].startswith(conf["redbeat_key_prefix"])


def test_reschedule_countdown_stays_below_the_visibility_timeout(
    visibility_timeout_s: int,
) -> None:
    from workers.base import RESCHEDULE_MAX_S

    assert visibility_timeout_s / 10 > RESCHEDULE_MAX_S
    assert visibility_timeout_s / 4 > PURGE_BUDGET_S


def test_sweep_offsets_are_stable_and_inside_the_interval() -> None:
    assert sweep_offset("a", 300) == sweep_offset("a", 300)
    assert sweep_offset("a", 300) != sweep_offset("b", 300)
    offsets = sorted(sweep_offset(str(i), 300) for i in range(300))
    assert offsets[0] >= 0 and offsets[-1] < 300
    assert offsets[150] == pytest.approx(150, abs=30)  # uniform: the median near the middle


def test_a_stopped_folder_backs_off_longer_each_time_up_to_a_cap() -> None:
    first = retry_delay_s(UIDVALIDITY_STOP_AFTER)
    assert first == STOPPED_RETRY_S
    assert retry_delay_s(UIDVALIDITY_STOP_AFTER + 1) == 2 * first
    assert retry_delay_s(UIDVALIDITY_STOP_AFTER + 100) == STOPPED_RETRY_MAX_S


def test_bucket_capacity_and_scopes() -> None:
    assert capacity(10.0) == 10.0  # one second's worth
    assert capacity(6 / 60) == 3.0  # at least a few, for a first sync's sessions
    assert capacity(1 / 60) == 1.0  # never more than a minute's worth
    assert scope_of("yahoo", "imap.mail.yahoo.com") == "yahoo"
    assert scope_of("nonsense", "Mail.Example.ORG") == "generic:mail.example.org"


def test_limits_come_from_the_preset_with_operator_overrides() -> None:
    limiter = RateLimiter(fakeredis.FakeRedis())
    base = default_limits("yahoo")
    assert base.max_connections == preset("yahoo").max_connections
    assert base.account_logins_per_min == preset("yahoo").logins_per_minute
    assert limiter.limits("yahoo") == base
    limiter.set_limits("yahoo", {"max_connections": 3, "provider_ops_per_s": 12.5})
    limits = limiter.limits("yahoo")
    assert (limits.max_connections, limits.provider_ops_per_s) == (3, 12.5)
    assert limiter.limits("gmail") == default_limits("gmail")
    with pytest.raises(ValueError, match="unknown limit"):
        limiter.set_limits("yahoo", {"speed": 1})


def test_poll_batches_group_offsets_within_the_window_by_provider() -> None:
    from pipeline.maintenance.sweep import SweepJob, batch_jobs

    jobs = [SweepJob(f"g{i:03d}", "generic", i * 0.5) for i in range(120)]  # over 60 s
    jobs.append(SweepJob("y", "yahoo", 1.0))
    batches = batch_jobs(jobs, 5.0, 8)
    assert sorted(g for _, _, ids in batches for g in ids) == sorted(j.grant_id for j in jobs)
    assert all(len(ids) <= 8 for _, _, ids in batches)
    assert [ids for _, provider, ids in batches if provider == "yahoo"] == [["y"]]
    for countdown, _, ids in batches:  # each runs at its earliest member's offset, in window
        offsets = [j.countdown_s for j in jobs if j.grant_id in ids]
        assert countdown == min(offsets) and max(offsets) - countdown < 5.0
    # 12 windows of 10 generic grants, 8 at most a task: 24 tasks, not 120
    assert sum(provider == "generic" for _, provider, _ in batches) == 24
