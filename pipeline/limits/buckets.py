"""Token buckets: per-provider and per-account rates shared by every process, in Redis.

Celery's ``rate_limit`` counts per worker process; providers count per account and per source.
Every worker process (and the listener and the API, for logins) asks Redis, where one Lua
script decides atomically. All times are the Redis server's clock (``TIME``), so machines with
skewed clocks agree.

Keys (built by :mod:`pipeline.redis`)::

    imap-pipeline:rl:<bucket>            hash {tokens, ts}: token bucket, PEXPIREd when full
        bucket = ops:p:<scope> | ops:a:<grant_id> | login:p:<scope> | login:a:<grant_id>
    imap-pipeline:limits:<provider>      hash: operator overrides of :class:`Limits` fields

A request of ``cost`` tokens takes them from *every* bucket it names (provider and account) or
from none, and learns how long to wait otherwise. A bucket refills at ``rate`` tokens per
second up to its capacity (the allowed burst, :func:`capacity`), so over any window ``T`` at
most ``rate * T + capacity`` requests pass. A caller that can wait without asking again (the
listener) may *reserve* instead (:meth:`RateLimiter.reserve_login`): the tokens are taken at
once, the buckets go into debt, and the caller uses them when the debt would have been
refilled, so queued callers need no polling and still pass at the bucket's rate. No token is
given while the account or its provider backs off (:mod:`pipeline.limits.backoff`).

Connection slots (how many sessions an account may have open, and who wins) are
:mod:`pipeline.limits.slots`; ``max_connections`` here is their cap. :meth:`RateLimiter.status`
shows all three.

Every Redis call goes through a client built with a socket timeout; a Redis error surfaces as
:class:`pipeline.errors.ServiceError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import redis

from pipeline import metrics
from pipeline.errors import ImapThrottledError
from pipeline.limits.backoff import Backoffs, scope_of
from pipeline.limits.slots import ConnectionSlots
from pipeline.presets import preset
from pipeline.redis import account_backoff_key, bucket_key, limits_key, provider_backoff_key

BURST_S = 1.0  # a bucket holds this many seconds' worth of tokens...
MIN_BURST = 3.0  # ...and at least this many (a first sync opens a few sessions at once), but
# never more than one minute's worth (a "6 logins per minute" account stays near 6)

# Provider-wide defaults: what one source (our install) may ask of a provider in total. The
# presets give the per-account figures; these are conservative across all accounts.
PROVIDER_OPS_PER_S = 200.0
PROVIDER_LOGINS_PER_MIN = 600.0


class RateLimited(ImapThrottledError):
    """No token or connection slot now; try again after ``retry_after_s`` seconds.

    A throttle we impose on ourselves, so it is an :class:`ImapThrottledError`: code that
    retries throttles (Celery ``autoretry_for``) also retries this. Catch it *before*
    ``ImapThrottledError`` where the two are handled differently (reschedule, versus record a
    provider back-off).
    """

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Limits:
    """How hard one provider may be used. Rates are per second or per minute as named."""

    account_ops_per_s: float
    account_logins_per_min: float
    provider_ops_per_s: float
    provider_logins_per_min: float
    max_connections: int  # per account, listener + workers together


@dataclass(frozen=True)
class LoginTurn:
    """The answer of :meth:`RateLimiter.reserve_login`."""

    granted: bool
    """True: the login token is the caller's; log in after :attr:`wait_s`. False: nothing was
    taken (a back-off, or a longer queue than the caller would wait); ask again then."""
    wait_s: float
    backing_off: bool = False
    """Not granted because the account or its provider is in back-off (not a long queue)."""

    @property
    def retry_after_s(self) -> float:
        """Seconds to wait before asking again; 0.0 when the token was taken for now."""
        return 0.0 if self.granted else self.wait_s


def default_limits(provider: str) -> Limits:
    """The preset's per-account limits and the provider-wide defaults."""
    p = preset(provider)
    return Limits(
        account_ops_per_s=p.ops_per_second,
        account_logins_per_min=float(p.logins_per_minute),
        provider_ops_per_s=PROVIDER_OPS_PER_S,
        provider_logins_per_min=PROVIDER_LOGINS_PER_MIN,
        max_connections=p.max_connections,
    )


# KEYS: bucket hashes. ARGV: cost, the longest wait in ms a caller may reserve (0: none), then
# rate (tokens/s), capacity and spare per key (tokens the caller must leave in the bucket).
# Returns 0 when the tokens were taken from every bucket; -wait (ms) when they were reserved:
# taken now, the buckets going into debt, and the caller may use them after that wait without
# asking again; else the wait in ms until they could be taken.
BUCKET_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local cost = tonumber(ARGV[1])
local reserve_ms = tonumber(ARGV[2])
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[i * 3])
  local cap = tonumber(ARGV[i * 3 + 1])
  local need = cost + tonumber(ARGV[i * 3 + 2])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or cap
  local ts = tonumber(state[2]) or now
  tokens = math.min(cap, tokens + math.max(0, now - ts) * rate / 1000)
  levels[i] = tokens
  if tokens < need then
    wait = math.max(wait, math.ceil((need - tokens) * 1000 / rate))
  end
end
if wait > reserve_ms then
  return wait
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[i * 3])
  local cap = tonumber(ARGV[i * 3 + 1])
  local left = levels[i] - cost
  redis.call('HSET', key, 'tokens', left, 'ts', now)
  -- expire when full again: a bucket in debt must not be forgiven by an early expiry
  redis.call('PEXPIRE', key, math.ceil((cap - left) * 1000 / rate) + 1000)
end
return -wait
"""


def capacity(rate_per_s: float) -> float:
    """How many tokens a bucket refilling at ``rate_per_s`` holds (its allowed burst)."""
    return max(1.0, min(MIN_BURST, rate_per_s * 60.0), rate_per_s * BURST_S)


class RateLimiter(Backoffs):
    """Shared limits for one process: token buckets, and the back-off they respect (the
    methods of :class:`~pipeline.limits.backoff.Backoffs`). Cheap to create; holds only the
    Redis client.

    Args:
        client: A Redis client built by :func:`pipeline.redis.client` (every call bounded).
    """

    def __init__(self, client: redis.Redis[bytes]) -> None:
        super().__init__(client)
        self._bucket = client.register_script(BUCKET_LUA)

    # --- configuration ------------------------------------------------------------------
    def limits(self, provider: str) -> Limits:
        """The provider's limits with operator overrides from ``imap-pipeline:limits:<p>``."""
        base = default_limits(provider)
        raw = self._call(self._redis.hgetall, limits_key(preset(provider).name))
        overrides: dict[str, Any] = {}
        names = {f.name: f.type for f in fields(Limits)}
        for key, value in raw.items():
            name = key.decode()
            if name in names:
                number = float(value)
                overrides[name] = int(number) if name == "max_connections" else number
        return replace(base, **overrides)

    def set_limits(self, provider: str, values: Mapping[str, float]) -> None:
        """Store operator overrides for a provider (takes effect at the next request)."""
        unknown = set(values) - {f.name for f in fields(Limits)}
        if unknown:
            raise ValueError(f"unknown limit(s): {', '.join(sorted(unknown))}")
        key = limits_key(preset(provider).name)
        self._call(self._redis.hset, key, mapping={k: str(v) for k, v in values.items()})

    # --- tokens ---------------------------------------------------------------------------
    def try_login(
        self,
        provider: str,
        imap_host: str,
        grant_id: str,
        *,
        spare: float = 0.0,
        limits: Limits | None = None,
        backoff_checked: bool = False,
    ) -> float:
        """Take a login token of the account and of the provider; 0.0, or seconds to wait.

        ``spare``: tokens of the account to leave in its bucket for others (bulk sync leaves
        some for the listener and the API, :data:`pipeline.imap.connections.BULK_LOGIN_SPARE`).
        ``limits`` and ``backoff_checked`` as in :meth:`reserve_login`.
        """
        turn = self.reserve_login(
            provider,
            imap_host,
            grant_id,
            max_wait_s=0.0,
            spare=spare,
            limits=limits,
            backoff_checked=backoff_checked,
        )
        return turn.retry_after_s

    def reserve_login(
        self,
        provider: str,
        imap_host: str,
        grant_id: str,
        *,
        max_wait_s: float,
        spare: float = 0.0,
        limits: Limits | None = None,
        backoff_checked: bool = False,
    ) -> LoginTurn:
        """Take a login token now for a login up to ``max_wait_s`` from now.

        For callers that can wait without asking again (the listener's reconnects): the token
        is theirs once :attr:`LoginTurn.granted`, and they log in after ``wait_s``. Waiting
        callers queue in the buckets instead of polling them, so a reconnect wave of thousands
        of connections costs one Redis call per login, and every login still happens within
        the provider's and the account's budget. A back-off or a longer wait is not reserved:
        ask again after ``retry_after_s``.

        ``limits``: the provider's, when the caller read them already (:meth:`limits`);
        ``backoff_checked``: the caller saw no back-off a moment ago (:meth:`backoff`), so it
        is not read again.
        """
        limits = limits or self.limits(provider)
        scope = scope_of(provider, imap_host)
        backoff = 0.0 if backoff_checked else self.backoff_remaining(scope, grant_id)
        if backoff > 0:
            return LoginTurn(granted=False, wait_s=backoff, backing_off=True)
        # An account may open the connections it is allowed at once (a first sync starts one
        # per worker), but never more than one minute's worth of logins in a burst.
        wait = self._take(
            [
                (f"login:p:{scope}", limits.provider_logins_per_min / 60.0),
                (f"login:a:{grant_id}", limits.account_logins_per_min / 60.0),
            ],
            1,
            account_burst=min(float(limits.max_connections), limits.account_logins_per_min),
            reserve_s=max_wait_s,
            account_spare=spare,
        )
        turn = LoginTurn(granted=wait <= 0, wait_s=abs(wait))
        if turn.granted:
            metrics.LOGINS.labels(provider).inc()
        return turn

    def try_ops(
        self,
        provider: str,
        imap_host: str,
        grant_id: str,
        cost: int = 1,
        *,
        limits: Limits | None = None,
        backoff_checked: bool = False,
    ) -> float:
        """Take ``cost`` operation tokens of the account and provider; 0.0, or seconds to wait.
        ``limits`` and ``backoff_checked`` as in :meth:`reserve_login`."""
        limits = limits or self.limits(provider)
        scope = scope_of(provider, imap_host)
        backoff = 0.0 if backoff_checked else self.backoff_remaining(scope, grant_id)
        if backoff > 0:
            return backoff
        return self._take(
            [
                (f"ops:p:{scope}", limits.provider_ops_per_s),
                (f"ops:a:{grant_id}", limits.account_ops_per_s),
            ],
            cost,
        )

    def _take(
        self,
        buckets: list[tuple[str, float]],
        cost: int,
        *,
        account_burst: float = 0.0,
        reserve_s: float = 0.0,
        account_spare: float = 0.0,
    ) -> float:
        """Take ``cost`` tokens from every bucket or from none; ``account_burst`` raises the
        burst of the account buckets (``:a:``) only, never a provider's, and
        ``account_spare`` tokens must stay in them (at most what the burst leaves beside
        ``cost``, so a caller is never locked out for good).

        Returns 0.0 (taken), seconds to wait before asking again, or, with ``reserve_s``, minus
        the seconds (at most ``reserve_s``) after which the tokens taken now may be used."""
        keys = [bucket_key(name) for name, _ in buckets]
        args: list[float] = [cost, int(reserve_s * 1000)]
        for name, rate in buckets:
            if rate <= 0:
                raise ValueError("a rate limit must be positive")
            account = ":a:" in name
            cap = max(capacity(rate), cost, account_burst if account else 0.0)
            spare = min(account_spare, cap - cost) if account else 0.0
            args.extend([rate, cap, spare])
        wait_ms = int(self._call(self._bucket, keys=keys, args=args))
        return wait_ms / 1000.0

    def status(self, provider: str, imap_host: str, grant_id: str) -> dict[str, Any]:
        """What the limits do to this grant now, for ``grants status`` and the API."""
        scope = scope_of(provider, imap_host)
        limits = self.limits(provider)
        pipe = self._redis.pipeline(transaction=False)
        pipe.pttl(account_backoff_key(grant_id))
        pipe.pttl(provider_backoff_key(scope))
        account_ms, provider_ms = self._call(pipe.execute)
        held = ConnectionSlots(self._redis).held(grant_id)
        return {
            "account_backoff_s": max(int(account_ms), 0) / 1000.0,
            "provider_backoff_s": max(int(provider_ms), 0) / 1000.0,
            "connections": sum(held.values()),
            "connections_by_priority": {p.name.lower(): n for p, n in held.items()},
            "max_connections": limits.max_connections,
        }
