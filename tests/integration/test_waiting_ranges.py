"""The waiting UID ranges of a grant (workers.chunks) on a real Redis."""

from __future__ import annotations

import pytest
import redis

from pipeline.redis import folder_lock_key
from workers import chunks

pytestmark = pytest.mark.services


def test_a_range_is_claimed_once_and_a_done_one_never(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    chunks.record(r, "g1", "f1", [(1, 50), (51, 100)])
    first = chunks.claim(r, "g1", "p1:t1", 60)
    second = chunks.claim(r, "g1", "p2:t2", 60)
    assert first is not None and second is not None
    assert {first, second} == {("f1", (1, 50)), ("f1", (51, 100))}
    assert chunks.claim(r, "g1", "p3:t3", 60) is None  # both held

    folder_id, uid_range = first
    chunks.mark_done(r, "g1", folder_id, uid_range)
    r.delete(folder_lock_key(folder_id, uid_range))
    assert chunks.is_done(r, folder_id, uid_range)
    assert chunks.claim(r, "g1", "p3:t3", 60) is None  # done: never claimed again


def test_a_range_whose_holder_died_is_claimable_again(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    chunks.record(r, "g1", "f1", [(1, 50)])
    assert chunks.claim(r, "g1", "p1:t1", 60) == ("f1", (1, 50))
    r.delete(folder_lock_key("f1", (1, 50)))  # the holder's lock lapsed
    assert chunks.claim(r, "g1", "p2:t2", 60) == ("f1", (1, 50))


def test_a_new_plan_with_the_same_bounds_is_not_done(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    chunks.record(r, "g1", "f1", [(1, 50)])
    chunks.mark_done(r, "g1", "f1", (1, 50))
    chunks.record(r, "g1", "f1", [(1, 50)])  # a reindex planned the same range again
    assert not chunks.is_done(r, "f1", (1, 50))
    assert chunks.claim(r, "g1", "p1:t1", 60) == ("f1", (1, 50))
