"""Back-off after throttling, shared by every process in Redis.

A throttling answer (``ImapThrottledError``) puts the account in back-off, doubling from
``ACCOUNT_BACKOFF_BASE_S`` up to ``ACCOUNT_BACKOFF_MAX_S`` while throttles repeat; when
``PROVIDER_THROTTLED_ACCOUNTS`` accounts of one provider are throttled within
``PROVIDER_THROTTLE_WINDOW_S``, the whole provider backs off for ``PROVIDER_BACKOFF_S``. A
server that broke a bound puts its account alone in back-off (:meth:`Backoffs.misbehaved`).
Token requests (:mod:`pipeline.limits.buckets`) are refused while either backs off.

Keys (built by :mod:`pipeline.redis`)::

    imap-pipeline:backoff:a:<grant_id>   string with TTL: the account is backing off
    imap-pipeline:backoff:p:<scope>      string with TTL: the whole provider is backing off
    imap-pipeline:backoff:n:<grant_id>   counter: the account's throttles in a row
    imap-pipeline:throttles:<scope>      sorted set: recent throttled accounts of a provider

``scope`` is the preset name (``yahoo``); for ``generic`` it is ``generic:<imap host>``, since
unrelated servers must not share one bucket (:func:`scope_of`). Times are the Redis server's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import redis

from pipeline import metrics
from pipeline.errors import ServiceError
from pipeline.presets import preset
from pipeline.redis import (
    account_backoff_key,
    backoff_streak_key,
    provider_backoff_key,
    throttles_key,
)

ACCOUNT_BACKOFF_BASE_S = 30.0  # first back-off after a throttling answer
ACCOUNT_BACKOFF_MAX_S = 15 * 60.0  # providers lift most throttles within minutes
THROTTLE_MEMORY_S = 60 * 60  # consecutive throttles within this long double the back-off
PROVIDER_THROTTLED_ACCOUNTS = 3  # this many throttled accounts at once: the provider is pushing
PROVIDER_THROTTLE_WINDOW_S = 60.0
PROVIDER_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Backoff:
    """The answer of :meth:`RateLimiter.backoff`."""

    remaining_s: float  # until the account and its provider are out of back-off; 0.0: not in it
    streak: bool  # the account has throttles counted (a good login forgets them)


def scope_of(provider: str, imap_host: str) -> str:
    """The provider bucket name: the preset, or ``generic:<host>`` for unknown servers."""
    name = preset(provider).name
    return f"{name}:{imap_host.lower()}" if name == "generic" else name


# KEYS: recent-throttles zset of the provider. ARGV: grant id, window ms.
# Returns how many distinct accounts were throttled within the window.
THROTTLE_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""


class Backoffs:
    """The back-off of accounts and providers, for one process. Cheap to create; holds only
    the Redis client.

    Args:
        client: A Redis client built by :func:`pipeline.redis.client` (every call bounded).

    Raises (every method): :class:`~pipeline.errors.ServiceError` when Redis fails.
    """

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._redis = client
        self._throttle = client.register_script(THROTTLE_LUA)

    @property
    def redis(self) -> redis.Redis[bytes]:
        """The Redis client (the connection manager shares it)."""
        return self._redis

    def throttled(self, provider: str, imap_host: str, grant_id: str) -> float:
        """Record a throttling answer; returns the account's back-off in seconds."""
        metrics.THROTTLES.labels(provider).inc()
        scope = scope_of(provider, imap_host)
        backoff = self.misbehaved(grant_id)
        window_ms = int(PROVIDER_THROTTLE_WINDOW_S * 1000)
        recent = int(
            self._call(
                self._throttle,
                keys=[throttles_key(scope)],
                args=[grant_id, window_ms],
            )
        )
        if recent >= PROVIDER_THROTTLED_ACCOUNTS:
            self._call(
                self._redis.set,
                provider_backoff_key(scope),
                "1",
                px=int(PROVIDER_BACKOFF_S * 1000),
            )
        return backoff

    def misbehaved(self, grant_id: str) -> float:
        """Put the account alone in back-off (doubling while it repeats), e.g. after its server
        broke a bound (:class:`pipeline.errors.ImapLimitError`): one server is no reason to
        slow its whole provider down. Returns the back-off in seconds."""
        count_key = backoff_streak_key(grant_id)
        streak = int(self._call(self._redis.incr, count_key))
        self._call(self._redis.expire, count_key, THROTTLE_MEMORY_S)
        doubled = math.ldexp(ACCOUNT_BACKOFF_BASE_S, min(streak - 1, 30))
        backoff = min(doubled, ACCOUNT_BACKOFF_MAX_S)
        self._call(self._redis.set, account_backoff_key(grant_id), "1", px=int(backoff * 1000))
        return backoff

    def recovered(self, grant_id: str) -> None:
        """A session worked again: later throttles start from the base back-off."""
        self._call(self._redis.delete, backoff_streak_key(grant_id))

    def backoff_remaining(self, scope: str, grant_id: str) -> float:
        """Seconds until the account and its provider are out of back-off (0.0: not in it)."""
        return self.backoff(scope, grant_id).remaining_s

    def backoff(self, scope: str, grant_id: str) -> Backoff:
        """The account's and its provider's back-off, and whether the account has a streak of
        throttles to forget after its next good login (:meth:`recovered`): one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.pttl(account_backoff_key(grant_id))
        pipe.pttl(provider_backoff_key(scope))
        pipe.exists(backoff_streak_key(grant_id))
        account_ms, provider_ms, streak = self._call(pipe.execute)
        remaining = float(max(int(account_ms), int(provider_ms), 0)) / 1000.0
        return Backoff(remaining_s=remaining, streak=bool(int(streak)))

    # --- plumbing -------------------------------------------------------------------------
    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise ServiceError(f"Redis is not usable for rate limits: {exc}") from exc
