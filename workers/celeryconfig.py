"""Celery configuration: the edge where the Celery processes read settings (lazily, on first use).

Why the numbers are what they are:
- ``visibility_timeout``: with the Redis broker, a task a dead worker had taken is handed out
  again only after this long. Tasks chunk their work to stay far below it (a folder-sync chunk
  works at most ``SYNC_CHUNK_BUDGET_S``), and no task uses a countdown longer than it, or Redis
  would hand the task out twice.
- ``acks_late`` + ``reject_on_worker_lost``: a worker killed mid-task loses nothing; the task
  runs again (tasks are idempotent).
- ``prefetch_multiplier = 1``: long sync chunks should not sit reserved behind each other.
"""

from __future__ import annotations

from kombu.entity import Exchange, Queue

from beat_schedule import beat_schedule as build_beat_schedule
from beat_schedule import beat_settings
from pipeline.presets import queue_names
from workers.settings import settings
from workers.webhook_tasks import WEBHOOK_TASK_ROUTES

VISIBILITY_TIMEOUT_S = 30 * 60

_s = settings()

broker_url = _s.require_redis_url()
broker_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT_S,
    "socket_timeout": 30,
    "socket_connect_timeout": 10,
}
broker_connection_retry_on_startup = True
task_ignore_result = True
result_backend = None
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True
worker_send_task_events = True  # Flower
task_send_sent_event = True
worker_hijack_root_logger = False
task_default_queue = "maintenance"
# Each queue gets its own direct exchange and routing key. Without them Celery binds every
# queue to the default exchange under the default routing key, and a task sent to one queue
# is copied into all of them.
task_queues = [
    Queue(name, Exchange(name, type="direct"), routing_key=name)
    for name in [*queue_names(), "webhooks", "maintenance"]
]
task_routes = {
    **WEBHOOK_TASK_ROUTES,
    "pipeline.maintenance.*": {"queue": "maintenance"},
}
beat_schedule = build_beat_schedule(
    sweep_s=_s.uidvalidity_sweep_interval_s,
    poll_s=_s.poll_interval_s,
    purge_s=_s.purge_interval_s,
    reconcile_s=_s.reconcile_interval_s,
)
# celery-redbeat: one scheduler at a time, a standby takes over (see beat_schedule.py)
globals().update(beat_settings(broker_url))
