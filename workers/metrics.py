"""Metrics of the Celery roles: Celery signals feed :mod:`pipeline.metrics`.

- the publisher (:mod:`pipeline.jobs`, in any process that enqueues) stamps the message with the
  time it was asked for, so the worker can tell the sync lag.
- ``worker_init`` / ``beat_init`` (the role's main process, before the pool forks): empty the
  multiprocess folder and serve ``/metrics`` on ``IMAP_PIPELINE_METRICS_PORT``; beat also serves
  the backlog gauges (outbox and queue depth), read at scrape time.
- ``task_postrun`` / ``task_failure`` / ``task_retry`` (pool processes): messages synced, sync
  failures, sync lag.
- ``worker_process_shutdown``: a pool process's live gauges are forgotten.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery.signals import (
    beat_init,
    task_postrun,
    task_retry,
    worker_init,
    worker_process_shutdown,
)

from pipeline import metrics
from pipeline.config import get_settings
from pipeline.jobs import ENQUEUED_AT_HEADER
from pipeline.presets import queue_names

log = logging.getLogger(__name__)

SYNC_QUEUE_PREFIX = "sync."
SYNC_TASKS = ("pipeline.sync.folder", "pipeline.sync.grant")


def _serve(extra: list[Any]) -> None:
    s = get_settings()
    metrics.reset_multiprocess_dir()
    try:
        metrics.serve(s.metrics_port, s.metrics_host, extra)
    except Exception as exc:  # metrics must never stop the role
        log.error("%s", exc)


@worker_init.connect
def _worker_init(**_: Any) -> None:
    _serve([])


@beat_init.connect
def _beat_init(**_: Any) -> None:
    from pipeline.redis import SCRAPE_TIMEOUT_S
    from pipeline.redis import client as redis_client

    s = get_settings()
    client = redis_client(s.require_redis_url(), timeout_s=SCRAPE_TIMEOUT_S)
    backlog = metrics.BacklogCollector(
        metrics.postgres_outbox_depth(s.require_database_url()),
        metrics.redis_queue_depth(client),
        [*queue_names(), "send", "webhooks", "maintenance"],
    )
    _serve([backlog])


def _provider(task: Any) -> str:
    info = getattr(task.request, "delivery_info", None) or {}
    queue = str(info.get("routing_key") or "")
    return queue.removeprefix(SYNC_QUEUE_PREFIX) if queue.startswith(SYNC_QUEUE_PREFIX) else "?"


@task_postrun.connect
def _after_task(task: Any = None, retval: Any = None, state: str | None = None, **_: Any) -> None:
    if task is None or task.name not in SYNC_TASKS:
        return
    provider = _provider(task)
    if state == "FAILURE":
        metrics.SYNC_FAILURES.labels(provider, "task").inc()
    if isinstance(retval, dict):
        stored, failed = retval.get("stored"), retval.get("failed")
        if isinstance(stored, int) and stored > 0:
            metrics.MESSAGES_SYNCED.labels(provider).inc(stored)
        if isinstance(failed, int) and failed > 0:
            metrics.SYNC_FAILURES.labels(provider, "message").inc(failed)
    if state == "SUCCESS" and task.name == "pipeline.sync.folder":
        enqueued = getattr(task.request, ENQUEUED_AT_HEADER, None)
        if isinstance(enqueued, int | float):
            metrics.SYNC_LAG.labels(provider).observe(max(0.0, time.time() - enqueued))


@task_retry.connect
def _retried(sender: Any = None, **_: Any) -> None:
    if sender is not None and sender.name in SYNC_TASKS:
        metrics.SYNC_FAILURES.labels(_provider(sender), "task").inc()


@worker_process_shutdown.connect
def _pool_process_gone(**_: Any) -> None:
    metrics.process_exited(os.getpid())
