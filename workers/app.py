"""The Celery application. Configuration is read lazily from :mod:`workers.celeryconfig`."""

from __future__ import annotations

from celery import Celery

app = Celery(
    "imap_pipeline",
    include=["workers.tasks", "workers.webhook_tasks", "workers.beat_tasks"],
)
app.config_from_object("workers.celeryconfig")

# Log format and the ids every task's lines carry (Celery signals, connected on import).
from workers import logs as _logs  # noqa: E402, F401
