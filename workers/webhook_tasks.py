"""Thin Celery tasks of webhook delivery (queue ``webhooks``) and ``kick()`` for writers.

Task names are the public contract; every task takes ids only (never a URL or a secret):

- ``pipeline.webhooks.dispatch()``: turn pending outbox rows into per-destination deliveries,
  then (after the commit) enqueue ``deliver`` for every destination that got some.
- ``pipeline.webhooks.deliver(destination_id)``: drain one destination for a bounded time;
  re-queues itself when work remains and schedules itself for its next retry.
- ``pipeline.webhooks.sweep()``: periodic repair (beat): re-enqueue whatever Postgres says is
  owed — undispatched rows, due deliveries, retries that waited longer than a countdown may —
  and retire destinations failing for too long. This is why a Redis flush delays, never loses.
- ``pipeline.webhooks.purge()``: periodic (beat): drop delivered notifications older than
  ``IMAP_PIPELINE_WEBHOOK_RETENTION_DAYS``.

Writers call :func:`kick` after committing rows written with ``pipeline.webhooks.outbox.emit``.
Enqueues are coalesced with short-lived Redis flags that the task deletes when it *starts*, so a
kick that comes after a dispatch began reading always enqueues another one.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import redis
from celery.signals import worker_process_shutdown
from kombu.exceptions import KombuError
from sqlalchemy.orm import Session

from pipeline.crypto import SecretBox
from pipeline.db import session_scope
from pipeline.errors import PipelineError
from pipeline.webhooks import outbox, sweep
from pipeline.webhooks.delivery import Drainer
from pipeline.webhooks.sender import Sender
from pipeline.webhooks.settings import WebhookSettings
from workers.app import app
from workers.settings import settings

log = logging.getLogger(__name__)

WEBHOOK_QUEUE = "webhooks"
DISPATCH_TASK = "pipeline.webhooks.dispatch"
DELIVER_TASK = "pipeline.webhooks.deliver"
SWEEP_TASK = "pipeline.webhooks.sweep"
PURGE_TASK = "pipeline.webhooks.purge"

SWEEP_INTERVAL_S = 15.0  # worst-case delay added by a lost Redis message
PURGE_INTERVAL_S = 3600.0

WEBHOOK_BEAT_ENTRIES: dict[str, dict[str, Any]] = {
    "webhooks-sweep": {
        "task": SWEEP_TASK,
        "schedule": SWEEP_INTERVAL_S,
        "options": {"queue": WEBHOOK_QUEUE, "expires": SWEEP_INTERVAL_S},
    },
    "webhooks-purge": {
        "task": PURGE_TASK,
        "schedule": PURGE_INTERVAL_S,
        "options": {"queue": WEBHOOK_QUEUE, "expires": PURGE_INTERVAL_S},
    },
}
"""Beat entries for ``beat_schedule.py`` to merge (``expires`` drops a backlog of stale ones)."""

WEBHOOK_TASK_ROUTES: dict[str, dict[str, str]] = {"pipeline.webhooks.*": {"queue": WEBHOOK_QUEUE}}
"""For ``task_routes``: so a client that sends these tasks by name reaches the right queue."""

KEY_PREFIX = "imap-pipeline:webhooks"
KICK_FLAG = f"{KEY_PREFIX}:dispatch-queued"
FLAG_TTL_S = 10  # a lost flag suppresses enqueues at most this long (the sweep covers the rest)
REDIS_TIMEOUT_S = 5.0
DISPATCH_BUDGET_S = 20.0  # one dispatch task stops after this long and re-queues itself
PURGE_BUDGET_S = 60.0
MIN_COUNTDOWN_S = 0.05  # shorter waits are enqueued at once
COUNTDOWN_SLACK_S = 1.0
DEFAULT_VISIBILITY_TIMEOUT_S = 30 * 60  # kombu's Redis default is 1 h; ours is 30 min
DELIVER_SOFT_LIMIT_S = 10 * 60  # a drain is budgeted to ~30 s plus one batch of timeouts
DELIVER_HARD_LIMIT_S = DELIVER_SOFT_LIMIT_S + 60

# Enqueue failures are logged, never raised into the caller: the sweep re-finds the work.
ENQUEUE_ERRORS = (redis.RedisError, KombuError, OSError, PipelineError)


# --- per-process resources ---------------------------------------------------------------------


@dataclass
class _Runtime:
    pid: int  # made in this process; a forked child makes its own
    database_url: str
    webhook: WebhookSettings
    box: SecretBox
    sender: Sender

    def uow(self) -> AbstractContextManager[Session]:
        """A transaction that commits on success (the tasks' unit of work)."""
        return session_scope(self.database_url)


_runtime: _Runtime | None = None
_flags: tuple[int, redis.Redis[bytes]] | None = None
_lock = threading.Lock()


def runtime() -> _Runtime:
    """This process's delivery resources: settings, secret box, HTTP sender (made on first use)."""
    global _runtime
    with _lock:
        if _runtime is None or _runtime.pid != os.getpid():
            s = settings()
            webhook = WebhookSettings.load()
            _runtime = _Runtime(
                pid=os.getpid(),
                database_url=s.require_database_url(),
                webhook=webhook,
                box=SecretBox(s.encryption_key_list),
                sender=Sender(webhook),
            )
        return _runtime


def flags() -> redis.Redis[bytes]:
    """This process's Redis client for the coalescing flags (needs only the Redis URL)."""
    global _flags
    with _lock:
        if _flags is None or _flags[0] != os.getpid():
            client = redis.Redis.from_url(
                settings().require_redis_url(),
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
            )
            _flags = (os.getpid(), client)
        return _flags[1]


def reset_runtime() -> None:
    """Close and forget this process's resources (worker shutdown; tests)."""
    global _runtime, _flags
    with _lock:
        if _runtime is not None and _runtime.pid == os.getpid():
            _runtime.sender.close()
        if _flags is not None and _flags[0] == os.getpid():
            _flags[1].close()
        _runtime = None
        _flags = None


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    reset_runtime()


def _max_countdown_s() -> float:
    """Half the broker's visibility timeout: a countdown longer than that gets delivered twice."""
    options = app.conf.broker_transport_options or {}
    return float(options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT_S)) / 2


# --- enqueueing --------------------------------------------------------------------------------


def _publish(task_name: str, args: list[str], *, countdown: float | None = None) -> None:
    """Send a task message by name to the webhooks queue (ids only in ``args``)."""
    app.send_task(task_name, args=args, queue=WEBHOOK_QUEUE, countdown=countdown)


def _deliver_flag(destination_id: str) -> str:
    return f"{KEY_PREFIX}:deliver-queued:{destination_id}"


def _scheduled_key(destination_id: str) -> str:
    return f"{KEY_PREFIX}:deliver-at:{destination_id}"


def _clear_flag(key: str) -> None:
    try:
        flags().delete(key)
    except ENQUEUE_ERRORS as exc:
        log.warning("could not clear %s in Redis: %s", key, exc)


def kick() -> None:
    """Have pending outbox rows dispatched soon. Call after your commit; cheap; never raises.

    Coalesced: while a dispatch is queued and has not started, further kicks do nothing.
    """
    try:
        r = flags()
        if r.set(KICK_FLAG, b"1", nx=True, ex=FLAG_TTL_S):
            try:
                _publish(DISPATCH_TASK, [])
            except ENQUEUE_ERRORS:
                r.delete(KICK_FLAG)
                raise
    except ENQUEUE_ERRORS as exc:
        log.warning("webhook dispatch not enqueued (the sweep will pick it up): %s", exc)


def enqueue_deliver(destination_id: str) -> None:
    """Have ``destination_id`` drained soon (coalesced like :func:`kick`); never raises."""
    flag = _deliver_flag(destination_id)
    try:
        r = flags()
        if r.set(flag, b"1", nx=True, ex=FLAG_TTL_S):
            try:
                _publish(DELIVER_TASK, [destination_id])
            except ENQUEUE_ERRORS:
                r.delete(flag)
                raise
    except ENQUEUE_ERRORS as exc:
        log.warning(
            "webhook delivery not enqueued destination=%s (the sweep will pick it up): %s",
            destination_id,
            exc,
        )


def schedule_deliver(destination_id: str, delay_s: float) -> None:
    """Have ``destination_id`` drained in ``delay_s`` seconds (capped; the sweep covers longer).

    One pending scheduled drain per destination is kept, unless a sooner one is asked for.
    """
    delay = min(max(delay_s, 0.0), _max_countdown_s())
    if delay < MIN_COUNTDOWN_S:
        enqueue_deliver(destination_id)
        return
    key = _scheduled_key(destination_id)
    now = time.time()
    due = now + delay
    try:
        r = flags()
        current = r.get(key)
        if current is not None and now < float(current) <= due + COUNTDOWN_SLACK_S:
            return  # a drain that has not run yet is scheduled no later than needed
        r.set(key, repr(due).encode(), ex=math.ceil(delay + COUNTDOWN_SLACK_S))
        _publish(DELIVER_TASK, [destination_id], countdown=delay)
    except ENQUEUE_ERRORS as exc:
        log.warning(
            "webhook retry not scheduled destination=%s (the sweep will pick it up): %s",
            destination_id,
            exc,
        )


# --- tasks -------------------------------------------------------------------------------------


@app.task(name=DISPATCH_TASK, queue=WEBHOOK_QUEUE, ignore_result=True)
def dispatch() -> dict[str, int]:
    """Turn pending outbox rows into deliveries; enqueue the destinations' drains after commit."""
    rt = runtime()
    _clear_flag(KICK_FLAG)  # before reading: a kick from now on enqueues another dispatch
    deadline = time.monotonic() + DISPATCH_BUDGET_S
    events = deliveries = 0
    while True:
        with rt.uow() as session:
            result = outbox.dispatch_batch(session, limit=rt.webhook.dispatch_batch_size)
        events += result.events
        deliveries += result.deliveries
        for destination_id in sorted(result.destination_ids):
            enqueue_deliver(destination_id)
        if not result.more:
            break
        if time.monotonic() > deadline:
            kick()
            break
    if events:
        log.info("webhook dispatch events=%d deliveries=%d", events, deliveries)
    return {"events": events, "deliveries": deliveries}


@app.task(
    name=DELIVER_TASK,
    queue=WEBHOOK_QUEUE,
    ignore_result=True,
    soft_time_limit=DELIVER_SOFT_LIMIT_S,
    time_limit=DELIVER_HARD_LIMIT_S,
)
def deliver(destination_id: str) -> dict[str, Any]:
    """Drain one destination for a bounded time; re-queue or schedule the rest."""
    rt = runtime()
    _clear_flag(_deliver_flag(destination_id))
    drainer = Drainer(rt.uow, settings=rt.webhook, box=rt.box, sender=rt.sender)
    outcome = drainer.drain(destination_id)
    if outcome.more_due:
        enqueue_deliver(destination_id)
    elif outcome.next_due_in_s is not None:
        schedule_deliver(destination_id, outcome.next_due_in_s)
    return {
        "attempted": outcome.attempted,
        "delivered": outcome.delivered,
        "failed": outcome.failed,
        "skipped": outcome.skipped,
        "status": outcome.status,
    }


@app.task(name=SWEEP_TASK, queue=WEBHOOK_QUEUE, ignore_result=True)
def sweep_task() -> dict[str, int]:
    """Re-enqueue what Postgres says is owed; retire long-failing destinations."""
    rt = runtime()
    with rt.uow() as session:
        result = sweep.sweep(session, rt.webhook)
    if result.pending_events:
        kick()
    for destination_id in result.due_destination_ids:
        enqueue_deliver(destination_id)
    return {
        "pending_events": int(result.pending_events),
        "due_destinations": len(result.due_destination_ids),
        "failed_destinations": len(result.failed_destination_ids),
    }


@app.task(name=PURGE_TASK, queue=WEBHOOK_QUEUE, ignore_result=True)
def purge() -> int:
    """Delete delivered notifications past retention, in short transactions."""
    rt = runtime()
    deadline = time.monotonic() + PURGE_BUDGET_S
    total = 0
    while time.monotonic() < deadline:
        with rt.uow() as session:
            deleted = sweep.purge(session, rt.webhook)
        total += deleted
        if deleted < sweep.PURGE_BATCH:
            break
    if total:
        log.info("webhook purge deleted=%d", total)
    return total


__all__ = [
    "DELIVER_TASK",
    "DISPATCH_TASK",
    "PURGE_TASK",
    "SWEEP_TASK",
    "WEBHOOK_BEAT_ENTRIES",
    "WEBHOOK_QUEUE",
    "WEBHOOK_TASK_ROUTES",
    "deliver",
    "dispatch",
    "enqueue_deliver",
    "kick",
    "purge",
    "reset_runtime",
    "runtime",
    "schedule_deliver",
    "sweep_task",
]
