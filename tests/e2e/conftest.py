"""Fixtures shared by the end-to-end tests (real worker, listener and API processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.config import Settings
from tests.support.processes import pipeline_env


@pytest.fixture
def celery_client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point this process's Celery app (the producer side) at the test broker."""
    import workers.settings
    from workers.app import app

    for key, value in pipeline_env(settings).items():
        if key.startswith("IMAP_PIPELINE_"):
            monkeypatch.setenv(key, value)
    workers.settings.settings.cache_clear()
    app.conf.broker_url = settings.require_redis_url()
    yield
    workers.settings.settings.cache_clear()
