"""Leases and heartbeats against a real Redis (the Lua scripts run there)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from pipeline.listener.leases import LeaseStore
from pipeline.redis import LISTENERS_KEY, lease_key

pytestmark = pytest.mark.services


def with_stores(
    redis_url: str, scenario: Callable[[LeaseStore, LeaseStore], Awaitable[None]]
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
        try:
            a = LeaseStore(client, "A", lease_ttl_s=0.5)
            b = LeaseStore(client, "B", lease_ttl_s=0.5)
            await scenario(a, b)
        finally:
            await client.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_one_owner_per_grant_and_lapsed_leases_are_taken_over(redis_url: str) -> None:
    async def scenario(a: LeaseStore, b: LeaseStore) -> None:
        grants = [f"g{i}" for i in range(10)]
        won_a = await a.claim(grants, 6)
        won_b = await b.claim(grants, 10)
        assert len(won_a) == 6
        assert await a.claim(won_a, 6) == won_a  # its own leases count as claimed
        assert sorted(won_b) == sorted(set(grants) - set(won_a))
        assert await b.renew(won_a) == set(won_a)  # B cannot renew what A holds
        assert await a.renew(won_a) == set()
        await b.release(won_a)  # nor release it
        assert await a.owner(won_a[0]) == "A"
        await asyncio.sleep(0.7)  # A stops renewing: its leases lapse
        assert await b.claim(won_a, 10) == won_a
        assert await a.renew(won_a) == set(won_a)  # A learns it lost them

    with_stores(redis_url, scenario)


def test_heartbeats_count_live_listeners(redis_url: str) -> None:
    async def scenario(a: LeaseStore, b: LeaseStore) -> None:
        assert await a.heartbeat() == 1
        assert await b.heartbeat() == 2
        await b.leave()
        assert await a.heartbeat() == 1
        await b.heartbeat()
        await asyncio.sleep(0.7)  # B dies; A's next heartbeat drops it
        assert await a.heartbeat() == 1

    with_stores(redis_url, scenario)
    assert LISTENERS_KEY == "imap-pipeline:listeners"
    assert lease_key("x") == "imap-pipeline:lease:x"
