"""``imap-pipeline listen``: run one IDLE listener process in the foreground.

Start as many as you like, on one machine or many: they share the grants through Redis leases.
Ctrl-C or SIGTERM stops it cleanly (DONE + LOGOUT on every connection, pending events sent,
leases released so another listener takes the grants at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import textwrap
from typing import TYPE_CHECKING

from rich.console import Console

from pipeline.config import Settings

if TYPE_CHECKING:
    from pipeline.listener.process import Listener

console = Console(stderr=True)
HELP_WIDTH = 88  # columns of the wrapped help text
METRICS_REFRESH_S = 5.0  # the IDLE connection gauges lag the connections by at most this
# pipeline.listener.idle.WatchState values: a connection open on the server, or one on its way
HELD_STATES = frozenset({"idling", "renewing", "polling"})
WAITING_STATES = frozenset({"waiting_slot", "login_queued", "connecting", "backoff"})


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``listen``."""
    listen = sub.add_parser(
        "listen",
        help="watch Inbox and Sent of a fair share of all grants over IMAP IDLE (Ctrl-C stops)",
        description=textwrap.fill(" ".join(__doc__.split("\n\n")[1].split()), HELP_WIDTH),
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen.add_argument("--id", dest="listener_id", help="listener id (default host:pid:random)")
    listen.set_defaults(handler=_listen)


def _settings_help() -> str:
    from pipeline.config.listener import LISTENER_ENV_PREFIX, ListenerSettings

    lines = ["settings (environment, with their defaults):"]
    for name, field in ListenerSettings.model_fields.items():
        lines.append(f"  {LISTENER_ENV_PREFIX}{name.upper()}={field.default}")
        if field.description:
            lines.append(textwrap.indent(textwrap.fill(field.description, HELP_WIDTH - 6), " " * 6))
    return "\n".join(lines)


def _listen(args: argparse.Namespace) -> int:
    from pipeline import metrics
    from pipeline.db import sessionmaker_for
    from pipeline.imap.transport import limit_tls_read_buffers
    from pipeline.jobs import Jobs
    from pipeline.listener.process import Listener
    from pipeline.redis import async_client

    settings = Settings.load()
    jobs = Jobs.from_settings(settings)
    listener_settings = settings.listener
    metrics.reset_multiprocess_dir()
    metrics.serve(settings.metrics_port, settings.metrics_host)
    limit_tls_read_buffers()
    if not args.verbose:  # connects, claims and drops are what an operator wants to see
        logging.getLogger("pipeline.listener").setLevel(logging.INFO)
    redis_url = settings.require_redis_url()
    sessions = sessionmaker_for(settings.require_database_url())

    def enqueue(grant_id: str, folder_id: str, provider: str) -> None:
        jobs.sync_folder(grant_id, folder_id, provider)

    async def main() -> None:
        # pipeline.redis.CALL_TIMEOUT_S per round trip, on a pool of LISTENER_POOL_SIZE
        client = async_client(redis_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        listener = Listener(
            settings,
            listener_settings,
            redis=client,
            sessions=sessions,
            enqueue=enqueue,
            listener_id=args.listener_id,
            notify=jobs.kick_webhooks,
        )
        console.print(f"listener [bold]{listener.id}[/] running; Ctrl-C stops it")
        gauges = asyncio.create_task(_publish_connection_states(listener, stop))
        try:
            await listener.run(stop)
        finally:
            gauges.cancel()
            await client.aclose()  # type: ignore[attr-defined]  # stubs predate aclose; and its pool

    asyncio.run(main())
    return 0


async def _publish_connection_states(listener: Listener, stop: asyncio.Event) -> None:
    """Keep imap_pipeline_idle_connections{state} current (every METRICS_REFRESH_S)."""
    from pipeline import metrics

    while not stop.is_set():
        held = waiting = 0
        for state, count in listener.states().items():
            if state.value in HELD_STATES:
                held += count
            elif state.value in WAITING_STATES:
                waiting += count
        metrics.IDLE_CONNECTIONS.labels("held").set(held)
        metrics.IDLE_CONNECTIONS.labels("waiting").set(waiting)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), METRICS_REFRESH_S)
