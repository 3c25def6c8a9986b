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
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from pipeline.errors import ServiceError

KEY_PREFIX = "imap-pipeline:job:"

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


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
