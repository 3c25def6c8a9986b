"""Fixtures shared by the end-to-end tests (real worker, listener and API processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.config import Settings
from tests.support.processes import pipeline_env, this_process_on


def forget_backend(app: object) -> None:
    """Drop the app's cached result backend (Celery keeps it per app or per thread)."""
    app._backend_cache = None  # type: ignore[attr-defined]
    app._local.__dict__.pop("backend", None)  # type: ignore[attr-defined]


@pytest.fixture
def celery_client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point this process's Celery app (the producer side) at the test broker and result store.

    The app reads its configuration once per process (``workers.app``: the first time anything
    reads ``app.conf``), so an earlier test may have configured it with other settings; both
    URLs are set here, and the result backend built from the old one is dropped.
    """
    from workers.app import app

    with this_process_on(pipeline_env(settings), monkeypatch):
        app.conf.broker_url = settings.require_redis_url()
        app.conf.result_backend = settings.require_redis_url()
        forget_backend(app)  # built again from the test's Redis
        yield
        forget_backend(app)
