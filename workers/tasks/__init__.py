"""The Celery tasks, one module per area; each task takes ids, opens a session and calls a typed
function. What every task shares is written once: the policies (reschedule a rate-limited run,
retry transient errors, a broken bound costs the grant, a grant's IMAP session) in
:mod:`workers.base`, the per-process resources in :mod:`workers.resources`, coalescing in
:mod:`pipeline.coalesce`. The work the sync and beat tasks call on a worker's IMAP sessions is
:mod:`workers.folder_runs` and :mod:`workers.grant_work`.

- :mod:`workers.tasks.sync`: ``pipeline.grants.create``, ``pipeline.sync.grant``,
  ``pipeline.sync.folder`` (queues ``sync.<provider>``).
- :mod:`workers.tasks.beat`: ``pipeline.maintenance.*``, fired by Celery beat
  (``beat_schedule.py``).
- :mod:`workers.tasks.webhooks`: ``pipeline.webhooks.*`` (queue ``webhooks``), asked for by
  :mod:`workers.webhook_queue` (``kick()``, which writers call after committing outbox rows).
- :mod:`workers.tasks.send`: ``pipeline.outbox.*`` (queue ``send``).

Task names are the public contract (any Celery client may enqueue them, the README lists
them); the modules that define them are not.
"""
