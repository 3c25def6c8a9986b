"""Celery configuration: :func:`celery_config` turns :class:`~pipeline.config.Settings` into
Celery's settings. :mod:`workers.app` applies it to the app when Celery first reads its
configuration, with this process's settings (:func:`pipeline.config.get_settings`); importing this
module reads nothing.

Why the numbers are what they are:
- ``visibility_timeout``: with the Redis broker, a task a dead worker had taken is handed out
  again only after this long. Tasks chunk their work to stay far below it (a folder-sync chunk
  works at most ``SYNC_CHUNK_BUDGET_S``), and no task uses a countdown longer than it, or Redis
  would hand the task out twice.
- ``acks_late`` + ``reject_on_worker_lost``: a worker killed mid-task loses nothing; the task
  runs again (tasks are idempotent).
- ``prefetch_multiplier = 1``: long sync chunks should not sit reserved behind each other.
- Time limits: every task that talks IMAP (``SYNC_TASKS``) is killed after
  ``IMAP_PIPELINE_SYNC_TASK_TIME_LIMIT_S`` (default 900 s, at most 1,500 s: below the
  visibility timeout, so a killed task is never handed out twice while it still runs); its soft
  limit ``SOFT_LIMIT_MARGIN_S`` earlier lets the task record why on the grant and back off.
  Each IMAP command has its own total deadline as well (``IMAP_PIPELINE_IMAP_COMMAND_DEADLINE_S``),
  so the hard limit is the last line, not the first.
"""

from __future__ import annotations

from typing import Any

from beat_schedule import beat_schedule, beat_settings
from pipeline.config import Settings
from pipeline.jobs import SEND_QUEUE, VISIBILITY_TIMEOUT_S, WEBHOOK_QUEUE, publish_config

SOFT_LIMIT_MARGIN_S = 30  # between the soft and the hard limit: time to record and back off
SEND_TASK_TIME_LIMIT_S = 900  # a drain's budget plus a login and a message deadline, with room
# task_routes, so a client that sends these tasks by name reaches the right queue (the task
# modules import the app, hence this configuration: the routes are named here, not there)
WEBHOOK_TASK_ROUTES: dict[str, dict[str, str]] = {"pipeline.webhooks.*": {"queue": WEBHOOK_QUEUE}}
SEND_TASK_ROUTES: dict[str, dict[str, str]] = {"pipeline.outbox.*": {"queue": SEND_QUEUE}}
SYNC_TASKS = (
    "pipeline.grants.create",
    "pipeline.sync.grant",
    "pipeline.sync.folder",
    "pipeline.maintenance.poll_grant",
    "pipeline.maintenance.poll_grants",
    "pipeline.maintenance.check_uidvalidity",
    "pipeline.maintenance.check_grants",
)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings (``app.conf``) for ``settings``: broker, queues, routes, time limits
    and the beat schedule."""
    broker_url = settings.require_redis_url()
    hard_limit_s = settings.sync.task_time_limit_s
    assert hard_limit_s < VISIBILITY_TIMEOUT_S  # the setting's own bound keeps it so
    task_annotations: dict[str, dict[str, float]] = {
        name: {"time_limit": hard_limit_s, "soft_time_limit": hard_limit_s - SOFT_LIMIT_MARGIN_S}
        for name in SYNC_TASKS
    }
    task_annotations["pipeline.outbox.deliver"] = {
        "time_limit": SEND_TASK_TIME_LIMIT_S,
        "soft_time_limit": SEND_TASK_TIME_LIMIT_S - SOFT_LIMIT_MARGIN_S,
    }
    return {
        # What a sent message is and where it goes (broker, queues and their exchanges,
        # serializer, result backend, task-sent events): the same for every sender.
        **publish_config(broker_url),
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,  # Flower
        "worker_hijack_root_logger": False,
        "task_routes": {
            **WEBHOOK_TASK_ROUTES,
            **SEND_TASK_ROUTES,
            "pipeline.maintenance.*": {"queue": "maintenance"},
        },
        "task_annotations": task_annotations,
        "beat_schedule": beat_schedule(settings.beat),
        # celery-redbeat: one scheduler at a time, a standby takes over (see beat_schedule.py)
        **beat_settings(broker_url),
    }
