"""The policies of the task base classes (workers.base) on an eager Celery app of the test's own:
a rate-limited run is sent again (not retried), a transient IMAP error is retried, a broken
bound costs the grant (and folder) its status. No broker, no worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from pipeline.errors import ImapConnectError, ImapLimitError
from pipeline.limits import RateLimited
from workers import base
from workers.base import RESCHEDULE_JITTER_S, FolderSyncTask, GrantSyncTask, PipelineTask


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("test-task-base", set_as_current=False)
    yield app
    app.close()


def test_a_rate_limited_run_is_sent_again_with_its_arguments_and_no_retry_used(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []

    @app.task(name="t.limited", base=GrantSyncTask, bind=True)
    def limited(self: Any, grant_id: str) -> None:
        runs.append(grant_id)
        raise RateLimited("no token now", 3.0)  # an ImapThrottledError: autoretry would retry

    task = app.tasks["t.limited"]
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(task, "apply_async", lambda **kw: sent.append(kw))
    assert task.apply(args=["g1"]).get() == {"rescheduled": 3.0}
    assert runs == ["g1"]  # not retried
    assert len(sent) == 1
    assert sent[0]["args"] == ["g1"]
    assert 3.0 <= sent[0]["countdown"] <= 3.0 + RESCHEDULE_JITTER_S


def test_a_plain_task_is_rescheduled_too(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    @app.task(name="t.plain", base=PipelineTask)
    def plain(grant_id: str) -> dict[str, Any]:
        raise RateLimited("no slot", 500.0)

    task = app.tasks["t.plain"]
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(task, "apply_async", lambda **kw: sent.append(kw))
    assert task.apply(args=["g1"]).get() == {"rescheduled": 500.0}
    assert sent[0]["countdown"] == base.RESCHEDULE_MAX_S  # bounded


def test_a_transient_error_is_retried_with_back_off(app: Celery) -> None:
    runs: list[int] = []

    @app.task(name="t.transient", base=GrantSyncTask, bind=True)
    def transient(self: Any, grant_id: str) -> str:
        runs.append(self.request.retries)
        if len(runs) < 3:
            raise ImapConnectError("connection refused")
        return "done"

    assert app.tasks["t.transient"].apply(args=["g1"]).get() == "done"
    assert runs == [0, 1, 2]


def test_a_broken_bound_costs_the_grant_and_folder(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    noted: list[tuple[Any, ...]] = []
    monkeypatch.setattr(base, "note_misbehaved", lambda *a: noted.append(a))

    @app.task(name="t.folder", base=FolderSyncTask, bind=True)
    def folder(self: Any, grant_id: str, folder_id: str) -> None:
        raise ImapLimitError("line too long", bound="line")

    @app.task(name="t.grant", base=GrantSyncTask)
    def grant(grant_id: str) -> None:
        raise ImapLimitError("too many responses", bound="responses")

    assert app.tasks["t.folder"].apply(args=["g1", "f1"]).get() == {"limited": "line"}
    assert app.tasks["t.grant"].apply(args=["g2"]).get() is None
    assert [(a[0], getattr(a[1], "bound", None), *a[2:]) for a in noted] == [
        ("g1", "line", "f1"),
        ("g2", "responses"),
    ]


def test_the_soft_time_limit_costs_the_grant(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    noted: list[tuple[Any, ...]] = []
    monkeypatch.setattr(base, "note_misbehaved", lambda *a: noted.append(a))
    monkeypatch.setattr(base, "limit_problem", lambda exc: "stopped at its soft limit")

    @app.task(name="t.slow", base=FolderSyncTask)
    def slow(grant_id: str, folder_id: str) -> None:
        raise SoftTimeLimitExceeded()

    assert app.tasks["t.slow"].apply(args=["g1", "f1"]).get() == {"limited": "time limit"}
    assert noted == [("g1", "stopped at its soft limit", "f1")]
