"""Fixtures shared by the end-to-end tests (real worker, listener and API processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.config import Settings
from tests.support.processes import pipeline_env, this_process_on


@pytest.fixture
def celery_client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point this process's Celery app (the producer side) at the test broker."""
    from workers.app import app

    with this_process_on(pipeline_env(settings), monkeypatch):
        app.conf.broker_url = settings.require_redis_url()
        yield
