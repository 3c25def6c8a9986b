"""The Celery application, configured by :func:`workers.celeryconfig.celery_config`.

The configuration is a promise (``add_defaults`` with a function): Celery evaluates it, with
this process's settings (:func:`pipeline.config.get_settings`), the first time it reads
``app.conf`` (a worker, beat or a client sending a task). Importing this module reads no
settings.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from pipeline.config import get_settings

# Tasks whose caller reads the result (from the Redis result backend); every other task is sent
# without a result: with a Redis backend, a send that expects one subscribes the sending process
# to the task's result channel until the result comes, which for the others it never does.
RESULT_TASKS = frozenset({"pipeline.grants.create"})


class PipelineCelery(Celery):  # type: ignore[misc]  # Celery is untyped
    """Celery whose ``send_task`` expects a result only for :data:`RESULT_TASKS`."""

    def send_task(self, name: str, *args: Any, **options: Any) -> Any:
        """Send ``name``; ``ignore_result`` defaults to whether its caller may read a result."""
        options.setdefault("ignore_result", name not in RESULT_TASKS)
        return super().send_task(name, *args, **options)


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
    # Imported here: the configuration names the task modules' queues and routes, and those
    # modules import this app.
    from workers.celeryconfig import celery_config

    return celery_config(get_settings())


app.add_defaults(_configuration)

# Observability hooks (Celery signals, connected on import) in every process that uses the app:
# the log format and the ids a task's lines carry; metrics (publishers stamp when a task was asked
# for, workers and beat serve /metrics).
from workers import logs as _logs  # noqa: E402, F401
from workers import metrics as _metrics  # noqa: E402, F401
