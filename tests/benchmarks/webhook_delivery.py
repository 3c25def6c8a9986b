"""Benchmark: signed webhook deliveries per second through the pipeline vs a bare HTTP loop.

One command (from the repository root)::

    .venv/bin/python tests/benchmarks/webhook_delivery.py
    .venv/bin/python tests/benchmarks/webhook_delivery.py --count 10000 --destinations 4

It makes a throwaway database on the tests' Postgres (``IMAP_PIPELINE_TEST_PG``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), starts its own ``redis-server`` and a real
``celery worker -Q webhooks``, and a local threaded HTTP receiver. Then, in the same run:

- pipeline: ``--count`` notifications are written with ``outbox.emit`` in one transaction, then
  ``kick()``; the clock runs from the kick until the receiver has accepted every one of them at
  every destination (dispatch, per-destination drains, signing, POST, recording each attempt);
- bare: one ``httpx.Client`` posts the very same signed bodies in a loop, one after the other.

It prints deliveries/s of both and their ratio.

``--trickling N`` measures isolation instead: one healthy destination gets ``--probes``
notifications one at a time (each emitted after the previous one arrived, ``--spacing`` apart),
first alone, then again beside N destinations on a hostile receiver that trickles its response
headers one byte a second (every notification goes to all of them, so they keep up to
``per_destination_concurrency`` requests trickling each). It prints the healthy destination's
p50/p99 latency (commit + kick → accepted by the receiver) in both phases and their ratio::

    .venv/bin/python tests/benchmarks/webhook_delivery.py --trickling 10 --workers 2
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[2]
RECEIVER_DIR = ROOT / "tests" / "integration" / "webhooks"
sys.path[:0] = [str(ROOT), str(RECEIVER_DIR)]

from hostile_receiver import HostileReceiver  # noqa: E402
from webhook_receiver import Received, Receiver  # noqa: E402

from pipeline.config import Settings  # noqa: E402
from pipeline.crypto import SecretBox, generate_key  # noqa: E402
from pipeline.db import get_engine, migrate, session_scope  # noqa: E402
from pipeline.dev.ports import free_port  # noqa: E402
from pipeline.dev.redis import EmbeddedRedis  # noqa: E402
from pipeline.webhooks import outbox, payloads  # noqa: E402
from pipeline.webhooks.service import WebhookService  # noqa: E402
from pipeline.webhooks.signing import SIGNATURE_HEADER, sign  # noqa: E402
from tests.benchmarks.cpu import CpuMeter, cmdline_has, tree  # noqa: E402
from tests.support.webhook_worker import webhook_worker_command  # noqa: E402

ADMIN_URL = os.environ.get("IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
HTTP_TIMEOUT_S = 10
WARMUP = 50
BODY_BYTES = 2048  # a typical small HTML message body
DONE_POLL_S = 0.02  # how often a throughput run looks whether everything arrived
PROBE_TIMEOUT_S = 120.0  # one latency probe gives up after this (the old code took 555 s)


def _admin(sql: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _start_worker(env: dict[str, str], log_file: Path, concurrency: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        webhook_worker_command(
            concurrency=concurrency,
            name=f"bench-{uuid.uuid4().hex[:6]}@%h",
            log_level="WARNING",
            log_file=log_file,
        ),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    return proc


def _wait_worker(redis_url: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the worker consumes: a kick on an empty outbox is taken off the queue."""
    from pipeline.redis import WEBHOOK_KICK_KEY
    from workers import webhook_queue

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    deadline = time.monotonic() + START_TIMEOUT_S
    webhook_queue.kick()
    while client.llen("webhooks") or client.exists(WEBHOOK_KICK_KEY):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("celery worker did not start")
        time.sleep(0.1)
    client.close()


def _emit(database_url: str, count: int, tag: str) -> None:
    body = "<p>" + "x" * (BODY_BYTES - 7) + "</p>"
    grant = str(uuid.uuid4())
    with session_scope(database_url) as s:
        for i in range(count):
            outbox.emit(
                s,
                grant_id=grant,
                type="message.created",
                obj={
                    "id": f"{tag}-{i}",
                    "object": "message",
                    "subject": f"Message {i}",
                    "body": body,
                },
                subject_id=f"{tag}-{i}",
            )


def _pipeline_run(
    database_url: str, receiver: Receiver, paths: list[str], count: int, tag: str
) -> float:
    from workers import webhook_queue

    before = {p: len(receiver.accepted(p)) for p in paths}
    _emit(database_url, count, tag)
    t0 = time.perf_counter()
    webhook_queue.kick()

    # Poll, rather than receiver.wait_for(): its predicate runs on every request received and
    # would count all of them each time (quadratic CPU in the receiver's process, which is
    # also where the receiver answers the pipeline's requests).
    deadline = time.monotonic() + max(120.0, count / 20)
    while True:
        got = Counter(r.path for r in receiver.accepted())
        if all(got[p] - before[p] >= count for p in paths):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"pipeline run incomplete: {dict(got)}")
        time.sleep(DONE_POLL_S)
    return time.perf_counter() - t0


def _bare_run(receiver: Receiver, secret: str, count: int) -> float:
    body = "<p>" + "x" * (BODY_BYTES - 7) + "</p>"
    notifications = [
        payloads.build(
            notification_id=str(uuid.uuid4()),
            type="message.created",
            grant_id="g",
            occurred_at=datetime.now(UTC),
            attempt=1,
            application_id="imap-pipeline",
            obj={"id": f"bare-{i}", "object": "message", "subject": f"Message {i}", "body": body},
            max_bytes=1_000_000,
        ).body
        for i in range(count)
    ]
    url = receiver.url("/bare")
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
        t0 = time.perf_counter()
        for raw in notifications:
            # signing is part of the work on both sides
            response = client.post(
                url,
                content=raw,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, raw)},
            )
            response.raise_for_status()
        return time.perf_counter() - t0


def _probe_latencies(
    database_url: str, receiver: Receiver, path: str, probes: int, spacing_s: float, tag: str
) -> list[float]:
    """Emit ``probes`` notifications one at a time; seconds from kick to arrival of each."""
    from workers import webhook_queue

    grant = str(uuid.uuid4())
    latencies = []
    for i in range(probes):
        before = len(receiver.accepted(path))
        with session_scope(database_url) as s:
            outbox.emit(
                s,
                grant_id=grant,
                type="message.created",
                obj={"id": f"{tag}-{i}", "object": "message", "subject": f"Probe {i}"},
                subject_id=f"{tag}-{i}",
            )
        t0 = time.monotonic()
        webhook_queue.kick()

        def arrived_one(items: list[Received], before: int = before) -> bool:
            return sum(1 for r in items if r.path == path and 200 <= r.status < 300) > before

        got = receiver.wait_for(arrived_one, timeout_s=PROBE_TIMEOUT_S)
        arrived = [r for r in got if r.path == path and 200 <= r.status < 300][before]
        latencies.append(arrived.at - t0)
        while time.monotonic() < t0 + spacing_s:  # pace the next probe
            time.sleep(0.01)
    return latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _isolation_run(
    args: argparse.Namespace,
    database_url: str,
    receiver: Receiver,
    service: WebhookService,
) -> None:
    healthy = "/healthy"
    with session_scope(database_url) as s:
        service.create(
            s, {"webhook_url": receiver.url(healthy), "trigger_types": ["message.created"]}
        )
    _probe_latencies(database_url, receiver, healthy, 10, 0.0, "warm")
    # Alone before and after the hostile phase, half each: a machine whose load drifts during
    # the run (other tenants) then weighs on both sides alike.
    half = max(args.probes // 2, 1)
    alone = _probe_latencies(database_url, receiver, healthy, half, args.spacing, "alone1")
    trickling: list[str] = []
    with HostileReceiver(interval_s=1.0, trickle_for_s=600.0) as hostile:
        for i in range(args.trickling):
            with session_scope(database_url) as s:
                created = service.create(
                    s,
                    {
                        "webhook_url": hostile.route(f"/t{i}", "trickle_headers"),
                        "trigger_types": ["message.created"],
                    },
                )
            trickling.append(created.id)
        beside = _probe_latencies(
            database_url, receiver, healthy, args.probes, args.spacing, "beside"
        )
        trickling_now = hostile.active()
        with session_scope(database_url) as s:
            for dest in trickling:
                service.delete(s, dest)
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while hostile.active() and time.monotonic() < deadline:  # in-flight ones hit their deadline
            time.sleep(0.1)
    alone += _probe_latencies(
        database_url, receiver, healthy, args.probes - half, args.spacing, "alone2"
    )
    p50a, p99a = _percentile(alone, 0.5), _percentile(alone, 0.99)
    p50b, p99b = _percentile(beside, 0.5), _percentile(beside, 0.99)
    print(
        f"isolation: {args.probes} probes to one healthy destination, {args.spacing:g} s apart, "
        f"{args.workers} worker processes (alone: half before, half after the trickling phase)"
    )
    print(
        f"alone:                              p50 {p50a * 1000:7.1f} ms  p99 {p99a * 1000:7.1f} ms"
    )
    print(
        f"beside {args.trickling:2d} trickling destinations:   "
        f"p50 {p50b * 1000:7.1f} ms  p99 {p99b * 1000:7.1f} ms  "
        f"({trickling_now} requests trickling at the end)"
    )
    print(f"ratio p99 beside/alone: {p99b / p99a:.2f}")


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="notifications per destination")
    parser.add_argument("--destinations", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4, help="celery worker processes")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="IMAP_PIPELINE_WEBHOOK_BATCH_SIZE"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="IMAP_PIPELINE_WEBHOOK_PER_DESTINATION_CONCURRENCY",
    )
    parser.add_argument(
        "--trickling",
        type=int,
        default=0,
        help="measure a healthy destination's latency beside this many trickling ones",
    )
    parser.add_argument("--probes", type=int, default=100, help="latency probes per phase")
    parser.add_argument("--spacing", type=float, default=0.2, help="seconds between probes")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    dbname = f"bench_wh_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{dbname}"')
    database_url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{dbname}"
    redis_server = EmbeddedRedis(folder / "redis", free_port())
    redis_server.start()
    redis_url = redis_server.url
    key = generate_key()
    service_env = {
        "IMAP_PIPELINE_DATABASE_URL": database_url,
        "IMAP_PIPELINE_REDIS_URL": redis_url,
        "IMAP_PIPELINE_ENCRYPTION_KEYS": key,
        "IMAP_PIPELINE_DATA_DIR": str(folder / "data"),
        "IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    if args.batch_size:
        service_env["IMAP_PIPELINE_WEBHOOK_BATCH_SIZE"] = str(args.batch_size)
    if args.concurrency:
        service_env["IMAP_PIPELINE_WEBHOOK_PER_DESTINATION_CONCURRENCY"] = str(args.concurrency)
    os.environ.update(service_env)  # this process kicks, like a writer would
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(RECEIVER_DIR)])}
    worker: subprocess.Popen[bytes] | None = None
    try:
        migrate(database_url)
        with Receiver() as receiver:
            settings = Settings.load().webhooks
            if args.trickling:
                worker = _start_worker(env, folder / "worker.log", args.workers)
                _wait_worker(redis_url, worker)
                with WebhookService(settings, SecretBox([key])) as service:
                    _isolation_run(args, database_url, receiver, service)
                return 0
            paths = [f"/d{i}" for i in range(args.destinations)]
            with WebhookService(settings, SecretBox([key])) as service:
                secrets = []
                for path in paths:
                    with session_scope(database_url) as s:
                        created = service.create(
                            s,
                            {
                                "webhook_url": receiver.url(path),
                                "trigger_types": ["message.created"],
                            },
                        )
                    assert created.webhook_secret is not None
                    secrets.append(created.webhook_secret)
            worker = _start_worker(env, folder / "worker.log", args.workers)
            _wait_worker(redis_url, worker)
            _pipeline_run(database_url, receiver, paths, WARMUP, "warm")
            _bare_run(receiver, secrets[0], WARMUP)

            total = args.count * args.destinations
            roles = {
                "worker": tree(worker.pid),
                "postgres": cmdline_has(dbname),
                "this process (receiver, bare loop)": tree(os.getpid()),
            }
            meter = CpuMeter(roles)
            meter.start()
            pipeline_s = _pipeline_run(database_url, receiver, paths, args.count, "run")
            pipeline_cpu = meter.stop()
            meter.start()
            bare_s = _bare_run(receiver, secrets[0], total)
            bare_cpu = meter.stop()
        pipeline_rate = total / pipeline_s
        bare_rate = total / bare_s
        print(
            f"notifications: {args.count} x {args.destinations} destination(s), "
            f"{BODY_BYTES} B bodies, {args.workers} worker processes, "
            f"per-destination concurrency {settings.per_destination_concurrency}, "
            f"batch {settings.batch_size}"
        )
        print(
            f"pipeline (emit→kick→dispatch→drain→sign→POST→record): "
            f"{pipeline_rate:8.0f} deliveries/s  ({total} in {pipeline_s:.2f} s)"
        )
        print(
            f"bare httpx loop (sign→POST, serial, keep-alive):        "
            f"{bare_rate:8.0f} deliveries/s  ({total} in {bare_s:.2f} s)"
        )
        print(f"ratio pipeline/bare: {pipeline_rate / bare_rate:.2f}")
        for name, cpu in (("pipeline", pipeline_cpu), ("bare", bare_cpu)):
            shares = ", ".join(
                f"{role} {seconds / total * 1000:.2f}" for role, seconds in cpu.items()
            )
            print(f"CPU ms per delivery, {name}: {shares}")
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=STOP_TIMEOUT_S)
        from workers.tasks import webhooks as webhook_tasks

        webhook_tasks.reset_runtime()
        get_engine(database_url).dispose()
        _admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        redis_server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
