"""The Celery application. Configuration is read lazily from :mod:`workers.celeryconfig`."""

from __future__ import annotations

from celery import Celery

app = Celery(
    "imap_pipeline",
    include=["workers.tasks", "workers.webhook_tasks", "workers.beat_tasks"],
)
app.config_from_object("workers.celeryconfig")

# Observability hooks (Celery signals, connected on import) in every process that uses the app:
# the log format and the ids a task's lines carry; metrics (publishers stamp when a task was asked
# for, workers and beat serve /metrics).
from workers import logs as _logs  # noqa: E402, F401
from workers import metrics as _metrics  # noqa: E402, F401
