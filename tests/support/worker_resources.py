"""A Celery worker's per-process resources (workers.resources), in the test process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from pipeline.config import Settings, reset_settings
from tests.support.processes import pipeline_env


@contextlib.contextmanager
def worker_resources(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point this process's worker settings, database sessions, Redis, limiter and IMAP pools
    at the test services; close the pooled sessions and forget them all afterwards."""
    import workers.resources

    caches = (
        workers.resources.sessions,
        workers.resources.redis_client,
        workers.resources.connection_slots,
        workers.resources.limiter_for_process,
        workers.resources.imap_pool,
        workers.resources.interactive_pool,
    )
    for key, value in pipeline_env(settings).items():
        if key.startswith("IMAP_PIPELINE_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    for cache in caches:
        cache.cache_clear()
    try:
        yield
    finally:
        workers.resources.close_all_imap()
        reset_settings()
        for cache in caches:
            cache.cache_clear()
