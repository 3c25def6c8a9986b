"""Coalescing in Redis: many requests for the same work become one run, and none is lost.

One policy, written once, used by every piece of work that must not run twice at once:

- **Lock** (:func:`acquire`, :func:`acquire_many`, :func:`release`): ``SET key token NX PX
  ttl``. Never blocks: a request that finds the lock taken does not wait for it. Only the
  holder (same token) releases it, compared and deleted at once in Lua; the TTL is the safety
  net for a holder that died. The job locks of periodic tasks
  (:mod:`pipeline.maintenance.locks`), the UID-range claims of split syncs
  (``workers.chunks``) and the SMTP connection slots of a send drain
  (:mod:`pipeline.outbound.deliver`, renewed with :func:`renew_held`) are such locks.
- **Coalesced run** (:class:`Coalesced`): a lock plus a *dirty* flag, for work that a request
  arriving during a run must cause once more (a folder sync: the listener saw new mail while
  the folder was being synced)::

      request ──► acquire ──taken──► run (renew between steps) ──► release ──► take_rerun?
                    │                                                  yes ──► one more run
                    └──held──► busy(): set dirty; the first such request since the lock's
                               last lapse is asked to come back after it (the holder may have
                               died: its lock lapses and nobody would look again)

  However many requests arrive during a run, the holder runs once more, not once per
  request; and a holder that dies is covered by the one request told to come back.
- **Pending flag** (:func:`send_once`, :func:`clear`): at most one request queued until its
  task starts. ``SET flag NX EX ttl`` before sending; the task clears the flag when it
  *starts*, so a request that comes after the start (and may concern what the running task has
  already read) sends another; a failed send clears its flag at once, and the TTL bounds what a
  lost flag can hold back. Webhook dispatch and delivery kicks (``workers.webhook_queue``)
  and the coalesced run's "come back" request use it.

Not here, on purpose: the listener's debounce (:mod:`pipeline.listener.events`) folds the
IDLE notices of one folder within a second in the listener's own memory, on its event loop,
before anything reaches Redis: one process owns each folder's connection, so there is nothing
to share, and a Redis round trip per notice is what it exists to avoid. Its sends then meet
the folder sync's coalesced run here.

Nothing in this module knows Celery: the callers say what "send" and "come back" mean.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from pipeline.redis import folder_dirty_key, folder_lock_key, folder_retry_key

DIRTY_TTL_FACTOR = 10  # a dirty flag outlives the lock by this factor: set while a run holds
# it, it must last until that run (renewed between batches) ends and takes it

_RELEASE = """
local released = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    released = released + redis.call('DEL', key)
  end
end
return released
"""
# KEYS: lock keys held with one token. ARGV: the token. Deletes those still held with it.


def new_token() -> str:
    """A holder's token, unique to this process and call."""
    return f"{os.getpid()}:{uuid.uuid4().hex}"


def _ms(ttl_s: float) -> int:
    return max(int(ttl_s * 1000), 1)


def acquire(r: redis.Redis[bytes], key: str, token: str, ttl_s: float) -> bool:
    """Take the lock ``key`` for ``ttl_s`` seconds if nobody holds it; never blocks."""
    return bool(r.set(key, token, nx=True, px=_ms(ttl_s)))


def acquire_many(r: redis.Redis[bytes], keys: Sequence[str], token: str, ttl_s: float) -> set[str]:
    """:func:`acquire` for several locks in one round trip; returns the keys taken."""
    if not keys:
        return set()
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, token, nx=True, px=_ms(ttl_s))
    replies = pipe.execute()
    return {key for key, reply in zip(keys, replies, strict=True) if reply}


def release(r: redis.Redis[bytes], keys: Sequence[str], token: str) -> int:
    """Release the locks among ``keys`` still held with ``token`` (one round trip); a lock
    that lapsed and was taken by another holder is left alone. Returns how many were released."""
    if not keys:
        return 0
    return int(r.register_script(_RELEASE)(keys=list(keys), args=[token]))


_RENEW_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: one lock key. ARGV: the holder's token, the new TTL in ms. Renews it only if still held.


def renew_held(r: redis.Redis[bytes], key: str, token: str, ttl_s: float) -> bool:
    """Give the lock ``key`` ``ttl_s`` seconds from now if ``token`` still holds it (a holder
    whose lock lapsed and was taken by another does not extend the other's); returns whether
    it did."""
    return bool(r.register_script(_RENEW_HELD)(keys=[key], args=[token, _ms(ttl_s)]))


def renew(r: redis.Redis[bytes], key: str, ttl_s: float) -> None:
    """Give the lock ``key`` ``ttl_s`` seconds from now (its holder, between steps of a run)."""
    r.pexpire(key, _ms(ttl_s))


def send_once(r: redis.Redis[bytes], flag: str, ttl_s: int, send: Callable[[], None]) -> bool:
    """Call ``send`` unless a request under ``flag`` is pending; returns whether it was called.

    The flag stays until :func:`clear` (the task, as it starts) or ``ttl_s``. A ``send`` that
    raises clears it again, and the error propagates.
    """
    if not r.set(flag, b"1", nx=True, ex=ttl_s):
        return False
    try:
        send()
    except Exception:
        r.delete(flag)
        raise
    return True


def clear(r: redis.Redis[bytes], flag: str) -> None:
    """The pending request under ``flag`` has started: the next one is sent again."""
    r.delete(flag)


@dataclass(frozen=True)
class Busy:
    """What a request that found the run held should do."""

    wait_s: int  # look again this much later: once the holder's lock has lapsed, if it died
    come_back: bool  # this request is the one to do so (one at a time)


@dataclass(frozen=True)
class Coalesced:
    """One piece of work run by one holder at a time; requests during a run fold into one more.

    ``lock_key`` is held by the run (``ttl_s``, renewed between its steps); ``dirty_key`` says
    a request came during a run; ``retry_key`` is the pending flag of the request that comes
    back in case the holder died.
    """

    r: redis.Redis[bytes]
    lock_key: str
    dirty_key: str
    retry_key: str
    ttl_s: int

    def acquire(self, token: str) -> bool:
        """Take the run; False when someone runs it now (then call :meth:`busy`)."""
        return acquire(self.r, self.lock_key, token, self.ttl_s)

    def busy(self, *, recheck_s: int | None = None, retry_grace_s: int = 0) -> Busy:
        """A request found the run held: mark it dirty (the holder runs once more) and say
        when to look again: once the lock has lapsed (plus a second), or within ``recheck_s``
        when the request only has to see the run's end. The "come back" flag lasts until
        then, plus ``retry_grace_s``."""
        self.r.set(self.dirty_key, "1", ex=self.ttl_s * DIRTY_TTL_FACTOR)
        wait = max(int(self.r.ttl(self.lock_key)), 1) + 1
        if recheck_s is not None:
            wait = min(wait, recheck_s)
        come_back = bool(self.r.set(self.retry_key, "1", nx=True, ex=wait + retry_grace_s))
        return Busy(wait_s=wait, come_back=come_back)

    def renew(self) -> None:
        """The holder is still at it: the lock lasts ``ttl_s`` from now."""
        renew(self.r, self.lock_key, self.ttl_s)

    def release(self, token: str) -> None:
        """The holder is done (a lock that lapsed and was taken by another is left alone)."""
        release(self.r, [self.lock_key], token)

    def take_rerun(self) -> bool:
        """After a run: whether a request came during it (the flag is consumed: run once more)."""
        return self.r.getdel(self.dirty_key) is not None

    def held(self) -> bool:
        """Whether someone runs it now."""
        return bool(self.r.exists(self.lock_key))


# --- the folder sync (task ``pipeline.sync.folder``) --------------------------------------------


def folder_sync(
    r: redis.Redis[bytes], folder_id: str, uid_range: tuple[int, int] | None, ttl_s: int
) -> Coalesced:
    """The coalesced run of a folder's sync (or of one UID range of it). The dirty flag is
    the folder's: only a whole-folder run takes it."""
    return Coalesced(
        r,
        lock_key=folder_lock_key(folder_id, uid_range),
        dirty_key=folder_dirty_key(folder_id),
        retry_key=folder_retry_key(folder_id, uid_range),
        ttl_s=ttl_s,
    )
