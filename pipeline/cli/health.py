"""``imap-pipeline health ROLE``: is this machine's ROLE healthy? Exit 0 yes, 1 no.

For container probes and for people: one line per check, e.g.
``ok   listener: heartbeat of web-1:17:a1b2c3 (2 ms)``. What each role checks:

=========  ==================================================================================
sync       the worker ``sync@HOST`` answers a Celery ping (through the broker)
webhooks   the worker ``webhooks@HOST`` answers a Celery ping
beat       some beat holds the scheduler lock (a standby is healthy while the active one is)
listener   a listener of HOST renewed its heartbeat in Redis within its lease
flower     Flower accepts connections on IMAP_PIPELINE_FLOWER_PORT
api        the API on IMAP_PIPELINE_API_PORT answers ``/readyz`` (Postgres and Redis answer it)
=========  ==================================================================================

HOST is this machine's name (``--host`` for another), as Celery's ``%h`` and listener ids use it.
"""

from __future__ import annotations

import argparse
import socket
import time

import httpx
from rich.console import Console

from pipeline import health
from pipeline.config import Settings
from pipeline.health import Check

console = Console(soft_wrap=True, highlight=False)
ROLES = ("sync", "webhooks", "beat", "listener", "flower", "api")
CELERY_PING_TIMEOUT_S = 5.0  # a busy prefork worker still answers from its main process
API_PROBE_TIMEOUT_S = 5.0  # /readyz bounds its own checks well below this
LOOPBACK = "127.0.0.1"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``health``."""
    cmd = sub.add_parser(
        "health",
        help="check that a role on this machine works (exit 0) or not (exit 1), for probes",
        description=(__doc__ or "").split("\n\n")[0],
    )
    cmd.add_argument("role", choices=ROLES)
    cmd.add_argument("--host", help="the machine name the role runs under (default: this one)")
    cmd.set_defaults(handler=_health)


def _health(args: argparse.Namespace) -> int:
    settings = Settings.load()
    host = args.host or socket.gethostname()
    role: str = args.role
    checks: list[Check]
    if role in ("sync", "webhooks"):
        checks = [_celery_ping(settings, f"{role}@{host}")]
    elif role == "beat":
        checks = [health.beat(settings.require_redis_url())]
    elif role == "listener":
        checks = [health.listener(settings.require_redis_url(), host)]
    elif role == "flower":
        checks = [health.tcp(LOOPBACK, settings.flower_port)]
    else:
        checks = [_api_ready(settings.api.port)]
    for check in checks:
        mark = "[green]ok  [/]" if check.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {check.name}: {check.detail}", markup=True)
    return 0 if all(c.ok for c in checks) else 1


def _celery_ping(settings: Settings, node: str) -> Check:
    started = time.monotonic()
    try:
        from pipeline.jobs import Jobs

        replies = Jobs.from_settings(settings).ping(node, CELERY_PING_TIMEOUT_S)
    except Exception as exc:  # the broker is down or the settings are missing
        return Check(node, False, f"{type(exc).__name__}: {exc}")
    if not any(node in reply for reply in replies):
        return Check(
            node,
            False,
            f"no answer within {CELERY_PING_TIMEOUT_S:.0f} s (is it running?)",
        )
    return Check(node, True, f"answered a ping ({(time.monotonic() - started) * 1000:.0f} ms)")


def _api_ready(port: int) -> Check:
    url = f"http://{LOOPBACK}:{port}/readyz"
    try:
        response = httpx.get(url, timeout=API_PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Check("api", False, f"{url}: {type(exc).__name__}: {exc}")
    if response.status_code != 200:
        return Check("api", False, f"{url} answered {response.status_code}: {response.text[:200]}")
    return Check("api", True, f"{url} answered 200")
