"""What each watched folder's connection is doing, in Redis, for operators and tests.

``imap-pipeline:listener:status:<grant_id>``  (hash)
    field: folder id; value: JSON ``{"state", "error", "retry_at", "listener", "at"}``:
    ``state`` is a :class:`~pipeline.listener.idle.WatchState` value (``idling``, ``polling``,
    ``backoff``, ``login_queued``, ``waiting_slot``, ``invalid``); ``error`` says why a
    connection ended (a broken read bound names the bound: "more than 10,000 untagged
    responses within 60 s of IDLE (a flood)") or why it waits for a slot; ``retry_at`` is
    when the next attempt is due (unix seconds), ``at`` when this was written.
    ``imap-pipeline limits show PROVIDER --grant G`` prints it.

Written when a connection starts watching or stops (never per notice), coalesced per folder
and sent by one task, so a reconnect wave costs one pipelined round trip per batch and the
pending updates never exceed one per watched folder. The listener deletes a grant's key when it
stops watching it; :data:`STATUS_TTL_S` bounds what a crashed listener leaves behind (its
successor overwrites the fields within a lease time). Best effort: Redis being away costs
the status, never the watching.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline.errors import ServiceError
from pipeline.redis import CALL_TIMEOUT_S, lease_key, listener_status_key

log = logging.getLogger(__name__)

STATUS_TTL_S = 7 * 24 * 3600  # a crashed listener's entries go after a week at most
ERROR_MAX_CHARS = 300  # of an error kept in the status: enough to name the bound broken
BATCH_MAX = 500  # folder updates per pipelined round trip


class StatusBoard:
    """Collects status updates on the event loop; :meth:`run` writes them to Redis."""

    def __init__(self, redis_client: aioredis.Redis[bytes], listener_id: str) -> None:
        self._redis = redis_client
        self.listener_id = listener_id
        # (grant, folder) -> JSON, or (grant, "") -> None: delete the grant's key
        self._pending: dict[tuple[str, str], str | None] = {}
        self._wake = asyncio.Event()

    def report(
        self,
        grant_id: str,
        folder_id: str,
        state: str,
        error: str | None = None,
        retry_in_s: float | None = None,
    ) -> None:
        """Note a folder's state (replaces whatever of it was not written yet). Never blocks."""
        now = time.time()
        self._pending[(grant_id, folder_id)] = json.dumps(
            {
                "state": state,
                "error": error[:ERROR_MAX_CHARS] if error else None,
                "retry_at": round(now + retry_in_s, 1) if retry_in_s is not None else None,
                "listener": self.listener_id,
                "at": round(now, 1),
            }
        )
        self._wake.set()

    def forget(self, grant_id: str) -> None:
        """This listener no longer watches the grant: remove its status."""
        for key in [k for k in self._pending if k[0] == grant_id]:
            del self._pending[key]
        self._pending[(grant_id, "")] = None
        self._wake.set()

    async def run(self) -> None:
        """Write pending updates until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending now (in batches); a Redis error drops the batch (logged)."""
        while self._pending:
            batch = list(self._pending.items())[:BATCH_MAX]
            for key, _ in batch:
                del self._pending[key]
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    pipe = self._redis.pipeline(transaction=False)
                    for (grant_id, folder_id), value in batch:
                        if value is None:
                            pipe.delete(listener_status_key(grant_id))
                        else:
                            pipe.hset(listener_status_key(grant_id), folder_id, value)
                            pipe.expire(listener_status_key(grant_id), STATUS_TTL_S)
                    await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("could not write %d connection statuses (%s)", len(batch), exc)


def read_status(client: redis.Redis[bytes], grant_id: str) -> dict[str, dict[str, Any]]:
    """A grant's listener status per folder id (empty when no listener reported it), with
    ``retry_in_s`` worked out from ``retry_at``.

    Raises:
        ServiceError: Redis cannot be reached.
    """
    try:
        raw: dict[bytes, bytes] = client.hgetall(listener_status_key(grant_id))
    except (RedisError, OSError) as exc:
        raise ServiceError(f"Cannot read the listener status from Redis: {exc}") from exc
    out: dict[str, dict[str, Any]] = {}
    for folder_id, value in raw.items():
        entry: dict[str, Any] = json.loads(value)
        retry_at = entry.get("retry_at")
        entry["retry_in_s"] = max(0.0, round(retry_at - time.time(), 1)) if retry_at else None
        out[folder_id.decode()] = entry
    return out


WATCHING_STATES = frozenset({"idling", "renewing"})  # WatchState values of a working connection


def idle_watched_folders(client: redis.Redis[bytes], grant_id: str) -> frozenset[str]:
    """The folders of a grant a live listener reports in IDLE: the grant's lease is held (its
    owner alive) and the folder's status, written by that owner, is idling. What a change there
    needs is the listener's event, not a poll's STATUS. Best effort: Redis away or flushed, or
    a status write lost, gives fewer folders (they are polled), never more.
    """
    return idle_watched_folders_of(client, [grant_id])[grant_id]


def idle_watched_folders_of(
    client: redis.Redis[bytes], grant_ids: Sequence[str]
) -> dict[str, frozenset[str]]:
    """:func:`idle_watched_folders` of several grants in one round trip, by grant id."""
    try:
        pipe = client.pipeline(transaction=False)
        for grant_id in grant_ids:
            pipe.get(lease_key(grant_id))
            pipe.hgetall(listener_status_key(grant_id))
        replies = pipe.execute()
    except (RedisError, OSError):
        return dict.fromkeys(grant_ids, frozenset())
    return {
        grant_id: _watching(owner, raw)
        for grant_id, owner, raw in zip(grant_ids, replies[::2], replies[1::2], strict=True)
    }


def _watching(owner: bytes | None, raw: dict[bytes, bytes] | None) -> frozenset[str]:
    """The folders of one grant's status hash that its lease's ``owner`` reports in IDLE."""
    if not owner:
        return frozenset()
    watched = set()
    for folder_id, value in (raw or {}).items():
        try:
            entry = json.loads(value)
        except ValueError:
            continue
        if entry.get("state") in WATCHING_STATES and entry.get("listener") == owner.decode():
            watched.add(folder_id.decode())
    return frozenset(watched)
