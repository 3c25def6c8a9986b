"""Enqueue from the workers: :class:`pipeline.jobs.Jobs` on this process's Celery app. Call
only after the caller's commit."""

from __future__ import annotations

from pipeline.jobs import Jobs
from workers.app import app
from workers.webhook_queue import flags

jobs = Jobs(lambda: app, flags)

sync_grant = jobs.sync_grant
sync_folder = jobs.sync_folder
create_grant = jobs.create_grant
