"""Every periodic job of imap-pipeline, in one place: what runs, how often, on which queue.

Celery beat reads ``beat_schedule(settings.beat)`` (see ``workers.celeryconfig.celery_config``):
the intervals and their defaults are ``Settings.beat`` (:mod:`pipeline.config.beat`,
``IMAP_PIPELINE_*_INTERVAL_S``); the table shows the defaults. Exactly one beat schedules at
a time: ``beat_settings()`` selects celery-redbeat, which keeps the schedule in Redis and holds a
lock there; a second ``celery -A workers beat`` waits as a standby and takes over within
``BEAT_LOCK_TIMEOUT_S + BEAT_MAX_LOOP_S`` seconds of the active one dying. Every job is also
harmless when it runs twice or overlaps itself (each takes a Redis job lock, see
:mod:`pipeline.maintenance.locks`), because a lock in Redis is a guard, not a guarantee.

=============================================  ==========  ===========  ==========================
job (task name)                                every       queue        what
=============================================  ==========  ===========  ==========================
pipeline.maintenance.sweep_uidvalidity         5 min       maintenance  STATUS of the folders no
                                                                        poll or listener saw
                                                                        lately, spread over the
                                                                        interval: a folder whose
                                                                        UIDVALIDITY changed has
                                                                        its cached UIDs dropped
                                                                        and is REINDEXED (the
                                                                        stop rule; check_grants:
                                                                        grants due within 5 s
                                                                        share a task)
pipeline.maintenance.poll_folders              60 s        maintenance  STATUS of folders without
                                                                        IDLE; sync what changed
                                                                        (poll_grants: grants due
                                                                        within 5 s share a task)
pipeline.maintenance.discover_folders          5 min       maintenance  LIST every grant's folders,
                                                                        spread over the interval:
                                                                        sync and announce new
                                                                        ones, remove vanished ones
                                                                        (a grant's poll lists on
                                                                        its session when due; such
                                                                        grants get no task)
pipeline.maintenance.purge                     10 min      maintenance  rolling retention purge
pipeline.maintenance.reconcile                 5 min       maintenance  the REINDEX job: re-sync
                                                                        folders a sync left failed
                                                                        or stalled (a reindex
                                                                        included), grants stuck in
                                                                        their initial sync; delete
                                                                        orphans past their grace
                                                                        (message.deleted)
pipeline.outbox.sweep                          10 s        send         send what is due (scheduled
                                                                        sends, lost drains); close
                                                                        sends a dead worker left
pipeline.webhooks.sweep                        15 s        webhooks     re-enqueue undelivered
                                                                        notifications
pipeline.webhooks.purge                        1 h         webhooks     expire old delivery
                                                                        records
=============================================  ==========  ===========  ==========================

The design's "90-day purge and reindex jobs" are ``retention-purge`` and, for reindexing,
``uidvalidity-sweep`` (a changed UIDVALIDITY) and ``reconcile`` (whatever a lost event or a dead
worker left unsynced); a folder's reindex itself is its sync task
(:mod:`pipeline.sync`, ``FolderState.REINDEXING``).

This module imports nothing from ``workers`` because the Celery configuration imports it; a
unit test keeps the webhook entries' task names and queue equal to ``workers.tasks.webhooks``'.
"""

from __future__ import annotations

from typing import Any

from pipeline.config.beat import BeatSettings
from pipeline.redis import BATCH_TIMEOUT_S, BEAT_KEY_PREFIX, BEAT_LOCK_KEY

MAINTENANCE_QUEUE = "maintenance"
WEBHOOK_QUEUE = "webhooks"
SEND_QUEUE = "send"
WEBHOOK_SWEEP_INTERVAL_S = 15.0  # worst-case delay a lost Redis message adds to a delivery
WEBHOOK_PURGE_INTERVAL_S = 3600.0

# celery-redbeat: the active beat renews its lock every loop (at most BEAT_MAX_LOOP_S apart); a
# standby polls the lock every BEAT_MAX_LOOP_S. A dead beat's lock lapses after
# BEAT_LOCK_TIMEOUT_S, so a standby takes over within 30 + 5 s (the issue asks for a minute).
BEAT_LOCK_TIMEOUT_S = 30
BEAT_MAX_LOOP_S = 5


def _job(task: str, every_s: float, queue: str = MAINTENANCE_QUEUE) -> dict[str, Any]:
    # An entry that missed its slot by more than its interval is dropped, not replayed: the next
    # run does the same work (jobs are idempotent), so a beat outage causes no burst.
    return {
        "task": task,
        "schedule": float(every_s),
        "options": {"queue": queue, "expires": float(every_s)},
    }


def beat_schedule(beat: BeatSettings) -> dict[str, dict[str, Any]]:
    """The schedule, with the intervals of ``beat`` (``Settings.beat``)."""
    return {
        "uidvalidity-sweep": _job(
            "pipeline.maintenance.sweep_uidvalidity", beat.uidvalidity_sweep_interval_s
        ),
        "folder-poll": _job("pipeline.maintenance.poll_folders", beat.poll_interval_s),
        "retention-purge": _job("pipeline.maintenance.purge", beat.purge_interval_s),
        "reconcile": _job("pipeline.maintenance.reconcile", beat.reconcile_interval_s),
        "folder-discovery": _job(
            "pipeline.maintenance.discover_folders", beat.folder_discovery_interval_s
        ),
        "outbox-sweep": _job("pipeline.outbox.sweep", beat.outbox_sweep_interval_s, SEND_QUEUE),
        "webhooks-sweep": _job("pipeline.webhooks.sweep", WEBHOOK_SWEEP_INTERVAL_S, WEBHOOK_QUEUE),
        "webhooks-purge": _job("pipeline.webhooks.purge", WEBHOOK_PURGE_INTERVAL_S, WEBHOOK_QUEUE),
    }


# With the default intervals (model_construct: the defaults, without reading the environment).
BEAT_SCHEDULE: dict[str, dict[str, Any]] = beat_schedule(BeatSettings.model_construct())


def beat_settings(redis_url: str) -> dict[str, Any]:
    """Celery settings that make ``celery -A workers beat`` use celery-redbeat.

    Merged into the Celery configuration by ``workers.celeryconfig.celery_config``.
    """
    return {
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "beat_max_loop_interval": BEAT_MAX_LOOP_S,
        "redbeat_redis_url": redis_url,
        "redbeat_redis_options": {
            # the scheduler's client (redbeat builds it): a call fails instead of hanging
            "socket_timeout": BATCH_TIMEOUT_S,
            "socket_connect_timeout": BATCH_TIMEOUT_S,
        },
        "redbeat_key_prefix": BEAT_KEY_PREFIX,
        "redbeat_lock_key": BEAT_LOCK_KEY,
        "redbeat_lock_timeout": BEAT_LOCK_TIMEOUT_S,
    }
