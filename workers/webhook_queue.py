"""Webhook work asked for from the workers: :func:`kick` for writers (dispatch the outbox soon),
:func:`enqueue_deliver` and :func:`schedule_deliver` for a destination's drain, now or later.

Enqueues are coalesced with short-lived Redis flags that the task deletes when it *starts*
(:func:`clear_flag`; the pending flags of :mod:`pipeline.coalesce`), so a kick that comes after
a dispatch began reading always enqueues another one. The tasks themselves are
:mod:`workers.tasks.webhooks`; this module sits below them and below everything in the workers
that kicks (the task base, folder runs, grant work), so none of those imports a task module.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time

import redis

from pipeline import coalesce
from pipeline.config import get_settings
from pipeline.jobs import (  # what a process that is not a worker sends with, too
    ENQUEUE_ERRORS,
    FLAG_TTL_S,
    WEBHOOK_QUEUE,
)
from pipeline.jobs import WEBHOOK_DISPATCH_TASK as DISPATCH_TASK
from pipeline.redis import (
    CALL_TIMEOUT_S,
    WEBHOOK_KICK_KEY,
    webhook_deliver_at_key,
    webhook_deliver_queued_key,
)
from pipeline.redis import client as redis_client
from workers.app import app

log = logging.getLogger(__name__)

DELIVER_TASK = "pipeline.webhooks.deliver"
MIN_COUNTDOWN_S = 0.05  # shorter waits are enqueued at once
COUNTDOWN_SLACK_S = 1.0
DEFAULT_VISIBILITY_TIMEOUT_S = 30 * 60  # kombu's Redis default is 1 h; ours is 30 min

_flags: tuple[int, redis.Redis[bytes]] | None = None
_lock = threading.Lock()


def flags() -> redis.Redis[bytes]:
    """This process's Redis client for the coalescing flags (needs only the Redis URL)."""
    global _flags
    with _lock:
        if _flags is None or _flags[0] != os.getpid():
            client = redis_client(get_settings().require_redis_url(), timeout_s=CALL_TIMEOUT_S)
            _flags = (os.getpid(), client)
        return _flags[1]


def reset_flags() -> None:
    """Close and forget this process's flags client (worker shutdown; tests)."""
    global _flags
    with _lock:
        if _flags is not None and _flags[0] == os.getpid():
            _flags[1].close()
        _flags = None


def _max_countdown_s() -> float:
    """Half the broker's visibility timeout: a countdown longer than that gets delivered twice."""
    options = app.conf.broker_transport_options or {}
    return float(options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT_S)) / 2


def _publish(task_name: str, args: list[str], *, countdown: float | None = None) -> None:
    """Send a task message by name to the webhooks queue (ids only in ``args``)."""
    app.send_task(task_name, args=args, queue=WEBHOOK_QUEUE, countdown=countdown)


def clear_flag(key: str) -> None:
    """Drop a pending flag (a task does so when it starts, so a later ask enqueues again)."""
    try:
        coalesce.clear(flags(), key)
    except ENQUEUE_ERRORS as exc:
        log.warning("could not clear %s in Redis: %s", key, exc)


def kick() -> None:
    """Have pending outbox rows dispatched soon. Call after your commit; cheap; never raises.

    Coalesced: while a dispatch is queued and has not started, further kicks do nothing.
    """
    try:
        coalesce.send_once(
            flags(), WEBHOOK_KICK_KEY, FLAG_TTL_S, lambda: _publish(DISPATCH_TASK, [])
        )
    except ENQUEUE_ERRORS as exc:
        log.warning("webhook dispatch not enqueued (the sweep will pick it up): %s", exc)


def enqueue_deliver(destination_id: str) -> None:
    """Have ``destination_id`` drained soon (coalesced like :func:`kick`); never raises."""
    flag = webhook_deliver_queued_key(destination_id)
    try:
        coalesce.send_once(
            flags(), flag, FLAG_TTL_S, lambda: _publish(DELIVER_TASK, [destination_id])
        )
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
    key = webhook_deliver_at_key(destination_id)
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
