"""A fresh account may open the connections it is allowed at once, never more than a minute's
worth of logins (pipeline.limits)."""

from __future__ import annotations

import pytest
import redis

from pipeline.limits import RateLimiter
from pipeline.presets import preset

pytestmark = pytest.mark.services


def test_first_sync_opens_its_connections_without_waiting(redis_url: str) -> None:
    limiter = RateLimiter(redis.Redis.from_url(redis_url, socket_timeout=5))
    allowed = preset("generic").max_connections  # 5, within 10 logins a minute
    waits = [limiter.try_login("generic", "imap.example.test", "g1") for _ in range(allowed + 1)]
    assert waits[:allowed] == [0.0] * allowed
    assert waits[allowed] > 0  # the next one waits for the per-minute budget


def test_the_burst_never_exceeds_one_minutes_budget(redis_url: str) -> None:
    limiter = RateLimiter(redis.Redis.from_url(redis_url, socket_timeout=5))
    limiter.set_limits("yahoo", {"account_logins_per_min": 2})
    waits = [limiter.try_login("yahoo", "imap.mail.yahoo.com", "g2") for _ in range(3)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] > 20  # 2 per minute: the third waits about 30 s
