"""Grant leases and listener heartbeats, in Redis.

Keys (every expiry is measured on the Redis server's clock, so listeners on machines with
skewed clocks agree):

``imap-pipeline:listeners``  (sorted set)
    member: listener id; score: expiry in unix ms. A listener re-adds itself every
    ``lease_renew_s``; members past their score are dropped by whoever looks. Its size is the
    number of live listeners, used for the fair share.

``imap-pipeline:lease:<grant_id>``  (string, with a TTL)
    value: the owning listener's id; TTL ``lease_ttl_s``. Claimed when absent, renewed and
    released only by its owner (compare-and-set in Lua, :data:`RENEW_LUA`). One owner per
    grant; when the owner dies the key expires and another listener claims it on its next
    round.

Connection slots of the listener's IDLE connections are the account's
(:mod:`pipeline.limits.slots`), counted with the workers' and the API's.

Fair share: with ``G`` grants to watch and ``L`` live listeners, each listener holds at most
``ceil(G / L)`` leases. A new listener's heartbeat lowers everybody's cap; those above it release
the surplus and the newcomer claims it, so listeners converge to an even spread.

Every call carries a timeout through the client's socket timeout and an ``asyncio.timeout``
(:data:`pipeline.redis.CALL_TIMEOUT_S`). Key names come from :mod:`pipeline.redis`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis

from pipeline.redis import CALL_TIMEOUT_S, LISTENERS_KEY, lease_key

CLAIM_BATCH = 200  # leases claimed per round trip

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "

HEARTBEAT_LUA = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
"""
)
"""KEYS: listeners zset. ARGV: listener id, ttl ms, 1 join/renew | 0 leave. Returns live count."""

RENEW_LUA = """
local kept = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    kept[#kept + 1] = 1
  elseif not owner then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    kept[#kept + 1] = 1
  else
    kept[#kept + 1] = 0
  end
end
return kept
"""
"""KEYS: lease keys. ARGV: owner id, ttl ms. Returns 1 per key still ours (renewed), else 0.

A lease that vanished (Redis flushed or failed over, or a renewal came late) and that nobody
else claimed meanwhile is simply taken again: the owner is still watching the grant, so
restarting its connections would only cost logins.
"""

RELEASE_LUA = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    n = n + redis.call('DEL', key)
  end
end
return n
"""
"""KEYS: lease keys. ARGV: owner id. Deletes only the keys this owner holds."""


def fair_share(grants: int, live_listeners: int) -> int:
    """Most grants one listener should hold: ``ceil(grants / live listeners)``."""
    return math.ceil(grants / max(live_listeners, 1))


class LeaseStore:
    """One listener's view of the lease keys. Every method is one or a few Redis round trips.

    Raises (every method):
        redis.exceptions.RedisError, OSError, TimeoutError: Redis is unreachable or slow; the
            caller decides (the listener keeps its watchers until its leases may have lapsed).
    """

    def __init__(
        self,
        redis: aioredis.Redis[bytes],
        listener_id: str,
        *,
        lease_ttl_s: float,
    ) -> None:
        self._redis = redis
        self.listener_id = listener_id
        self._lease_ttl_ms = int(lease_ttl_s * 1000)
        self._heartbeat = redis.register_script(HEARTBEAT_LUA)
        self._renew = redis.register_script(RENEW_LUA)
        self._release = redis.register_script(RELEASE_LUA)

    # --- listeners ----------------------------------------------------------------------------
    async def heartbeat(self) -> int:
        """Say this listener is alive; returns how many listeners are (this one included)."""
        async with asyncio.timeout(CALL_TIMEOUT_S):
            live = await self._heartbeat(
                keys=[LISTENERS_KEY], args=[self.listener_id, self._lease_ttl_ms, "1"]
            )
        return int(live)

    async def leave(self) -> None:
        """Remove this listener from the live set (clean shutdown)."""
        async with asyncio.timeout(CALL_TIMEOUT_S):
            await self._heartbeat(keys=[LISTENERS_KEY], args=[self.listener_id, 0, "0"])

    # --- grant leases -------------------------------------------------------------------------
    async def claim(self, candidates: Sequence[str], want: int) -> list[str]:
        """Claim up to ``want`` of ``candidates`` (in order) that nobody else holds.

        A lease this listener still holds (say, it stopped its watchers while Redis was slow)
        counts as claimed: the same script as :meth:`renew` takes free keys and keeps own ones.
        """
        won: list[str] = []
        index = 0
        while index < len(candidates) and len(won) < want:
            batch = list(candidates[index : index + min(CLAIM_BATCH, want - len(won))])
            index += len(batch)
            async with asyncio.timeout(CALL_TIMEOUT_S):
                kept = await self._renew(
                    keys=[lease_key(g) for g in batch], args=[self.listener_id, self._lease_ttl_ms]
                )
            won.extend(g for g, ok in zip(batch, kept, strict=True) if int(ok))
        return won

    async def renew(self, grant_ids: Iterable[str]) -> set[str]:
        """Extend this listener's leases; returns the grants whose lease was lost."""
        ids = list(grant_ids)
        if not ids:
            return set()
        async with asyncio.timeout(CALL_TIMEOUT_S):
            kept = await self._renew(
                keys=[lease_key(g) for g in ids], args=[self.listener_id, self._lease_ttl_ms]
            )
        return {g for g, ok in zip(ids, kept, strict=True) if not int(ok)}

    async def release(self, grant_ids: Iterable[str]) -> None:
        """Give leases back (only those this listener still holds)."""
        keys = [lease_key(g) for g in grant_ids]
        if keys:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self._release(keys=keys, args=[self.listener_id])

    async def owner(self, grant_id: str) -> str | None:
        """Who holds a grant's lease (None if nobody)."""
        async with asyncio.timeout(CALL_TIMEOUT_S):
            value = await self._redis.get(lease_key(grant_id))
        return value.decode() if isinstance(value, bytes) else value
