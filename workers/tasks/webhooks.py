"""Thin Celery tasks of webhook delivery (queue ``webhooks``); asking for them (``kick()`` for
writers, a destination's drain now or later) is :mod:`workers.webhook_queue`.

Task names are the public contract; every task takes ids only (never a URL or a secret):

- ``pipeline.webhooks.dispatch()``: turn pending outbox rows into per-destination deliveries,
  then (after the commit) enqueue ``deliver`` for every destination that got some.
- ``pipeline.webhooks.deliver(destination_id)``: hand a drain of one destination to this
  process's event loop and return at once (the task never waits on HTTP). The drain runs for a
  bounded time beside the process's other drains, then re-queues itself when work remains and
  schedules itself for its next retry. A process runs at most
  ``IMAP_PIPELINE_WEBHOOK_MAX_DRAINS_PER_PROCESS`` drains (failing destinations at most half);
  a destination that finds no room is asked for again shortly, its work waiting in Postgres.
- ``pipeline.webhooks.sweep()``: periodic repair (beat): re-enqueue whatever Postgres says is
  owed — undispatched rows, due deliveries, retries that waited longer than a countdown may —
  and retire destinations failing for too long. This is why a Redis flush delays, never loses.
- ``pipeline.webhooks.purge()``: periodic (beat): drop delivered notifications older than
  ``IMAP_PIPELINE_WEBHOOK_RETENTION_DAYS``.

Writers call :func:`workers.webhook_queue.kick` after committing rows written with
``pipeline.webhooks.outbox.emit``. Enqueues are coalesced with short-lived Redis flags that the
task deletes when it *starts*, so a kick that comes after a dispatch began reading always
enqueues another one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from celery.signals import worker_process_shutdown
from sqlalchemy.orm import Session

from pipeline.config import get_settings
from pipeline.config.webhooks import WebhookSettings
from pipeline.crypto import SecretBox
from pipeline.db import session_scope
from pipeline.jobs import WEBHOOK_DISPATCH_TASK as DISPATCH_TASK
from pipeline.jobs import WEBHOOK_QUEUE  # what a process that is not a worker sends with, too
from pipeline.redis import WEBHOOK_KICK_KEY, webhook_deliver_queued_key
from pipeline.webhooks import outbox, sweep
from pipeline.webhooks.delivery import Drainer, DrainOutcome, DrainSlots
from pipeline.webhooks.sender import Sender
from workers import webhook_queue
from workers.app import app
from workers.webhook_queue import DELIVER_TASK, enqueue_deliver, kick, schedule_deliver

log = logging.getLogger(__name__)

SWEEP_TASK = "pipeline.webhooks.sweep"
PURGE_TASK = "pipeline.webhooks.purge"


DISPATCH_BUDGET_S = 20.0  # one dispatch task stops after this long and re-queues itself
PURGE_BUDGET_S = 60.0
# The task only hands the drain to the event loop; the drain's own bounds are its budget and
# the request deadlines (see pipeline.webhooks.delivery).
DELIVER_SOFT_LIMIT_S = 60
DELIVER_HARD_LIMIT_S = DELIVER_SOFT_LIMIT_S + 30
DB_THREADS = 8  # database steps of one process's drains; the engine's pool holds 5 + 5
PENDING_DRAINS_FACTOR = 2  # drains queued on the loop beyond the slots (most find a slot soon)
NO_SLOT_RETRY_S = 1.0  # a healthy destination that found no drain slot is asked for this soon
NO_SLOT_RETRY_UNHEALTHY_S = 5.0  # a failing one waits longer: it is likely to fail again
SHUTDOWN_GRACE_S = 15.0  # drains in flight at worker shutdown get this long to record


# --- per-process resources ---------------------------------------------------------------------


@dataclass
class _Runtime:
    pid: int  # made in this process; a forked child makes its own
    database_url: str
    webhook: WebhookSettings
    box: SecretBox
    sender: Sender  # its event loop runs this process's drains
    slots: DrainSlots  # used on the sender's loop only
    db_threads: ThreadPoolExecutor
    stopping: threading.Event = field(default_factory=threading.Event)
    drains: set[concurrent.futures.Future[None]] = field(default_factory=set)
    drains_lock: threading.Lock = field(default_factory=threading.Lock)

    def uow(self) -> AbstractContextManager[Session]:
        """A transaction that commits on success (the tasks' unit of work)."""
        return session_scope(self.database_url)

    def drainer(self) -> Drainer:
        """A drainer on this process's resources."""
        return Drainer(
            self.uow,
            settings=self.webhook,
            box=self.box,
            sender=self.sender,
            executor=self.db_threads,
            stop=self.stopping,
        )

    def pending_drains(self) -> int:
        """Drains handed to the loop and not finished."""
        with self.drains_lock:
            return len(self.drains)

    def track(self, future: concurrent.futures.Future[None]) -> None:
        """Count ``future`` among the pending drains until it is done."""
        with self.drains_lock:
            self.drains.add(future)

        def done(f: concurrent.futures.Future[None]) -> None:
            with self.drains_lock:
                self.drains.discard(f)

        future.add_done_callback(done)

    def close(self) -> None:
        """Stop claiming, give drains in flight a moment to record, close the rest."""
        self.stopping.set()
        with self.drains_lock:
            pending = list(self.drains)
        if pending:
            concurrent.futures.wait(pending, timeout=SHUTDOWN_GRACE_S)
        self.sender.close()
        self.db_threads.shutdown(wait=False, cancel_futures=True)


_runtime: _Runtime | None = None
_lock = threading.Lock()


def runtime() -> _Runtime:
    """This process's delivery resources: settings, secret box, HTTP sender (made on first use)."""
    global _runtime
    with _lock:
        if _runtime is None or _runtime.pid != os.getpid():
            s = get_settings()
            webhook = s.webhooks
            _runtime = _Runtime(
                pid=os.getpid(),
                database_url=s.require_database_url(),
                webhook=webhook,
                box=SecretBox(s.encryption_key_list),
                sender=Sender(webhook),
                slots=DrainSlots(webhook.max_drains_per_process),
                db_threads=ThreadPoolExecutor(DB_THREADS, thread_name_prefix="webhook-db"),
            )
        return _runtime


def reset_runtime() -> None:
    """Close and forget this process's resources and its flags client (worker shutdown;
    tests)."""
    global _runtime
    with _lock:
        if _runtime is not None and _runtime.pid == os.getpid():
            _runtime.close()
        _runtime = None
    webhook_queue.reset_flags()


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    reset_runtime()


# --- tasks -------------------------------------------------------------------------------------


@app.task(name=DISPATCH_TASK, queue=WEBHOOK_QUEUE, ignore_result=True)
def dispatch() -> dict[str, int]:
    """Turn pending outbox rows into deliveries; enqueue the destinations' drains after commit."""
    rt = runtime()
    webhook_queue.clear_flag(
        WEBHOOK_KICK_KEY
    )  # before reading: a kick from now on enqueues another dispatch
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
    """Start draining one destination on this process's event loop; return at once."""
    rt = runtime()
    webhook_queue.clear_flag(webhook_deliver_queued_key(destination_id))
    if rt.pending_drains() >= rt.webhook.max_drains_per_process * PENDING_DRAINS_FACTOR:
        schedule_deliver(destination_id, NO_SLOT_RETRY_S)
        return {"started": False}
    rt.track(rt.sender.submit(_drain(rt, destination_id)))
    return {"started": True}


async def _drain(rt: _Runtime, destination_id: str) -> None:
    """One drain on the event loop, then (on a thread) what its outcome asks for."""
    try:
        outcome = await rt.drainer().drain_async(destination_id, slots=rt.slots)
    except Exception:  # the lease runs out and the sweep finds the work again
        log.exception("webhook drain failed destination=%s", destination_id)
        return
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(rt.db_threads, _follow_up, destination_id, outcome)


def _follow_up(destination_id: str, outcome: DrainOutcome) -> None:
    if outcome.deferred:
        healthy = outcome.status == "active"
        schedule_deliver(destination_id, NO_SLOT_RETRY_S if healthy else NO_SLOT_RETRY_UNHEALTHY_S)
    elif outcome.more_due:
        enqueue_deliver(destination_id)
    elif outcome.next_due_in_s is not None:
        schedule_deliver(destination_id, outcome.next_due_in_s)


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
    "WEBHOOK_QUEUE",
    "deliver",
    "dispatch",
    "purge",
    "reset_runtime",
    "runtime",
    "sweep_task",
]
