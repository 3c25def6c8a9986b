"""Redis job locks: a periodic job run twice, or overlapping itself, does its work once.

A lock is ``SET key token NX PX ttl``; only the holder (same token) may release it, checked and
deleted atomically in Lua. Two kinds of use:

- ``release=True`` (default): mutual exclusion while the job runs (purge, reconcile). The TTL is
  a safety net for a holder that died; it must exceed the job's longest run.
- ``release=False``: "once per period" (the sweep planner). The lock is kept until its TTL
  lapses, so a duplicate fired within the same period (two beats during a lock hand-over, a
  redelivered message) finds it taken and does nothing.

Keys: ``imap-pipeline:job:<name>``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from pipeline.errors import ServiceError

KEY_PREFIX = "imap-pipeline:job:"

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


def job_key(name: str) -> str:
    """The Redis key of the job lock called ``name``."""
    return KEY_PREFIX + name


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
    token = f"{os.getpid()}:{uuid.uuid4().hex}"
    try:
        taken = bool(client.set(key, token, nx=True, px=max(int(ttl_s * 1000), 1)))
    except redis.RedisError as exc:
        raise ServiceError(f"Redis is not usable for the job lock {name!r}: {exc}") from exc
    try:
        yield taken
    finally:
        if taken and release:
            # on a Redis error the lock lapses by its TTL; nothing else to do
            with contextlib.suppress(redis.RedisError):
                client.register_script(_RELEASE)(keys=[key], args=[token])


@contextmanager
def job_locks(client: redis.Redis[bytes], names: Sequence[str], ttl_s: float) -> Iterator[set[str]]:
    """:func:`job_lock` (``release=True``) for several jobs at once (a batch of polls): yields
    the names whose locks were taken; each taken one is held until the block ends. One round
    trip to take them all, one to release them.

    Raises:
        ServiceError: Redis cannot be reached.
    """
    token = f"{os.getpid()}:{uuid.uuid4().hex}"
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.set(job_key(name), token, nx=True, px=max(int(ttl_s * 1000), 1))
    try:
        replies = pipe.execute() if names else []
    except redis.RedisError as exc:
        raise ServiceError(f"Redis is not usable for {len(names)} job locks: {exc}") from exc
    taken = {name for name, reply in zip(names, replies, strict=True) if reply}
    try:
        yield taken
    finally:
        if taken:
            # on a Redis error the locks lapse by their TTL; nothing else to do
            with contextlib.suppress(redis.RedisError):
                client.register_script(_RELEASE)(keys=[job_key(n) for n in taken], args=[token])
