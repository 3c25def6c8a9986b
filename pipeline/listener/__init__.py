"""IDLE listeners: watch every valid grant's Inbox and Sent live and signal changes.

A listener process (``imap-pipeline listen``) holds a fair share of all grants through Redis
leases, keeps one IMAP IDLE connection per watched folder on one asyncio event loop, and turns
every change into a coalesced, durable ``pipeline.sync.folder`` enqueue. It never writes message
rows; its only database write marks a grant invalid after a refused login.

Redis keys (named in :mod:`pipeline.redis`, used by the modules below): the live listeners
(``imap-pipeline:listeners``), one lease per grant (``imap-pipeline:lease:<grant_id>``), the
account's connection slots (``imap-pipeline:conn:<grant_id>``, the connection manager's) and
the state of every IDLE connection (``imap-pipeline:listener:status:<grant_id>``).

Modules: :mod:`~pipeline.listener.idle` (one connection's state machine, speaking IMAP through
the asyncio client :mod:`pipeline.imap.aio`),
:mod:`~pipeline.listener.events` (coalesced enqueues), :mod:`~pipeline.listener.leases`
(Redis leases and heartbeats), :mod:`~pipeline.listener.process` (the process),
:mod:`~pipeline.listener.status` (connection states for operators),
:mod:`~pipeline.listener.repository` (which folders of which valid grants to watch),
:mod:`~pipeline.config.listener` (``IMAP_PIPELINE_LISTENER_*``).

The listener uses the rate limits and the connection manager; neither imports the listener (the
key of the live listeners, which slots read, is :data:`pipeline.redis.LISTENERS_KEY`).
"""
