"""The UID ranges of a grant's split initial syncs that still wait, so a process holding a
session of the grant runs them without a new connection.

A large folder's first task splits it into UID ranges
(:attr:`pipeline.sync.run.SyncOutcome.ranges`), each enqueued as its own
``pipeline.sync.folder`` task. A pooled IMAP session serves only the process that holds it, and
bulk sync may hold only a few (2 under the generic cap of 5 while a listener runs), so chunk
tasks landing on the other worker processes were refused a slot and came back 5 s later. Now
the ranges are also recorded here, and a process that ends a chunk with a healthy session
claims the next waiting range of the grant and runs it on that session::

    plan ──► record ranges (pending_ranges_key) ──► enqueue a task per range
    a chunk ends, session healthy ──► claim a range (its lock, SET NX) ──► run it ──► done
    a range's task arrives ──► done?  skip (no slot asked)
                          └──► locked? look again in RECHECK_S (no slot asked)
                          └──► else run it as before (refused a slot: rescheduled)

The tasks stay the source of truth: a holder that dies leaves its range pending and its lock
lapses, and the range's own task (which only ever skips a range marked done) runs it. Losing
these keys (Redis flushed) loses only the shortcut.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from pipeline import coalesce
from pipeline.redis import folder_lock_key, pending_ranges_key, range_done_key

PENDING_TTL_S = 24 * 3600  # renewed by every plan; a set nobody drains expires
DONE_TTL_S = 3600  # outlives any task of the range still queued (retries back off <= 600 s)
RECHECK_S = 5  # a range's task that finds it running looks again this much later


def _member(folder_id: str, uid_range: tuple[int, int]) -> str:
    return f"{folder_id}:{uid_range[0]}-{uid_range[1]}"


def record(
    r: redis.Redis[bytes], grant_id: str, folder_id: str, ranges: Sequence[tuple[int, int]]
) -> None:
    """Note a plan's ranges as waiting (before their tasks are enqueued); a range of an
    earlier plan with the same bounds (a reindex) is no longer done."""
    if not ranges:
        return
    key = pending_ranges_key(grant_id)
    pipe = r.pipeline(transaction=False)
    pipe.delete(*(range_done_key(folder_id, part) for part in ranges))
    pipe.sadd(key, *(_member(folder_id, part) for part in ranges))
    pipe.expire(key, PENDING_TTL_S)
    pipe.execute()


def is_done(r: redis.Redis[bytes], folder_id: str, uid_range: tuple[int, int]) -> bool:
    """Whether the range was run to its end (by any process)."""
    return bool(r.exists(range_done_key(folder_id, uid_range)))


def mark_done(
    r: redis.Redis[bytes], grant_id: str, folder_id: str, uid_range: tuple[int, int]
) -> None:
    """The range was run to its end: its tasks still queued skip it (call before unlocking)."""
    pipe = r.pipeline(transaction=False)
    pipe.set(range_done_key(folder_id, uid_range), "1", ex=DONE_TTL_S)
    pipe.srem(pending_ranges_key(grant_id), _member(folder_id, uid_range))
    pipe.execute()


def claim(
    r: redis.Redis[bytes], grant_id: str, token: str, lock_ttl_s: int
) -> tuple[str, tuple[int, int]] | None:
    """Take the lock of one waiting range of the grant; ``(folder id, range)``, or None when
    every waiting range is done or held."""
    key = pending_ranges_key(grant_id)
    members = sorted(m.decode() for m in r.smembers(key))
    for member in members:
        folder_id, _, bounds = member.rpartition(":")
        lo, _, hi = bounds.partition("-")
        try:
            uid_range = (int(lo), int(hi))
        except ValueError:
            r.srem(key, member)  # not ours: never claimable
            continue
        if is_done(r, folder_id, uid_range):
            r.srem(key, member)
            continue
        lock = folder_lock_key(folder_id, uid_range)
        if not coalesce.acquire(r, lock, token, lock_ttl_s):
            continue
        if is_done(r, folder_id, uid_range):  # finished just before our lock
            coalesce.release(r, [lock], token)
            continue
        return folder_id, uid_range
    return None
