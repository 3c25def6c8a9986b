"""Prometheus metrics of every role (``prometheus-client``), on ``IMAP_PIPELINE_METRICS_PORT``.

What is counted where::

    sync worker    imap_pipeline_messages_synced_total{provider}
                   imap_pipeline_sync_failures_total{provider,kind}   kind: message | task
                   imap_pipeline_sync_lag_seconds{provider}           publish -> sync task done
    every role     imap_pipeline_logins_total{provider}               login turns taken
                   imap_pipeline_throttles_total{provider}            throttling answers
    listener       imap_pipeline_idle_connections{state}              held | waiting
    webhooks       imap_pipeline_webhook_deliveries_total{outcome}
                   imap_pipeline_webhook_delivery_seconds{outcome}    one HTTP attempt
    beat           imap_pipeline_outbox_depth{kind}                   read from Postgres and
                   imap_pipeline_queue_depth{queue}                   Redis at scrape time

Celery's prefork pool runs tasks in child processes, so counters live in prometheus-client's
multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (the image sets it; ``up`` gives
each role a folder of its own): every process writes its values to files there and the role's
metrics port adds them up. Without it, a role's port shows its main process only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client itself, at import


def _ensure_multiprocess_dir() -> None:
    # prometheus-client writes a file there for the first value any process creates (a login
    # in a one-off command, Flower's own gauges); a folder on a fresh tmpfs does not exist yet.
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)


_ensure_multiprocess_dir()
SCRAPE_QUERY_TIMEOUT_MS = 2_000  # a scrape must not hang on a slow database
WEBHOOK_LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SYNC_LAG_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

MESSAGES_SYNCED = Counter(
    "imap_pipeline_messages_synced_total", "Messages stored by sync tasks.", ["provider"]
)
SYNC_FAILURES = Counter(
    "imap_pipeline_sync_failures_total",
    "Sync failures: messages that could not be fetched, parsed or stored (kind=message) and "
    "sync tasks that failed or will be retried (kind=task).",
    ["provider", "kind"],
)
SYNC_LAG = Histogram(
    "imap_pipeline_sync_lag_seconds",
    "From the moment a folder sync was asked for to the end of the task that ran it.",
    ["provider"],
    buckets=SYNC_LAG_BUCKETS_S,
)
LOGINS = Counter(
    "imap_pipeline_logins_total", "IMAP login turns taken (every role logs in here).", ["provider"]
)
THROTTLES = Counter(
    "imap_pipeline_throttles_total", "Throttling answers from IMAP servers.", ["provider"]
)
IDLE_CONNECTIONS = Gauge(
    "imap_pipeline_idle_connections",
    "The listener's IMAP IDLE connections: held (idling) or waiting (for a login turn, a "
    "connection slot or a reconnect).",
    ["state"],
    multiprocess_mode="livesum",
)
WEBHOOK_DELIVERIES = Counter(
    "imap_pipeline_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, failed: the destination answered "
    "otherwise, error: no answer, refused: the destination is not allowed).",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "imap_pipeline_webhook_delivery_seconds",
    "Duration of one webhook delivery attempt.",
    ["outcome"],
    buckets=WEBHOOK_LATENCY_BUCKETS_S,
)


def observe_webhook_attempt(
    status_code: int | None, error_class: str | None, latency_ms: int
) -> None:
    """Count one webhook attempt by outcome, with its duration."""
    if status_code is not None and 200 <= status_code < 300:
        outcome = "delivered"
    elif status_code is not None:
        outcome = "failed"
    elif latency_ms == 0 and error_class:
        outcome = "refused"  # never sent: the destination is not allowed, or no secret
    else:
        outcome = "error"
    WEBHOOK_DELIVERIES.labels(outcome).inc()
    if outcome != "refused":
        WEBHOOK_LATENCY.labels(outcome).observe(latency_ms / 1000)


def multiprocess_dir() -> Path | None:
    """The folder of multiprocess mode, if this process runs in it."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def reset_multiprocess_dir() -> None:
    """Empty (create) the multiprocess folder: a role's counters start at zero when it starts.

    Call it in a role's main process before it forks workers or serves metrics.
    """
    folder = multiprocess_dir()
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


def process_exited(pid: int) -> None:
    """Forget the live gauges of a pool process that exited (multiprocess mode)."""
    if multiprocess_dir() is not None:
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """What a role's metrics port serves: every process's metrics, plus ``extra`` collectors."""
    folder = multiprocess_dir()
    if folder is not None:
        reg = CollectorRegistry()
        folder.mkdir(parents=True, exist_ok=True)
        prom_multiprocess.MultiProcessCollector(reg, path=str(folder))  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        reg = REGISTRY
    for collector in extra:
        reg.register(collector)
    return reg


def serve(port: int, host: str = "0.0.0.0", extra: Iterable[Collector] = ()) -> None:  # noqa: S104
    """Serve ``/metrics`` on ``port`` from a daemon thread (0: do nothing).

    Raises:
        ConfigurationError: the port is taken.
    """
    if port <= 0:
        return
    from pipeline.errors import ConfigurationError

    try:
        start_http_server(port, addr=host, registry=registry(extra))
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot serve metrics on port {port} ({exc.strerror}): set "
            "IMAP_PIPELINE_METRICS_PORT to a free port, or 0 for none."
        ) from exc
    log.info("metrics on http://%s:%d/metrics", host, port)


class BacklogCollector(Collector):
    """Read at scrape time: the webhook outbox's depth (Postgres) and each queue's (Redis).

    Both reads are bounded (statement timeout, socket timeout); a failed read drops that family
    from the scrape and logs why, so Prometheus sees a gap, not a made-up zero.
    """

    def __init__(
        self,
        outbox_depth: Callable[[], dict[str, int]],
        queue_depth: Callable[[Sequence[str]], dict[str, int]],
        queues: Sequence[str],
    ) -> None:
        self._outbox_depth = outbox_depth
        self._queue_depth = queue_depth
        self._queues = list(queues)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The two gauge families, read now."""
        started = time.monotonic()
        try:
            outbox = self._outbox_depth()
        except Exception as exc:  # a scrape reports what it can
            log.warning("metrics: outbox depth unreadable: %s", exc)
        else:
            family = GaugeMetricFamily(
                "imap_pipeline_outbox_depth",
                "Webhook work not done yet: notifications not fanned out (events) and "
                "deliveries still owed (deliveries).",
                labels=["kind"],
            )
            for kind, count in sorted(outbox.items()):
                family.add_metric([kind], count)
            yield family
        try:
            queues = self._queue_depth(self._queues)
        except Exception as exc:
            log.warning("metrics: queue depth unreadable: %s", exc)
        else:
            family = GaugeMetricFamily(
                "imap_pipeline_queue_depth", "Tasks waiting in each Celery queue.", labels=["queue"]
            )
            for queue, count in sorted(queues.items()):
                family.add_metric([queue], count)
            yield family
        log.debug("metrics: backlog read in %.0f ms", (time.monotonic() - started) * 1000)


def postgres_outbox_depth(database_url: str) -> Callable[[], dict[str, int]]:
    """A reader of the outbox depth on ``database_url`` (one short connection per scrape)."""
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)

    def read() -> dict[str, int]:
        with psycopg.connect(
            url,
            connect_timeout=max(1, SCRAPE_QUERY_TIMEOUT_MS // 1000),
            options=f"-c statement_timeout={SCRAPE_QUERY_TIMEOUT_MS}",
            application_name="imap-pipeline-metrics",
        ) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM webhook_outbox WHERE dispatched_at IS NULL),"
                " (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending')"
            ).fetchone()
        events, deliveries = row if row is not None else (0, 0)
        return {"events": int(events), "deliveries": int(deliveries)}

    return read


def redis_queue_depth(client: Any) -> Callable[[Sequence[str]], dict[str, int]]:
    """A reader of Celery queue lengths on a redis-py client (kombu keeps a list per queue)."""

    def read(queues: Sequence[str]) -> dict[str, int]:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        return {q: int(n) for q, n in zip(queues, pipe.execute(), strict=True)}

    return read
