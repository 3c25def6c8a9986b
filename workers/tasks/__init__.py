"""The Celery tasks, one module per area; each task takes ids, opens a session and calls a typed
function of :mod:`pipeline` (the per-process resources and policies they share are in
:mod:`workers.resources`; coalescing is :mod:`pipeline.coalesce`).

- :mod:`workers.tasks.sync`: ``pipeline.grants.create``, ``pipeline.sync.grant``,
  ``pipeline.sync.folder`` (queues ``sync.<provider>``).
- :mod:`workers.tasks.beat`: ``pipeline.maintenance.*``, fired by Celery beat
  (``beat_schedule.py``).
- :mod:`workers.tasks.webhooks`: ``pipeline.webhooks.*`` (queue ``webhooks``) and ``kick()``,
  which writers call after committing outbox rows.
- :mod:`workers.tasks.send`: ``pipeline.outbox.*`` (queue ``send``).

Task names are the public contract (any Celery client may enqueue them, the README lists
them); the modules that define them are not.
"""
