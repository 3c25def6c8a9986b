"""The Celery app as the webhook tests' worker runs it: ``celery -A webhook_worker_app worker``.

The production app, with only the webhook tasks included (the tests should not depend on the
state of other areas' task modules).
"""

from __future__ import annotations

from workers.app import app

app.conf.include = ["workers.tasks.webhooks"]

__all__ = ["app"]
