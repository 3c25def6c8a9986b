"""Health checks of every role, cheap enough for a probe every few seconds.

One function per thing a role depends on; each returns a :class:`Check` (never raises) and is
bounded in time, so a probe answers before its own timeout even when a peer hangs:

- :func:`postgres` / :func:`redis_ping`: the API's readiness (``/readyz``).
- :func:`beat`: some beat holds celery-redbeat's lock (the active one renews it; a standby is
  healthy while the active one is).
- :func:`listener`: a listener of this host renewed its heartbeat in Redis within its lease.
- :func:`tcp`: something listens on a port (Flower, the API's liveness from outside).

``imap-pipeline health ROLE`` runs the ones of a role and exits 0 or 1 (container probes); the
Celery workers' ping lives there (nothing in ``pipeline`` imports the Celery app).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import redis

from pipeline.redis import BEAT_LOCK_KEY, LISTENERS_KEY, client

CHECK_TIMEOUT_S = 3.0  # one dependency's answer; probes time out after 5 s or more


@dataclass(frozen=True)
class Check:
    """The outcome of one check: ``ok`` and a line saying what was seen."""

    name: str
    ok: bool
    detail: str


def _timed(name: str, probe: Callable[[], str]) -> Check:
    started = time.monotonic()
    try:
        detail = probe()
    except Exception as exc:  # a probe reports, it never raises
        return Check(name, False, f"{type(exc).__name__}: {_first_line(exc)}")
    return Check(name, True, f"{detail} ({(time.monotonic() - started) * 1000:.0f} ms)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no detail"


def postgres(conninfo: str, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """``SELECT 1`` on a fresh connection, connect and statement bounded by ``timeout_s``.

    Args:
        conninfo: A libpq URL (``postgresql://…``; the SQLAlchemy driver suffix is accepted).
        timeout_s: Connect timeout and statement timeout.
    """

    def probe() -> str:
        url = conninfo.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(
            url,
            connect_timeout=max(1, round(timeout_s)),
            options=f"-c statement_timeout={int(timeout_s * 1000)}",
            application_name="imap-pipeline-health",
        ) as conn:
            conn.execute("SELECT 1")
        return "answered"

    return _timed("postgres", probe)


def _redis(url: str, timeout_s: float) -> redis.Redis[bytes]:
    return client(url, timeout_s=timeout_s)


def redis_ping(url: str, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """``PING``, connect and answer bounded by ``timeout_s``."""

    def probe() -> str:
        client = _redis(url, timeout_s)
        try:
            client.ping()
        finally:
            client.close()
        return "answered"

    return _timed("redis", probe)


def beat(url: str, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """Some ``celery beat`` holds the scheduler lock (so the periodic jobs run)."""

    def probe() -> str:
        client = _redis(url, timeout_s)
        try:
            ttl_ms = int(client.pttl(BEAT_LOCK_KEY))
        finally:
            client.close()
        if ttl_ms < 0:
            raise LookupError("no beat holds the scheduler lock: the periodic jobs are not running")
        return f"a scheduler holds the lock ({ttl_ms / 1000:.0f} s left)"

    return _timed("beat", probe)


def listener(url: str, host: str | None = None, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """A listener on ``host`` (default: this machine's name) has a live heartbeat in Redis.

    Listener ids are ``host:pid:random`` (pipeline.listener.process), so the check needs no pid.
    """
    prefix = f"{host or socket.gethostname()}:"

    def probe() -> str:
        client = _redis(url, timeout_s)
        try:
            seconds, micros = client.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            live = client.zrangebyscore(LISTENERS_KEY, now_ms, "+inf")
        finally:
            client.close()
        ids = [member.decode(errors="replace") for member in live]
        mine = [i for i in ids if i.startswith(prefix)]
        if not mine:
            raise LookupError(
                f"no live listener heartbeat from {prefix[:-1]} ({len(ids)} elsewhere)"
            )
        return f"heartbeat of {', '.join(sorted(mine))}"

    return _timed("listener", probe)


def tcp(host: str, port: int, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """Something accepts connections on ``host:port``."""

    def probe() -> str:
        with socket.create_connection((host, port), timeout=timeout_s):
            return f"{host}:{port} accepts connections"

    return _timed(f"tcp {port}", probe)
