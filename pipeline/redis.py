"""Redis, once: every key imap-pipeline writes and every client it opens.

No other module spells a key (``tests/unit/test_redis_keys.py`` holds them to it), so an
operator who sees a key in ``redis-cli`` finds its owner by grepping this file for its prefix,
and a rename cannot miss a reader. Key names are a contract with running deployments: a
release that renames one strands what the old name holds (leases, back-offs, locks), so
they do not change.

Keys (``<grant_id>``, ``<folder_id>``: ids of rows; expiries on the Redis server's clock)::

    listeners, leases, connection slots (pipeline.listener, pipeline.limits.slots)
    imap-pipeline:listeners                     zset  live listeners, scored by heartbeat expiry
    imap-pipeline:lease:<grant_id>              str   owning listener id, TTL lease_ttl_s
    imap-pipeline:conn:<grant_id>               zset  the account's connection slots (holder ->
                                                      expiry ms)
    imap-pipeline:conn:<grant_id>:want:<p>      str   a holder of priority p waits for a slot
    imap-pipeline:listener:status:<grant_id>    hash  folder id -> JSON: an IDLE connection's state

    rate limits (pipeline.limits)
    imap-pipeline:rl:<bucket>                   hash  token bucket {tokens, ts}
    imap-pipeline:backoff:a:<grant_id>          str   the account backs off (TTL)
    imap-pipeline:backoff:p:<scope>             str   the whole provider backs off (TTL)
    imap-pipeline:backoff:n:<grant_id>          int   the account's streak of throttles
    imap-pipeline:throttles:<scope>             zset  recently throttled accounts of a provider
    imap-pipeline:limits:<provider>             hash  operator overrides of the limits
    imap-pipeline:smtp-slot:<grant_id>:<n>      str   one of the account's SMTP sending slots

    sync tasks (workers, pipeline.coalesce)
    imap-pipeline:lock:folder:<folder_id>[:<lo>-<hi>]  str  a folder (or UID range) syncing now
    imap-pipeline:dirty:folder:<folder_id>      str   the folder changed while it was syncing
    imap-pipeline:retry:folder:<folder_id>[:<lo>-<hi>]  str  a refused request comes back later
    imap-pipeline:done:folder:<folder_id>:<lo>-<hi>  str  a UID range of a first sync is done
    imap-pipeline:ranges:<grant_id>             set   a grant's UID ranges still to sync
    imap-pipeline:folders-waiting:<grant_id>    list  a grant's folder ids waiting, in order

    periodic jobs (beat, pipeline.maintenance)
    imap-pipeline:redbeat:*                     celery-redbeat's schedule; :lock its leader
    imap-pipeline:job:<name>                    str   a periodic job runs now (one at a time)
    imap-pipeline:folders-discovered:<grant_id> str   when the grant's folders were listed
    imap-pipeline:uidvalidity-looked:<grant_id> hash  folder id -> when UIDVALIDITY was checked

    webhooks (workers.webhook_queue)
    imap-pipeline:webhooks:dispatch-queued      str   a dispatch task is queued (coalescing)
    imap-pipeline:webhooks:deliver-queued:<id>  str   a destination's drain is queued
    imap-pipeline:webhooks:deliver-at:<id>      str   when a destination's next drain is due

    retired: no longer written; a deployment upgraded in place may still hold them (DEL frees)
    imap-pipeline:listener:changed              hash  a listener's last change per folder (the
                                                      reconciliation it was kept for never read it)

Clients: :func:`client` (blocking) and :func:`async_client` (asyncio, the listener) bound every
round trip, connect included, by one of the named timeouts below; a caller picks the one that
states its use.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

# --- timeouts: one Redis round trip, connect included --------------------------------------
CALL_TIMEOUT_S = 5.0
"""Processes that answer someone now (the API's rate limits, the listener, webhook flags, an
inline sync): a Redis slower than this is treated as down and the caller takes its fallback
(the listener fails open, the API answers 503, a lost flag only delays)."""
BATCH_TIMEOUT_S = 10.0
"""Celery workers and operator commands: a slow moment of Redis is waited out rather than
failing a task or a command; the task's own time limit bounds the rest."""
SCRAPE_TIMEOUT_S = 2.0
"""A metrics scrape's queue-length read: it fails rather than hangs the scrape (Prometheus
gives a scrape 10 s by default)."""
BROKER_TIMEOUT_S = 30.0
"""Celery's broker connection (kombu builds it, ``workers.celeryconfig``): one round trip of
a task message sent or fetched. The listener's enqueue waits as long
(:data:`pipeline.listener.events.ENQUEUE_TIMEOUT_S`)."""
BROKER_CONNECT_TIMEOUT_S = 10.0
"""Connecting to Celery's broker."""
LISTENER_POOL_SIZE = 32
"""Redis connections shared by all IDLE connections of one listener process."""
LISTENER_POOL_WAIT_S = 10.0
"""How long a listener's Redis call waits for a free connection of its pool."""


def client(url: str, *, timeout_s: float) -> redis.Redis[bytes]:
    """A blocking client whose every round trip (and connect) fails after ``timeout_s``.

    Args:
        url: ``redis://`` or ``rediss://`` URL (``IMAP_PIPELINE_REDIS_URL``).
        timeout_s: One of the named timeouts of this module, or a probe's own bound.
    """
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def async_client(
    url: str,
    *,
    timeout_s: float = CALL_TIMEOUT_S,
    pool_size: int = LISTENER_POOL_SIZE,
    pool_wait_s: float = LISTENER_POOL_WAIT_S,
) -> aioredis.Redis[bytes]:
    """An asyncio client on a bounded pool: at most ``pool_size`` connections, a call waits up
    to ``pool_wait_s`` for one, and every round trip (and connect) fails after ``timeout_s``.
    The client owns its pool: ``await client.aclose()`` closes both."""
    pool: aioredis.BlockingConnectionPool[aioredis.Connection] = (
        aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=pool_wait_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
    )
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # what from_pool does (redis-py >= 5.0.1 only)
    return client


# --- listeners, leases, connection slots ----------------------------------------------------
LISTENERS_KEY = "imap-pipeline:listeners"


def lease_key(grant_id: str) -> str:
    """The listener lease of a grant."""
    return f"imap-pipeline:lease:{grant_id}"


def listener_status_key(grant_id: str) -> str:
    """The IDLE connection states of a grant's watched folders."""
    return f"imap-pipeline:listener:status:{grant_id}"


def conn_key(grant_id: str) -> str:
    """The connection-slot set of a grant."""
    return f"imap-pipeline:conn:{grant_id}"


def want_key(grant_id: str, priority: int) -> str:
    """The flag of a holder of ``priority`` waiting for a connection slot of a grant."""
    return f"imap-pipeline:conn:{grant_id}:want:{priority}"


# --- rate limits ------------------------------------------------------------------------------
def bucket_key(bucket: str) -> str:
    """A token bucket (``ops:p:<scope>``, ``login:a:<grant_id>``, ...)."""
    return f"imap-pipeline:rl:{bucket}"


def account_backoff_key(grant_id: str) -> str:
    """Present while an account backs off."""
    return f"imap-pipeline:backoff:a:{grant_id}"


def provider_backoff_key(scope: str) -> str:
    """Present while a whole provider (scope) backs off."""
    return f"imap-pipeline:backoff:p:{scope}"


def backoff_streak_key(grant_id: str) -> str:
    """How many throttles in a row an account has had."""
    return f"imap-pipeline:backoff:n:{grant_id}"


def throttles_key(scope: str) -> str:
    """The recently throttled accounts of a provider (scope)."""
    return f"imap-pipeline:throttles:{scope}"


def limits_key(provider: str) -> str:
    """Operator overrides of a provider's limits (``provider``: the preset's name)."""
    return f"imap-pipeline:limits:{provider}"


def smtp_slot_key(grant_id: str, slot: int) -> str:
    """One of the SMTP sending slots of an account."""
    return f"imap-pipeline:smtp-slot:{grant_id}:{slot}"


# --- sync tasks -------------------------------------------------------------------------------
def _span(uid_range: tuple[int, int] | None) -> str:
    """A UID range's part of a key (``:<lo>-<hi>``); none for a whole folder."""
    return f":{uid_range[0]}-{uid_range[1]}" if uid_range is not None else ""


def folder_lock_key(folder_id: str, uid_range: tuple[int, int] | None = None) -> str:
    """The lock of a folder's sync (or of one UID range of it)."""
    return f"imap-pipeline:lock:folder:{folder_id}{_span(uid_range)}"


def folder_retry_key(folder_id: str, uid_range: tuple[int, int] | None = None) -> str:
    """Set while one request refused by the lock is due to come back (the holder may die)."""
    return f"imap-pipeline:retry:folder:{folder_id}{_span(uid_range)}"


def folder_dirty_key(folder_id: str) -> str:
    """Set when a folder changed while its sync held the lock."""
    return f"imap-pipeline:dirty:folder:{folder_id}"


def range_done_key(folder_id: str, uid_range: tuple[int, int]) -> str:
    """Set when a UID range of a folder's first sync is done."""
    return f"imap-pipeline:done:folder:{folder_id}{_span(uid_range)}"


def pending_ranges_key(grant_id: str) -> str:
    """A grant's UID ranges still to sync (members ``<folder id>:<lo>-<hi>``)."""
    return f"imap-pipeline:ranges:{grant_id}"


def folders_waiting_key(grant_id: str) -> str:
    """A grant's folder ids waiting for a sync, in order."""
    return f"imap-pipeline:folders-waiting:{grant_id}"


# --- periodic jobs ----------------------------------------------------------------------------
BEAT_KEY_PREFIX = "imap-pipeline:redbeat:"
BEAT_LOCK_KEY = BEAT_KEY_PREFIX + "lock"


def job_key(name: str) -> str:
    """The lock of a periodic job."""
    return f"imap-pipeline:job:{name}"


def folders_discovered_key(grant_id: str) -> str:
    """When a grant's folders were last listed."""
    return f"imap-pipeline:folders-discovered:{grant_id}"


def uidvalidity_looked_key(grant_id: str) -> str:
    """When each folder of a grant last had its UIDVALIDITY checked."""
    return f"imap-pipeline:uidvalidity-looked:{grant_id}"


# --- webhooks ---------------------------------------------------------------------------------
WEBHOOK_KICK_KEY = "imap-pipeline:webhooks:dispatch-queued"


def webhook_deliver_queued_key(destination_id: str) -> str:
    """Set while a destination's drain task is queued."""
    return f"imap-pipeline:webhooks:deliver-queued:{destination_id}"


def webhook_deliver_at_key(destination_id: str) -> str:
    """When a destination's next drain is due."""
    return f"imap-pipeline:webhooks:deliver-at:{destination_id}"
