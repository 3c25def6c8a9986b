"""Overshoot of the shared rate limiter with several processes hammering one provider.

    python tests/benchmarks/rate_limiter.py [--workers 4] [--rate 50] [--seconds 10]

Starts a private Redis, sets the provider-wide operation rate of ``generic:bench.test`` to
``--rate`` per second (per-account limits out of the way), and runs ``--workers`` processes
that each call :meth:`RateLimiter.try_ops` as fast as they can (each for its own account,
sleeping the wait the limiter gives, capped at 5 ms). Reports the tokens granted against the
limit ``rate * T + burst``, the largest count in any one-second window, and the Redis round
trips per second the limiter took.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from pipeline.dev.ports import free_port  # noqa: E402
from pipeline.dev.redis import EmbeddedRedis  # noqa: E402
from pipeline.limits import RateLimiter, capacity  # noqa: E402

HOST = "bench.test"
MAX_SLEEP_S = 0.005


def hammer(url: str, account: str, until: float, out: multiprocessing.Queue[object]) -> None:
    limiter = RateLimiter(redis.Redis.from_url(url, socket_timeout=5))
    granted: list[float] = []
    calls = 0
    while time.time() < until:
        calls += 1
        wait = limiter.try_ops("generic", HOST, account)
        if wait == 0.0:
            granted.append(time.time())
        else:
            time.sleep(min(wait, MAX_SLEEP_S))
    out.put((granted, calls))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0, help="provider ops per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp), free_port()) as server:
        limiter = RateLimiter(redis.Redis.from_url(server.url, socket_timeout=5))
        limiter.set_limits(
            "generic", {"provider_ops_per_s": args.rate, "account_ops_per_s": 1_000_000}
        )
        start = time.time() + 0.5
        until = start + args.seconds
        out: multiprocessing.Queue[object] = multiprocessing.Queue()
        procs = [
            multiprocessing.Process(target=hammer, args=(server.url, f"acct{i}", until, out))
            for i in range(args.workers)
        ]
        for proc in procs:
            proc.start()
        results = [out.get(timeout=args.seconds + 60) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)

    stamps = sorted(t for granted, _ in results for t in granted)  # type: ignore[attr-defined]
    calls = sum(c for _, c in results)  # type: ignore[misc]
    burst = capacity(args.rate)
    elapsed = (stamps[-1] - stamps[0]) if stamps else 0.0
    limit = args.rate * elapsed + burst
    windows = Counter(int((t - stamps[0]) // 1) for t in stamps)
    report = {
        "workers": args.workers,
        "rate_per_s": args.rate,
        "burst": burst,
        "seconds": round(elapsed, 3),
        "granted": len(stamps),
        "allowed_rate_t_plus_burst": round(limit, 1),
        "overshoot_pct": round(100.0 * (len(stamps) - limit) / limit, 2) if limit else 0.0,
        "max_in_one_second_window": max(windows.values(), default=0),
        "limiter_calls_per_s": round(calls / args.seconds, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
