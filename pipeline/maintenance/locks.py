"""Redis job locks: a periodic job run twice, or overlapping itself, does its work once.

A job lock is a lock of :mod:`pipeline.coalesce` (``SET key token NX PX ttl``, released only by
its holder) under a job's name. Unlike a folder sync, a job has no dirty flag: a job that
finds its lock taken simply returns, because the next run (beat fires again within its
interval) does the same work. Two kinds of use:

- ``release=True`` (default): mutual exclusion while the job runs (purge, reconcile). The TTL is
  a safety net for a holder that died; it must exceed the job's longest run.
- ``release=False``: "once per period" (the sweep planner). The lock is kept until its TTL
  lapses, so a duplicate fired within the same period (two beats during a lock hand-over, a
  redelivered message) finds it taken and does nothing.

Keys: ``imap-pipeline:job:<name>``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from pipeline import coalesce
from pipeline.errors import ServiceError
from pipeline.redis import job_key


@contextmanager
def job_lock(
    client: redis.Redis[bytes], name: str, ttl_s: float, *, release: bool = True
) -> Iterator[bool]:
    """Try to take the job lock ``name`` for ``ttl_s`` seconds; yields whether it was taken.

    Never blocks: a job that finds its lock taken should simply return.

    Raises:
        ServiceError: Redis cannot be reached.
    """
    key = job_key(name)
    token = coalesce.new_token()
    try:
        taken = coalesce.acquire(client, key, token, ttl_s)
    except redis.RedisError as exc:
        raise ServiceError(f"Redis is not usable for the job lock {name!r}: {exc}") from exc
    try:
        yield taken
    finally:
        if taken and release:
            # on a Redis error the lock lapses by its TTL; nothing else to do
            with contextlib.suppress(redis.RedisError):
                coalesce.release(client, [key], token)


@contextmanager
def job_locks(client: redis.Redis[bytes], names: Sequence[str], ttl_s: float) -> Iterator[set[str]]:
    """:func:`job_lock` (``release=True``) for several jobs at once (a batch of polls): yields
    the names whose locks were taken; each taken one is held until the block ends. One round
    trip to take them all, one to release them.

    Raises:
        ServiceError: Redis cannot be reached.
    """
    token = coalesce.new_token()
    try:
        keys = coalesce.acquire_many(client, [job_key(n) for n in names], token, ttl_s)
    except redis.RedisError as exc:
        raise ServiceError(f"Redis is not usable for {len(names)} job locks: {exc}") from exc
    taken = {name for name in names if job_key(name) in keys}
    try:
        yield taken
    finally:
        if taken:
            # on a Redis error the locks lapse by their TTL; nothing else to do
            with contextlib.suppress(redis.RedisError):
                coalesce.release(client, [job_key(n) for n in taken], token)
