"""Connection slots of an IMAP account, in Redis: every session of the listener, the workers
and the API holds one, counted against the provider's cap, with priorities.

The sessions themselves are the connection manager's (:mod:`pipeline.imap.connections`: a
worker's or the API's pooled sessions; the listener's IDLE connections), which takes a slot
here before every login and gives it back when the session closes.

Providers count open connections per account (Gmail about 15, many servers 3 to 5) and refuse
logins past their limit. Each account's slots are one sorted set in Redis,
``imap-pipeline:conn:<grant_id>``: member = holder, score = expiry (unix ms, Redis clock).
The holder's prefix is its priority::

    priority      holder                                  who
    0 IDLE        listener:<listener id>:<folder id>      Inbox and Sent IDLE (the listener)
    1 INTERACTIVE api:<host>:<pid>:<random>               an API request (attachment, write-back)
    2 BULK        worker:<host>:<pid>:<random>            a sync task of a Celery worker

How a cap of ``C`` slots is shared (:func:`shares`)::

    C:            1     2     3     4     5     8    15
    IDLE          -     1     2     2     2     2     2    reserved: Inbox first, then Sent
    INTERACTIVE   -     -     -     1     1     1     1    reserved for API requests
    BULK (most)   1     1     1     1     2     5    12    what is left
    unreserved work slots are shared: an API request may take any slot bulk sync does not hold

- IDLE slots are reserved while a listener is alive (a heartbeat in
  :data:`pipeline.redis.LISTENERS_KEY`): nobody else takes them, even while the
  listener is reconnecting, so Inbox and Sent are always watched. At least one slot is kept
  for work (sync and the API), or nothing would ever be synced: with ``C = 1`` nothing is
  watched (beat's polling finds new mail), with ``C = 2`` only the Inbox is (Sent is polled).
- While no listener is alive (an engine run without one, or all of them down) the IDLE slots
  nobody holds are lent to work: a first sync runs on ``C - 1`` connections (one per worker
  process of the default 4 under the generic cap of 5), not on 2 with 2 idle slots beside it.
  Not per grant (while no listener holds the grant's lease): a listener claims a new grant
  within seconds of its folders, and then waited for the lent slots and login tokens to come
  back (its Sent was watched seconds after the sync's end instead of at once). A listener
  that starts meanwhile asks for its slots (its ``want``): borrowing tasks stop at their next
  batch, pooled sessions close, nothing more is lent; it may take the free slot the API's
  reservation keeps (an API request that finds none takes one from bulk sync by its own
  ``want``).
- An API request is served within a second. With ``C >= 4`` one slot is reserved for it, so it
  never waits for bulk sync. It may also take any free work slot. When none is free (``C <= 3``
  or several requests at once), it asks (the ``want`` flag below) and waits up to
  ``INTERACTIVE_WAIT_S`` (this and the ``BULK_*`` and ``REAPER_TICK_S`` figures below are
  the pool's, :mod:`pipeline.imap.connections`): bulk sync takes no new slot meanwhile, a
  lingering pooled session is closed at once, and a running sync task stops at its next
  committed batch and continues in a new task (pre-emption; a batch is at most
  ``Settings.sync.batch_size`` messages).
- Bulk sync uses what is left and never the reserved slots (but the lent ones), nor the
  account's last login tokens (``BULK_LOGIN_SPARE``: a sync's many short tasks must not spend
  the login budget the API's and the listener's next login needs; while no listener is
  alive, only the API's, ``BULK_LOGIN_SPARE_UNWATCHED``). A task holds its slot only while
  it runs: its session goes back to this process's pool when the task ends, where it may stay
  open, still counted, for at most ``BULK_LINGER_S`` (the next chunk of the same grant reuses
  it without a new login) and only while neither the listener nor the API asks for a slot of
  that account.

Why reservation plus pre-emption, not pre-emption alone: a sync task notices a request only
between batches (a FETCH in flight cannot be interrupted safely), which takes longer than a
second on a slow server; the reserved slot makes the common case immediate, and pre-emption
covers the small caps where no slot can be spared.

``want``: a holder refused a slot sets ``imap-pipeline:conn:<grant_id>:want:<priority>`` for
``WANT_TTL_S`` (renewed while it keeps asking). A want of a higher priority refuses new slots
to lower ones; pooled sessions of the account are closed when any want is present (their
process's reaper looks every ``REAPER_TICK_S``), a pooled bulk session only for the listener's
or an API request's; a running bulk task stops early when an IDLE or
INTERACTIVE want is present (:meth:`ConnectionSlots.preempted`).

A slot is never held by a process that is not using it: it is released when its session
closes (:attr:`~pipeline.imap.client.ImapSession.on_close`), and every slot has a short
expiry that its holder renews while it uses it (listener: every lease round; bulk: every
batch; API: one request), so a crashed holder's slot lapses on its own.

Operator overrides: ``imap-pipeline:limits:<provider>`` field ``max_connections`` replaces the
preset's cap (:meth:`pipeline.limits.RateLimiter.limits`; the listener reads it every
``CAP_CACHE_S``) and is shared by the same rule; ``0`` pauses the provider's accounts (no new
connection at all). A lowered cap takes effect as holders finish (nobody is disconnected; a
new slot is given only while the total is under the cap), a raised one at the next request.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline.errors import ServiceError
from pipeline.presets import preset
from pipeline.redis import CALL_TIMEOUT_S, LISTENERS_KEY, conn_key, limits_key, want_key

IDLE_FOLDERS = 2  # the listener watches Inbox and Sent
INTERACTIVE_POLL_S = 0.05  # how often a waiting API request asks again
WANT_TTL_S = 2.0  # a refused holder's request for a slot stands this long (renewed by asking)
CAP_CACHE_S = 60.0  # an operator's change of max_connections reaches listeners this fast


class Priority(IntEnum):
    """Who holds a connection; lower wins."""

    IDLE = 0
    INTERACTIVE = 1
    BULK = 2


HOLDER_PREFIX = {Priority.IDLE: "listener:", Priority.INTERACTIVE: "api:", Priority.BULK: "worker:"}


@dataclass(frozen=True)
class Shares:
    """How one account's ``cap`` connections are shared (see the module docstring)."""

    cap: int
    idle: int  # reserved for the listener's IDLE connections
    interactive: int  # reserved for API requests
    bulk: int  # the most bulk sync may hold


def shares(cap: int) -> Shares:
    """Split ``cap`` connections: IDLE first (keeping one for work), then one for the API when
    at least two work slots remain, the rest for bulk sync."""
    if cap <= 0:  # an operator's pause: nobody connects
        return Shares(0, 0, 0, 0)
    idle = max(0, min(IDLE_FOLDERS, cap - 1))
    rest = cap - idle
    interactive = 1 if rest >= 2 else 0
    return Shares(cap, idle, interactive, rest - interactive)


def idle_allowed(role: str, cap: int) -> bool:
    """Whether the listener may watch a folder of ``role`` under ``cap``: the Inbox takes the
    first IDLE slot, Sent (or any other) only the second."""
    reserved = shares(cap).idle
    return reserved >= (1 if role == "inbox" else IDLE_FOLDERS)


def want_keys(grant_id: str) -> list[str]:
    """The want flags of a grant, by priority (IDLE, INTERACTIVE, BULK)."""
    return [want_key(grant_id, p.value) for p in Priority]


def new_holder(priority: Priority) -> str:
    """A holder id for one worker or API session: ``<prefix><host>:<pid>:<random>``."""
    return f"{HOLDER_PREFIX[priority]}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def idle_holder(listener_id: str, folder_id: str) -> str:
    """The holder id of a listener's IDLE connection to a folder."""
    return f"{HOLDER_PREFIX[Priority.IDLE]}{listener_id}:{folder_id}"


_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "

ACQUIRE_LUA = (
    _NOW_MS
    + """
local key = KEYS[1]
local holder = ARGV[1]
local cap = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local idle_reserved = tonumber(ARGV[4])
local bulk_max = tonumber(ARGV[5])
local want_ttl = tonumber(ARGV[6])
local function class_of(member)
  if string.sub(member, 1, 9) == 'listener:' then return 0 end
  if string.sub(member, 1, 4) == 'api:' then return 1 end
  return 2
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local mine = class_of(holder)
local ok = false
local curable = false
if redis.call('ZSCORE', key, holder) then
  ok = true
else
  local held = {[0] = 0, [1] = 0, [2] = 0}
  local total = 0
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local c = class_of(member)
    held[c] = held[c] + 1
    total = total + 1
  end
  local outranked = false
  for p = 0, mine - 1 do
    if redis.call('EXISTS', KEYS[2 + p]) == 1 then outranked = true end
  end
  -- IDLE slots nobody can use (no listener is alive) are lent to work
  local idle_kept = idle_reserved
  if redis.call('ZCOUNT', KEYS[5], now, '+inf') == 0 then
    idle_kept = math.min(idle_reserved, held[0])
  end
  local work = total - held[0]
  local room = false
  if mine == 0 then
    room = held[0] < idle_reserved
    curable = room
  elseif mine == 1 then
    room = work < cap - idle_kept
    curable = cap - idle_reserved > 0
  else
    room = work < cap - idle_kept and held[2] < bulk_max + idle_reserved - idle_kept
    curable = bulk_max > 0
  end
  ok = room and total < cap and not outranked
  -- the listener has all its slots now: its want holds nobody back any longer
  if ok and mine == 0 and held[0] + 1 >= idle_reserved then redis.call('DEL', KEYS[2]) end
end
if ok then
  redis.call('ZADD', key, now + ttl, holder)
  if redis.call('PTTL', key) < ttl * 2 then redis.call('PEXPIRE', key, ttl * 2) end
  return 1
end
if curable then redis.call('SET', KEYS[2 + mine], '1', 'PX', want_ttl) end
return 0
"""
)
"""KEYS: conn zset, want flags (IDLE, INTERACTIVE, BULK), the live listeners. ARGV:
holder, cap, ttl ms, IDLE reserved, bulk max, want ttl ms. Returns 1 when the holder has (or
renewed) a slot; else 0, raising its want flag if others giving way could make room (not for a
third IDLE folder, nor under a cap of 0). A listener given its last slot clears its want."""

RENEW_LUA = (
    _NOW_MS
    + """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  if redis.call('PTTL', key) < ttl * 2 then redis.call('PEXPIRE', key, ttl * 2) end
end
return #KEYS
"""
)
"""KEYS: conn zsets (a key per holder). ARGV: ttl ms, then one holder per key.

Re-adds a holder that vanished (Redis flushed): the connection is open, so it must count."""


LISTENING_LUA = _NOW_MS + "return redis.call('ZCOUNT', KEYS[1], now, '+inf')"
"""KEYS: the live listeners (:data:`pipeline.redis.LISTENERS_KEY`). Returns how many
have a heartbeat that has not expired."""


def _acquire_args(holder: str, cap: int, ttl_s: float) -> list[int | str]:
    share = shares(cap)
    return [
        holder,
        share.cap,
        int(ttl_s * 1000),
        share.idle,
        share.bulk,
        int(WANT_TTL_S * 1000),
    ]


class ConnectionSlots:
    """Slot calls on a blocking Redis client (workers, the API).

    Raises (every method): :class:`~pipeline.errors.ServiceError` when Redis fails.
    """

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._redis = client
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._listening = client.register_script(LISTENING_LUA)

    def acquire(self, grant_id: str, holder: str, cap: int, ttl_s: float) -> bool:
        """Take (or renew) ``holder``'s slot; False (and the holder's want raised) if refused."""
        keys = [conn_key(grant_id), *want_keys(grant_id), LISTENERS_KEY]
        return bool(self._call(self._acquire, keys=keys, args=_acquire_args(holder, cap, ttl_s)))

    def wait(self, grant_id: str, holder: str, cap: int, ttl_s: float, wait_s: float) -> bool:
        """:meth:`acquire`, asking again every ``INTERACTIVE_POLL_S`` for up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while not self.acquire(grant_id, holder, cap, ttl_s):
            if time.monotonic() >= deadline:
                return False
            time.sleep(INTERACTIVE_POLL_S)
        return True

    def renew(self, grant_id: str, holder: str, ttl_s: float) -> None:
        """Extend a held slot (re-adding it if Redis lost it)."""
        self._call(self._renew, keys=[conn_key(grant_id)], args=[int(ttl_s * 1000), holder])

    def release(self, grant_id: str, holder: str) -> None:
        """Give a slot back."""
        self._call(self._redis.zrem, conn_key(grant_id), holder)

    def wanted(self, grant_ids: Sequence[str], above: Priority | None = None) -> set[str]:
        """Those of ``grant_ids`` for which somebody is waiting for a slot (of a priority
        higher than ``above``, when given)."""
        pipe = self._redis.pipeline(transaction=False)
        for grant_id in grant_ids:
            keys = want_keys(grant_id)
            pipe.exists(*(keys if above is None else keys[: above.value]))
        counts = self._call(pipe.execute)
        return {g for g, n in zip(grant_ids, counts, strict=True) if int(n)}

    def preempted(self, grant_id: str) -> bool:
        """True when the listener or an API request waits for a slot of the account (a running
        bulk task then stops at its next batch)."""
        idle, interactive, _ = want_keys(grant_id)
        return bool(int(self._call(self._redis.exists, idle, interactive)))

    def listening(self) -> bool:
        """Whether any listener is alive (while none is, IDLE reservations are lent)."""
        return bool(int(self._call(self._listening, keys=[LISTENERS_KEY], args=[])))

    def held(self, grant_id: str) -> dict[Priority, int]:
        """Live slots of an account by priority."""
        seconds, micros = self._call(self._redis.time)
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        members = self._call(self._redis.zrangebyscore, conn_key(grant_id), now_ms, "+inf")
        counts = dict.fromkeys(Priority, 0)
        for member in members:
            counts[priority_of(member.decode())] += 1
        return counts

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RedisError as exc:
            raise ServiceError(f"Redis is not usable for connection slots: {exc}") from exc


def priority_of(holder: str) -> Priority:
    """A holder's priority, from its prefix."""
    for priority, prefix in HOLDER_PREFIX.items():
        if holder.startswith(prefix):
            return priority
    return Priority.BULK


class AsyncConnectionSlots:
    """Slot calls on an asyncio Redis client (the listener), each under
    :data:`pipeline.redis.CALL_TIMEOUT_S`. Raise Redis's own errors (``RedisError``,
    ``OSError``, ``TimeoutError``); the listener decides (it fails open: watching matters more
    than the cap while Redis is away).
    """

    def __init__(self, client: aioredis.Redis[bytes], *, ttl_s: float) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._caps: dict[str, tuple[int, float]] = {}  # provider -> (cap, loop time read)

    async def cap(self, provider: str) -> int:
        """Connections one account of ``provider`` may hold: the operator's override, else
        the preset's ``max_connections`` (cached ``CAP_CACHE_S``; the preset's when Redis does
        not answer)."""
        name = preset(provider).name
        now = asyncio.get_running_loop().time()
        cached = self._caps.get(name)
        if cached is not None and now - cached[1] < CAP_CACHE_S:
            return cached[0]
        cap = preset(provider).max_connections
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                raw = await self._redis.hget(limits_key(name), "max_connections")
            if raw:
                cap = max(1, int(float(raw)))
        except (RedisError, OSError, TimeoutError, ValueError):
            pass
        self._caps[name] = (cap, now)
        return cap

    async def acquire(self, grant_id: str, holder: str, cap: int) -> bool:
        """Take (or renew) an IDLE slot; False when the account has none to give."""
        keys = [conn_key(grant_id), *want_keys(grant_id), LISTENERS_KEY]
        async with asyncio.timeout(CALL_TIMEOUT_S):
            got = await self._acquire(keys=keys, args=_acquire_args(holder, cap, self._ttl_s))
        return bool(int(got))

    async def renew(self, slots: Sequence[tuple[str, str]]) -> None:
        """Keep ``(grant_id, holder)`` slots alive."""
        if slots:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self._renew(
                    keys=[conn_key(g) for g, _ in slots],
                    args=[int(self._ttl_s * 1000), *(h for _, h in slots)],
                )

    async def release(self, grant_id: str, holder: str) -> None:
        """Give a slot back."""
        async with asyncio.timeout(CALL_TIMEOUT_S):
            await self._redis.zrem(conn_key(grant_id), holder)
