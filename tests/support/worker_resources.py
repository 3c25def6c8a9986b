"""A Celery worker's per-process resources (workers.resources), in the test process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from pipeline.config import Settings
from tests.support.processes import pipeline_env, this_process_on


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
    for cache in caches:
        cache.cache_clear()
    with this_process_on(pipeline_env(settings), monkeypatch):
        try:
            yield
        finally:
            workers.resources.close_all_imap()
            for cache in caches:
                cache.cache_clear()
