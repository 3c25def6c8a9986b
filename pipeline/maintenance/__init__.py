"""Periodic upkeep driven by Celery beat (``beat_schedule.py``).

- :mod:`~pipeline.maintenance.locks`: a Redis lock per job, so a job run twice or overlapping
  itself does its work once.
- :mod:`~pipeline.maintenance.sweep`: the five-minute UIDVALIDITY sweep and the stop rule for
  servers that change UIDVALIDITY on every session.
- :mod:`~pipeline.maintenance.looks`: which folders' UIDVALIDITY the polls saw lately (Redis),
  so the sweep need not ask them again.
- :mod:`~pipeline.maintenance.purge`: the rolling retention purge, in bounded batches.
- :mod:`~pipeline.maintenance.reconcile`: re-enqueues work a lost Redis event left behind,
  and deletes the messages that stayed in no folder past the orphan grace.
- :mod:`~pipeline.maintenance.repository`: every query of the above.

Nothing here imports Celery: functions take a session factory or session, a Redis client and
an ``enqueue`` callback, so tests call them directly.
"""
