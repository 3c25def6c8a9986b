"""The one connection manager of an IMAP account: every session of the listener, the workers
and the API holds a slot here, counted against the provider's cap, with priorities.

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
  ``INTERACTIVE_WAIT_S``: bulk sync takes no new slot meanwhile, a lingering pooled session
  is closed at once, and a running sync task stops at its next committed batch and continues
  in a new task (pre-emption; a batch is at most ``sync_batch_size`` messages).
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
preset's cap (:meth:`pipeline.ratelimit.RateLimiter.limits`; the listener reads it every
``CAP_CACHE_S``) and is shared by the same rule; ``0`` pauses the provider's accounts (no new
connection at all). A lowered cap takes effect as holders finish (nobody is disconnected; a
new slot is given only while the total is under the cap), a raised one at the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline.errors import ImapError, ServiceError
from pipeline.imap.client import ImapSession
from pipeline.presets import preset
from pipeline.redis import CALL_TIMEOUT_S, LISTENERS_KEY, conn_key, limits_key, want_key

log = logging.getLogger(__name__)

IDLE_FOLDERS = 2  # the listener watches Inbox and Sent
INTERACTIVE_WAIT_S = 5.0  # an API request waits this long for a slot, then gets a 429
INTERACTIVE_POLL_S = 0.05  # how often a waiting API request asks again
WANT_TTL_S = 2.0  # a refused holder's request for a slot stands this long (renewed by asking)
REAPER_TICK_S = 0.25  # how often a process checks whether its pooled sessions are wanted
CHECK_AFTER_S = 15.0  # a pooled session idle longer than this gets a NOOP before reuse
BULK_LINGER_S = 5.0  # a sync task's session stays pooled this long for the next chunk
INTERACTIVE_LINGER_S = 30.0  # an API session stays pooled this long for the next request
BULK_SLOT_TTL_S = 180.0  # renewed at every batch (a batch is far shorter); lapses after a crash
INTERACTIVE_SLOT_TTL_S = 120.0  # one request's IMAP work (bounded by its commands' deadlines)
LINGER_GRACE_S = 5.0  # a pooled slot outlives the linger by this much if its process dies
# login tokens bulk sync leaves while a listener is alive: the listener's two IDLE logins (Inbox
# and Sent, at once) and an API login. With 2, a listener that logged in after the sync's last
# chunks took both and the API's next download waited a token's refill (6 s on generic) past its
# 3 s wait: 429 (seen in CI, test_connection_priorities)
BULK_LOGIN_SPARE = 3.0
BULK_LOGIN_SPARE_UNWATCHED = 1.0  # no listener is alive: an API login only
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


# --- pooled sessions of a worker or API process ---------------------------------------------


@dataclass
class _Pooled:
    imap: ImapSession
    holder: str
    since: float


class NoSlot(Exception):
    """Every slot of the account this priority may use is taken (the want flag is raised)."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"no IMAP connection of the account is free now (cap {cap})")
        self.cap = cap


class SessionPool:
    """The sessions of one process (a worker or the API) for one priority, with their slots.

    A session is *busy* from :meth:`take` or :meth:`admit` until :meth:`give_back` (or its
    close), then *pooled* for up to ``linger_s`` while its slot stays counted; a reaper thread
    closes a pooled session (releasing its slot) at the end of the linger or as soon as
    somebody waits for a slot of its account. Thread-safe; the reaper starts in the process
    that first pools a session (so it survives Celery's fork).

    Without ``slots`` (no Redis) nothing is counted.
    """

    def __init__(
        self, slots: ConnectionSlots | None, priority: Priority, *, linger_s: float
    ) -> None:
        self._slots = slots
        self.priority = priority
        self.linger_s = linger_s
        self._busy_ttl_s = BULK_SLOT_TTL_S if priority is Priority.BULK else INTERACTIVE_SLOT_TTL_S
        # A pooled bulk session is not closed for another bulk task of the account: that task
        # comes back later anyway (rescheduled), by when the linger has ended, and closing it
        # only made the next chunk here log in again (with the login budget, seconds).
        self._gives_way_above = Priority.BULK if priority is Priority.BULK else None
        self._lock = threading.Lock()
        self._pooled: dict[str, _Pooled] = {}
        self._busy: dict[int, tuple[str, str]] = {}  # id(imap) -> (grant id, holder)
        self._reaper_pid: int | None = None
        self._stop = threading.Event()

    # --- a session's life -------------------------------------------------------------------
    def take(self, grant_id: str) -> ImapSession | None:
        """The account's pooled session if it still answers (NOOP after a quiet spell), busy
        again; None when there is none."""
        with self._lock:
            pooled = self._pooled.pop(grant_id, None)
            if pooled is not None:
                self._busy[id(pooled.imap)] = (grant_id, pooled.holder)
        if pooled is None:
            return None
        try:
            if time.monotonic() - pooled.since >= CHECK_AFTER_S:
                pooled.imap.noop()
            if self._slots is not None:
                self._slots.renew(grant_id, pooled.holder, self._busy_ttl_s)
        except (ImapError, ServiceError):
            pooled.imap.close()
            return None
        return pooled.imap

    def slot(self, grant_id: str, cap: int, *, wait_s: float = 0.0) -> str:
        """A new slot for a session about to log in; returns its holder id.

        Raises:
            NoSlot: None free for this priority within ``wait_s`` (the want flag is raised,
                so pooled sessions and lower priorities make room).
            ServiceError: Redis failed.
        """
        holder = new_holder(self.priority)
        if self._slots is not None and not self._slots.wait(
            grant_id, holder, cap, self._busy_ttl_s, wait_s
        ):
            raise NoSlot(cap)
        return holder

    def unslot(self, grant_id: str, holder: str) -> None:
        """Give back a slot from :meth:`slot` whose login did not happen."""
        if self._slots is not None:
            with contextlib.suppress(ServiceError):
                self._slots.release(grant_id, holder)

    def admit(self, grant_id: str, holder: str, imap: ImapSession) -> ImapSession:
        """Tie a freshly logged-in session to its slot: busy now, the slot goes when it closes."""
        with self._lock:
            self._busy[id(imap)] = (grant_id, holder)
        imap.on_close = lambda: self._closed(imap)
        return imap

    def keep_alive(self, imap: ImapSession) -> bool:
        """Renew a busy session's slot; True when a higher priority waits for a slot of its
        account (a bulk task should stop at this point and continue in a new task)."""
        with self._lock:
            entry = self._busy.get(id(imap))
        if entry is None or self._slots is None:
            return False
        grant_id, holder = entry
        self._slots.renew(grant_id, holder, self._busy_ttl_s)
        return self.priority is Priority.BULK and self._slots.preempted(grant_id)

    def give_back(self, imap: ImapSession, *, healthy: bool) -> None:
        """End a session's use: pooled (a healthy one, if the account has none pooled and
        nobody waits for its slot), else closed."""
        with self._lock:
            entry = self._busy.get(id(imap))
        if entry is None or not healthy or imap.broken or self.linger_s <= 0:
            imap.close()
            return
        grant_id, holder = entry
        try:
            if self._slots is not None:
                if self._slots.wanted([grant_id], self._gives_way_above):
                    imap.close()
                    return
                self._slots.renew(grant_id, holder, self.linger_s + LINGER_GRACE_S)
        except ServiceError:
            imap.close()
            return
        with self._lock:
            if grant_id in self._pooled:
                spare: ImapSession | None = imap
            else:
                spare = None
                self._busy.pop(id(imap), None)
                self._pooled[grant_id] = _Pooled(imap, holder, time.monotonic())
        if spare is not None:
            spare.close()
            return
        self._ensure_reaper()

    def forget(self, grant_id: str) -> None:
        """Close the account's pooled session (its settings changed, or it was deleted)."""
        with self._lock:
            pooled = self._pooled.pop(grant_id, None)
        if pooled is not None:
            self._close_pooled(grant_id, pooled)

    def close_all(self) -> None:
        """Close every pooled session (process shutdown) and stop the reaper."""
        self._stop.set()
        with self._lock:
            pooled, self._pooled = self._pooled, {}
        for grant_id, entry in pooled.items():
            self._close_pooled(grant_id, entry)

    def pooled(self) -> list[str]:
        """Grant ids with a pooled session (for tests and status)."""
        with self._lock:
            return sorted(self._pooled)

    # --- plumbing ---------------------------------------------------------------------------
    def _closed(self, imap: ImapSession) -> None:
        with self._lock:
            entry = self._busy.pop(id(imap), None)
        if entry is not None:
            self.unslot(*entry)

    def _close_pooled(self, grant_id: str, pooled: _Pooled) -> None:
        with self._lock:
            self._busy[id(pooled.imap)] = (grant_id, pooled.holder)  # so close releases it
        pooled.imap.close()

    def reap(self) -> None:
        """Close pooled sessions past their linger or wanted by somebody (the reaper's tick)."""
        with self._lock:
            grants = list(self._pooled)
        if not grants:
            return
        wanted: set[str] = set()
        if self._slots is not None:
            try:
                wanted = self._slots.wanted(grants, self._gives_way_above)
            except ServiceError:
                wanted = set(grants)  # cannot tell: do not keep a slot someone may need
        now = time.monotonic()
        for grant_id in grants:
            with self._lock:
                pooled = self._pooled.get(grant_id)
                if pooled is None or (
                    grant_id not in wanted and now - pooled.since < self.linger_s
                ):
                    continue
                del self._pooled[grant_id]
            self._close_pooled(grant_id, pooled)

    def _ensure_reaper(self) -> None:
        pid = os.getpid()
        with self._lock:
            if self._reaper_pid == pid:
                return
            self._reaper_pid = pid
        self._stop.clear()
        thread = threading.Thread(target=self._reaper, name="imap-pool-reaper", daemon=True)
        thread.start()

    def _reaper(self) -> None:
        while not self._stop.wait(REAPER_TICK_S):
            try:
                self.reap()
            except Exception:  # the reaper must outlive a bug in one tick
                log.exception("closing pooled IMAP sessions failed")
