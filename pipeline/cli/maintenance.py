"""``imap-pipeline reindex | maintenance purge | limits show|set``.

- ``reindex GRANT [--folder F ...]``: re-plan folders' whole retention window at their next sync
  (failed messages are tried again, a UIDVALIDITY stop is lifted) and enqueue the syncs.
- ``maintenance purge [--dry-run]``: run the retention purge now, in this process.
- ``limits show PROVIDER [--grant G]`` / ``limits set PROVIDER NAME=VALUE ...``: the shared
  rate limits (operator overrides live in Redis and apply at once to every worker).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import redis
from rich.console import Console

from pipeline.config import Settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.errors import ConfigurationError
from pipeline.grants.service import get_grant
from pipeline.limits import Limits, RateLimiter
from pipeline.maintenance.purge import purge
from pipeline.maintenance.repository import MaintenanceRepository
from pipeline.presets import PRESETS
from pipeline.redis import BATCH_TIMEOUT_S
from pipeline.redis import client as redis_client

console = Console()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``reindex``, ``maintenance`` and ``limits`` commands."""
    reindex = sub.add_parser("reindex", help="re-plan a grant's folders and sync them again")
    reindex.add_argument("grant", help="grant id or email")
    reindex.add_argument(
        "--folder", action="append", help="folder name (repeatable; default: every folder)"
    )
    reindex.set_defaults(handler=_reindex)

    maintenance = sub.add_parser("maintenance", help="run a periodic job now")
    msub = maintenance.add_subparsers(dest="maintenance_command", metavar="JOB", required=True)
    purge_cmd = msub.add_parser("purge", help="remove mail older than the retention window")
    purge_cmd.add_argument("--dry-run", action="store_true", help="only count what would go")
    purge_cmd.set_defaults(handler=_purge)

    limits = sub.add_parser("limits", help="show or change the shared rate limits")
    lsub = limits.add_subparsers(dest="limits_command", metavar="SUBCOMMAND", required=True)
    show = lsub.add_parser(
        "show", help="a provider's limits (and a grant's back-off and listener connections)"
    )
    show.add_argument("provider", choices=sorted(PRESETS))
    show.add_argument(
        "--grant",
        help="grant id or email: its back-off, connections, and the state of each listener "
        "connection (why it last ended, when it is retried)",
    )
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_limits_show)
    change = lsub.add_parser("set", help="override a provider's limits (NAME=VALUE ...)")
    change.add_argument("provider", choices=sorted(PRESETS))
    change.add_argument("values", nargs="+", metavar="NAME=VALUE")
    change.set_defaults(handler=_limits_set)


def _reindex(args: argparse.Namespace) -> int:
    settings = Settings.load()
    with session_scope(settings.require_database_url()) as db:
        grant = get_grant(db, args.grant)
        grant_id, provider = grant.id, grant.provider
        repo = MaintenanceRepository(db)
        folder_ids = repo.reset_for_reindex(grant_id, args.folder)
        unstopped = repo.unstop_grant(grant_id)
    if not folder_ids:
        console.print("no folder to reindex (unknown name, or a reindex is already running)")
        return 1
    from pipeline.jobs import Jobs

    jobs = Jobs.from_settings(settings)
    for folder_id in folder_ids:  # after the commit
        jobs.sync_folder(grant_id, folder_id, provider)
    console.print(
        f"reindex of {len(folder_ids)} folder(s) of {grant_id} queued"
        + (" (grant no longer stopped)" if unstopped else "")
    )
    return 0


def _purge(args: argparse.Namespace) -> int:
    settings = Settings.load()
    now = datetime.now(UTC)
    if args.dry_run:
        cutoff = now - timedelta(days=settings.sync.retention_days)
        with session_scope(settings.require_database_url()) as db:
            count = MaintenanceRepository(db).count_messages_before(cutoff)
        console.print(f"{count} message(s) received before {cutoff:%Y-%m-%d %H:%M} UTC")
        return 0
    sessions = sessionmaker_for(settings.require_database_url())
    result = purge(sessions, retention_days=settings.sync.retention_days, now=now)
    while not result.complete:
        more = purge(sessions, retention_days=settings.sync.retention_days, now=now)
        more.messages += result.messages
        more.threads += result.threads
        more.sync_failures += result.sync_failures
        result = more
    console.print(
        f"purged {result.messages} message(s), {result.threads} emptied thread(s), "
        f"{result.sync_failures} old sync failure(s)"
    )
    return 0


def _redis(settings: Settings) -> redis.Redis[bytes]:
    return redis_client(settings.require_redis_url(), timeout_s=BATCH_TIMEOUT_S)


def _limiter(settings: Settings) -> RateLimiter:
    return RateLimiter(_redis(settings))


def _limits_show(args: argparse.Namespace) -> int:
    from pipeline.listener.status import read_status

    settings = Settings.load()
    limiter = _limiter(settings)
    view: dict[str, object] = {"provider": args.provider, **asdict(limiter.limits(args.provider))}
    if args.grant:
        with session_scope(settings.require_database_url()) as db:
            grant = get_grant(db, args.grant)
            grant_id, host, provider = grant.id, grant.imap_host, grant.provider
        view["grant"] = {
            "id": grant_id,
            **limiter.status(provider, host, grant_id),
            # per folder id: what the listener's connection does, and why it last ended
            "listener": read_status(_redis(settings), grant_id),
        }
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        for key, value in view.items():
            console.print(f"{key}: {value}", highlight=False)
    return 0


def _limits_set(args: argparse.Namespace) -> int:
    known = set(Limits.__dataclass_fields__)
    values: dict[str, float] = {}
    for item in args.values:
        name, sep, raw = item.partition("=")
        if not sep or name not in known:
            raise ConfigurationError(
                f"{item!r}: use NAME=VALUE with NAME one of {', '.join(sorted(known))}."
            )
        try:
            values[name] = float(raw)
        except ValueError as exc:
            raise ConfigurationError(f"{item!r}: the value must be a number.") from exc
        if values[name] <= 0:
            raise ConfigurationError(f"{item!r}: the value must be positive.")
    _limiter(Settings.load()).set_limits(args.provider, values)
    console.print(f"limits of {args.provider} updated: {values}")
    return 0
