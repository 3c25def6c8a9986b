"""Settings of the IMAP bounds, and the time limits of every Celery task that talks IMAP: a hard
limit below the broker's visibility timeout and a soft one before it (issue 9: sync tasks had
none)."""

from __future__ import annotations

import pytest

from pipeline.config import ImapSettings, Settings, SyncSettings, reset_settings


def test_imap_tasks_have_time_limits_below_the_visibility_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # reading a task's name configures the app, if nothing did before: it needs a broker URL
    monkeypatch.setenv("IMAP_PIPELINE_REDIS_URL", "redis://127.0.0.1:1/0")
    reset_settings()
    import workers.tasks.beat
    import workers.tasks.sync
    from workers import celeryconfig

    conf = celeryconfig.celery_config(
        Settings(redis_url="redis://127.0.0.1:1/0", sync=SyncSettings(task_time_limit_s=700))
    )
    names = {
        workers.tasks.sync.create_grant_task.name,
        workers.tasks.sync.sync_grant_task.name,
        workers.tasks.sync.sync_folder_task.name,
        workers.tasks.beat.poll_grant_task.name,
        workers.tasks.beat.poll_grants_task.name,
        workers.tasks.beat.check_uidvalidity_task.name,
        workers.tasks.beat.check_grants_task.name,
    }
    assert set(celeryconfig.SYNC_TASKS) == names
    for name in names:
        limits = conf["task_annotations"][name]
        assert limits["time_limit"] == 700
        assert limits["soft_time_limit"] == 700 - celeryconfig.SOFT_LIMIT_MARGIN_S
        assert limits["time_limit"] < celeryconfig.VISIBILITY_TIMEOUT_S
    reset_settings()


def test_the_time_limit_setting_cannot_reach_the_visibility_timeout() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SyncSettings(task_time_limit_s=30 * 60)
    assert Settings().sync.task_time_limit_s < 30 * 60


def test_the_command_bound_must_hold_the_largest_literal() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="IMAP_PIPELINE_IMAP_MAX_COMMAND_BYTES"):
        ImapSettings(max_literal_bytes=200 * 1024 * 1024)
    assert ImapSettings(max_literal_bytes=200 * 1024 * 1024, max_command_bytes=300 * 1024 * 1024)
