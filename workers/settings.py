"""Settings for the Celery processes, loaded once per process."""

from __future__ import annotations

from functools import lru_cache

from pipeline.config import Settings


@lru_cache(maxsize=1)
def settings() -> Settings:
    """This process's settings (environment + the runtime file `up` wrote)."""
    return Settings.load()
