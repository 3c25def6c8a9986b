"""IDLE listeners: watch every valid grant's Inbox and Sent live and signal changes.

A listener process (``imap-pipeline listen``) holds a fair share of all grants through Redis
leases, keeps one IMAP IDLE connection per watched folder on one asyncio event loop, and turns
every change into a coalesced, durable ``pipeline.sync.folder`` enqueue. It never writes message
rows; its only database write marks a grant invalid after a refused login.

Redis keys (details in the modules that own them)::

    imap-pipeline:listeners              zset  live listeners, scored by heartbeat expiry (ms)
    imap-pipeline:lease:<grant_id>       str   owning listener id, TTL lease_ttl_s
    imap-pipeline:conn:<grant_id>        zset  connection slots of the account (listener and
                                               workers), scored by expiry (ms)
    imap-pipeline:listener:changed       hash  "<grant_id>:<folder_id>" -> unix ms of the last
                                               change seen, for reconciliation
    imap-pipeline:listener:status:<grant_id>  hash  folder id -> JSON: the connection's state,
                                               why it last ended, when it is retried

Modules: :mod:`~pipeline.listener.protocol` (a small IMAP client for IDLE),
:mod:`~pipeline.listener.idle` (one connection's state machine),
:mod:`~pipeline.listener.events` (coalesced enqueues), :mod:`~pipeline.listener.leases`
(Redis leases, heartbeats, connection slots), :mod:`~pipeline.listener.process` (the process),
:mod:`~pipeline.listener.status` (connection states for operators),
:mod:`~pipeline.listener.settings` (``IMAP_PIPELINE_LISTENER_*``).

This package module imports nothing: :mod:`pipeline.ratelimit` (loaded by workers) imports
:mod:`~pipeline.listener.leases`, which must not drag in the listener process and its imports.
"""
