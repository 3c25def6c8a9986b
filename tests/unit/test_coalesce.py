"""The coalescing policy (pipeline.coalesce) on fakeredis: locks, the coalesced run of a folder
sync, pending flags. No Celery: this is what the tasks call."""

from __future__ import annotations

import time

import fakeredis
import pytest
import redis

from pipeline import coalesce


@pytest.fixture
def r() -> redis.Redis[bytes]:
    return fakeredis.FakeRedis()


def test_a_lock_is_taken_once_and_released_only_by_its_holder(r: redis.Redis[bytes]) -> None:
    assert coalesce.acquire(r, "k", "a", 60)
    assert not coalesce.acquire(r, "k", "b", 60)
    assert coalesce.release(r, ["k"], "b") == 0  # not b's: left alone
    assert r.get("k") == b"a"
    assert coalesce.release(r, ["k"], "a") == 1
    assert coalesce.acquire(r, "k", "b", 60)


def test_a_lock_lapses_by_its_ttl_and_the_old_holder_cannot_release_the_new_one(
    r: redis.Redis[bytes],
) -> None:
    assert coalesce.acquire(r, "k", "dead", 0.05)
    time.sleep(0.08)  # the 50 ms TTL runs out
    assert coalesce.acquire(r, "k", "next", 60)
    coalesce.release(r, ["k"], "dead")
    assert r.get("k") == b"next"


def test_many_locks_in_one_round_trip(r: redis.Redis[bytes]) -> None:
    coalesce.acquire(r, "b", "other", 60)
    assert coalesce.acquire_many(r, ["a", "b", "c"], "t", 60) == {"a", "c"}
    assert coalesce.acquire_many(r, [], "t", 60) == set()
    assert coalesce.release(r, ["a", "b", "c"], "t") == 2
    assert r.get("b") == b"other"


def test_renew_extends_the_lock(r: redis.Redis[bytes]) -> None:
    coalesce.acquire(r, "k", "t", 0.05)
    coalesce.renew(r, "k", 60)
    time.sleep(0.08)  # past the first TTL: the renewed lock must still be there
    assert r.get("k") == b"t"


def _run(r: redis.Redis[bytes], ttl_s: int = 60) -> coalesce.Coalesced:
    return coalesce.folder_sync(r, "f1", None, ttl_s)


def test_a_request_during_a_run_makes_the_holder_run_once_more(r: redis.Redis[bytes]) -> None:
    holder = _run(r)
    assert holder.acquire("holder")
    assert not holder.take_rerun()  # nobody asked yet
    for _ in range(5):  # five requests while it runs: one more run, not five
        assert not _run(r).acquire("late")
        _run(r).busy(retry_grace_s=5)
    holder.release("holder")
    assert holder.take_rerun()
    assert not holder.take_rerun()
    assert not holder.held()


def test_one_busy_request_at_a_time_comes_back_after_the_lock(r: redis.Redis[bytes]) -> None:
    holder = _run(r, ttl_s=60)
    holder.acquire("holder")
    first = _run(r).busy(retry_grace_s=5)
    second = _run(r).busy(retry_grace_s=5)
    assert first == coalesce.Busy(wait_s=61, come_back=True)  # the lock's TTL + 1 s
    assert second.come_back is False
    assert 60 <= r.ttl(holder.retry_key) <= 66


def test_a_range_request_looks_again_within_its_recheck(r: redis.Redis[bytes]) -> None:
    run = coalesce.folder_sync(r, "f1", (1, 50), 60)
    assert run.lock_key == "imap-pipeline:lock:folder:f1:1-50"
    assert run.dirty_key == "imap-pipeline:dirty:folder:f1"  # the folder's
    run.acquire("holder")
    busy = coalesce.folder_sync(r, "f1", (1, 50), 60).busy(recheck_s=5)
    assert busy == coalesce.Busy(wait_s=5, come_back=True)
    assert r.ttl(run.retry_key) == 5


def test_a_dead_holders_lock_lapses_and_the_next_request_runs(r: redis.Redis[bytes]) -> None:
    dead = coalesce.Coalesced(r, "lock", "dirty", "retry", ttl_s=1)
    r.set("lock", "dead", px=50)  # as if taken long ago and never renewed
    assert not dead.acquire("late")
    time.sleep(0.08)  # the 50 ms TTL runs out
    assert dead.acquire("late")


def test_the_holder_renews_between_batches(r: redis.Redis[bytes]) -> None:
    run = _run(r, ttl_s=60)
    r.set(run.lock_key, "holder", px=50)
    run.renew()
    time.sleep(0.08)  # past the first TTL: the renewed lock must still be there
    assert run.held()


def test_send_once_sends_until_the_task_starts(r: redis.Redis[bytes]) -> None:
    sent: list[int] = []
    assert coalesce.send_once(r, "flag", 10, lambda: sent.append(1))
    assert not coalesce.send_once(r, "flag", 10, lambda: sent.append(2))
    coalesce.clear(r, "flag")  # the task started
    assert coalesce.send_once(r, "flag", 10, lambda: sent.append(3))
    assert sent == [1, 3]
    assert 0 < r.ttl("flag") <= 10


def test_a_failed_send_leaves_no_flag(r: redis.Redis[bytes]) -> None:
    def broken() -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        coalesce.send_once(r, "flag", 10, broken)
    assert r.get("flag") is None


def test_renew_held_extends_only_the_holders_lock(r: redis.Redis[bytes]) -> None:
    coalesce.acquire(r, "k", "a", 0.05)
    assert not coalesce.renew_held(r, "k", "b", 60)  # not b's
    assert coalesce.renew_held(r, "k", "a", 60)
    time.sleep(0.08)
    assert r.get("k") == b"a"
