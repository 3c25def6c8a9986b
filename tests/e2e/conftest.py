"""Fixtures shared by the end-to-end tests (real worker, listener and API processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.config import Settings, reset_settings
from tests.support.processes import pipeline_env


@pytest.fixture
def celery_client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point this process's Celery app (the producer side) at the test broker."""
    from workers.app import app

    for key, value in pipeline_env(settings).items():
        if key.startswith("IMAP_PIPELINE_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    app.conf.broker_url = settings.require_redis_url()
    yield
    reset_settings()
