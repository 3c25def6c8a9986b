"""The Celery application. Configuration is read lazily from :mod:`workers.celeryconfig`."""

from __future__ import annotations

from celery import Celery

app = Celery(
    "imap_pipeline",
    include=["workers.tasks", "workers.webhook_tasks", "workers.beat_tasks"],
)
app.config_from_object("workers.celeryconfig")
