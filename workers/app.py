"""The Celery application, configured by :func:`workers.celeryconfig.celery_config`.

The configuration is a promise (``add_defaults`` with a function): Celery evaluates it, with
this process's settings (:func:`pipeline.config.get_settings`), the first time it reads
``app.conf`` (a worker, beat or a client sending a task). Importing this module reads no
settings.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import get_settings
from pipeline.jobs import PipelineCelery
from workers.celeryconfig import celery_config

app = PipelineCelery(
    "imap_pipeline",
    include=[
        "workers.tasks.sync",
        "workers.tasks.webhooks",
        "workers.tasks.beat",
        "workers.tasks.send",
    ],
)


def _configuration() -> dict[str, Any]:
    return celery_config(get_settings())


app.add_defaults(_configuration)

# Observability hooks (Celery signals, connected on import) in every process that uses the app:
# the log format and the ids a task's lines carry; metrics (workers and beat serve /metrics).
# Publishers stamp when a task was asked for: pipeline.jobs, imported above.
from workers import logs as _logs  # noqa: E402, F401
from workers import metrics as _metrics  # noqa: E402, F401
