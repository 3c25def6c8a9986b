"""``imap-pipeline grants add | list | status | remove | sync | failures``."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.errors import ConfigurationError, GrantConflict, PipelineError
from pipeline.folders.repository import FolderRepository
from pipeline.folders.views import status_dict
from pipeline.grants.repository import GrantRepository
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant, get_grant, remove_grant
from pipeline.grants.state import GRANT_IN_INITIAL_SYNC
from pipeline.grants.views import grant_dict
from pipeline.messages.repository import MessageRepository
from pipeline.presets import PRESETS

console = Console(soft_wrap=True)
STATUS_POLL_S = 1.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``grants`` command group."""
    grants = sub.add_parser("grants", help="connect and inspect IMAP accounts")
    gsub = grants.add_subparsers(dest="grants_command", metavar="SUBCOMMAND", required=True)

    add = gsub.add_parser("add", help="connect an IMAP account (logs in before storing it)")
    add.add_argument("--email", required=True)
    add.add_argument("--provider", choices=sorted(PRESETS), help="default: from the domain")
    add.add_argument("--host", help="IMAP host (default: from the provider preset)")
    add.add_argument("--port", type=int)
    add.add_argument("--tls", choices=["ssl", "starttls", "plain"])
    add.add_argument("--username", help="default: the email address")
    add.add_argument("--allow-plaintext", action="store_true", help="permit --tls plain")
    add.add_argument(
        "--insecure-skip-verify", action="store_true", help="do not verify the certificate"
    )
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.add_argument("--smtp-host")
    add.add_argument("--smtp-port", type=int)
    add.add_argument("--smtp-tls", choices=["ssl", "starttls", "plain"])
    add.add_argument("--smtp-username")
    add.add_argument(
        "--replace",
        action="store_true",
        help="move the address's existing grant to these server settings (without it, an "
        "address connected with another server or username is refused)",
    )
    add.add_argument("--no-sync", action="store_true", help="store the grant, sync later")
    add.add_argument("--json", action="store_true", help="print the grant as JSON")
    add.set_defaults(handler=_add)

    lst = gsub.add_parser("list", help="list grants")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=_list)

    status = gsub.add_parser("status", help="per-folder sync status (live while syncing)")
    status.add_argument("grant", nargs="?", help="grant id or email (default: all)")
    status.add_argument("--json", action="store_true")
    status.add_argument("--once", action="store_true", help="print once, do not follow")
    status.set_defaults(handler=_status)

    rm = gsub.add_parser("remove", help="remove a grant and all its data")
    rm.add_argument("grant")
    rm.set_defaults(handler=_remove)

    sync = gsub.add_parser("sync", help="enqueue a sync of every folder of a grant now")
    sync.add_argument("grant")
    sync.set_defaults(handler=_sync)

    failures = gsub.add_parser(
        "failures", help="messages that could not be fetched, parsed or stored, and why"
    )
    failures.add_argument("grant")
    failures.add_argument("--json", action="store_true")
    failures.add_argument(
        "--retry",
        action="store_true",
        help="forget them and enqueue a fetch of those messages again (after a server fix)",
    )
    failures.set_defaults(handler=_failures)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"IMAP password for {args.email}: ")
    if not password:
        raise ConfigurationError("An empty password was given.")
    return password


def _enqueue_sync(settings: Settings, grant_id: str, provider: str) -> bool:
    from pipeline.jobs import Jobs

    try:
        Jobs.from_settings(settings).sync_grant(grant_id, provider)
    except Exception as exc:  # broker down: the grant is stored; reconciliation syncs it later
        console.print(f"[yellow]warning:[/] could not enqueue the sync ({type(exc).__name__}).")
        return False
    return True


def _add(args: argparse.Namespace) -> int:
    settings = Settings.load()
    request = GrantRequest(
        email=args.email,
        password=_read_password(args),
        provider=args.provider,
        imap_host=args.host,
        imap_port=args.port,
        imap_tls=args.tls,
        imap_username=args.username,
        allow_plaintext=args.allow_plaintext,
        verify_tls=not args.insecure_skip_verify,
        smtp_host=args.smtp_host,
        smtp_port=args.smtp_port,
        smtp_tls=args.smtp_tls,
        smtp_username=args.smtp_username,
    )
    with session_scope(settings.require_database_url()) as db:
        # the operator's own command: hosts are not limited to public addresses
        existing = GrantRepository(db).get_by_email(request.email) if args.replace else None
        try:
            result = create_grant(db, settings, request, grant=existing)
        except GrantConflict as exc:
            raise GrantConflict(
                f"{exc} To move it to these settings: imap-pipeline grants add --replace ..."
            ) from exc
        view = grant_dict(result.grant)
        grant_id, provider = result.grant.id, result.grant.provider
    queued = False if args.no_sync else _enqueue_sync(settings, grant_id, provider)
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        verb = "connected" if result.created else "re-authenticated"
        console.print(
            f"[green]{verb}[/] {view['email']} as grant [bold]{grant_id}[/] ({provider})"
            + (" — initial sync queued" if queued else "")
        )
        console.print(f"watch it: imap-pipeline grants status {grant_id}")
    return 0


def _list(args: argparse.Namespace) -> int:
    settings = Settings.load()
    with session_scope(settings.require_database_url()) as db:
        views = [grant_dict(g) for g in GrantRepository(db).list()]
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    table = Table("id", "email", "preset", "status", "sync")
    for v in views:
        table.add_row(
            v["id"],
            v["email"],
            v["settings"]["provider_preset"],
            v["grant_status"],
            v["sync_state"],
        )
    console.print(table)
    return 0


def _load_status(settings: Settings, grant_ref: str) -> dict[str, Any]:
    with session_scope(settings.require_database_url()) as db:
        grant = get_grant(db, grant_ref)
        folders = FolderRepository(db)
        return status_dict(grant, folders.for_grant(grant.id), folders.counts(grant.id))


def _status_table(view: dict[str, Any]) -> Table:
    table = Table(
        "folder",
        "role",
        "uidvalidity",
        "stored",
        "in window",
        "failed",
        "state",
        title=f"{view['email']} — {view['grant_status']}, {view['sync_state']}"
        + (f" ({view['status_detail']})" if view.get("status_detail") else "")
        + (
            f"; {view['folders_skipped']:,} more folders on the server are not synced "
            "(IMAP_PIPELINE_MAX_FOLDERS_PER_GRANT)"
            if view.get("folders_skipped")
            else ""
        ),
    )
    for f in view["folders"]:
        table.add_row(
            f["name"],
            f["role"] or "",
            str(f["uidvalidity"] or ""),
            str(f["stored"]),
            str(f["in_window"]),
            str(f["failed"]),
            f["state"] + (f": {f['state_detail']}" if f["state_detail"] else ""),
        )
    return table


def _status(args: argparse.Namespace) -> int:
    settings = Settings.load()
    if not args.grant:
        with session_scope(settings.require_database_url()) as db:
            refs = [g.id for g in GrantRepository(db).list()]
        views = [_load_status(settings, ref) for ref in refs]
        if args.json:
            print(json.dumps(views, indent=2))
        else:
            for v in views:
                console.print(_status_table(v))
        return 0
    view = _load_status(settings, args.grant)
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    if args.once or view["sync_state"] not in GRANT_IN_INITIAL_SYNC or not console.is_terminal:
        console.print(_status_table(view))
        return 0
    return _follow(settings, args.grant)


def _failures(args: argparse.Namespace) -> int:
    settings = Settings.load()
    ranges: dict[str, tuple[int, int]] = {}
    with session_scope(settings.require_database_url()) as db:
        grant = get_grant(db, args.grant)
        repo = MessageRepository(db)
        found = repo.failures_of(grant.id)
        rows: list[dict[str, Any]] = [
            {
                "folder": name,
                "folder_id": f.folder_id,
                "uidvalidity": f.uidvalidity,
                "uid": f.uid,
                "error": f.error,
                "recorded_at": f.recorded_at.isoformat(),
            }
            for f, name in found
        ]
        if args.retry:
            repo.clear_failures(grant.id)
            for f, _ in found:
                lo, hi = ranges.get(f.folder_id, (f.uid, f.uid))
                ranges[f.folder_id] = (min(lo, f.uid), max(hi, f.uid))
        grant_id, provider = grant.id, grant.provider
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        console.print(f"no failures recorded for {grant_id}")
    else:
        table = Table("folder", "uid", "recorded", "error", title=f"failures of {grant_id}")
        for row in rows:
            table.add_row(row["folder"], str(row["uid"]), row["recorded_at"][:19], row["error"])
        console.print(table)
    if ranges:
        from pipeline.jobs import Jobs

        jobs = Jobs.from_settings(settings)
        try:
            for folder_id, uid_range in ranges.items():
                jobs.sync_folder(grant_id, folder_id, provider, uid_range=uid_range)
        except Exception as exc:  # broker down: put the failures back, or nothing refetches them
            with session_scope(settings.require_database_url()) as db:
                MessageRepository(db).record_failures(
                    [
                        {k: row[k] for k in ("folder_id", "uidvalidity", "uid", "error")}
                        | {"grant_id": grant_id}
                        for row in rows
                    ]
                )
            raise PipelineError(
                f"Could not queue the fetch ({type(exc).__name__}); the failures are kept. "
                "Check that Redis is up and run the command again."
            ) from exc
        if not args.json:
            console.print(f"forgotten; a fetch of {len(rows)} message(s) is queued")
    return 0


def _follow(settings: Settings, grant_ref: str) -> int:
    """A live progress bar per folder until the initial sync completes (Ctrl-C leaves)."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[state]}"),
        console=console,
    ) as progress:
        bars: dict[str, Any] = {}
        while True:
            view = _load_status(settings, grant_ref)
            for f in view["folders"]:
                if f["id"] not in bars:
                    bars[f["id"]] = progress.add_task(f["name"], total=None, state=f["state"])
                progress.update(
                    bars[f["id"]],
                    completed=f["stored"] + f["failed"],
                    total=max(f["in_window"], 1),
                    state=f["state"],
                )
            if view["sync_state"] not in GRANT_IN_INITIAL_SYNC:
                break
            time.sleep(STATUS_POLL_S)
    console.print(_status_table(view))
    return 0


def _remove(args: argparse.Namespace) -> int:
    settings = Settings.load()
    with session_scope(settings.require_database_url()) as db:
        grant = get_grant(db, args.grant)
        email, grant_id = grant.email, grant.id
        remove_grant(db, grant)
    console.print(f"removed grant {grant_id} ({email}) and its data")
    return 0


def _sync(args: argparse.Namespace) -> int:
    settings = Settings.load()
    with session_scope(settings.require_database_url()) as db:
        grant = get_grant(db, args.grant)
        if grant.grant_status != "valid":
            raise PipelineError(
                f"Grant {grant.id} is {grant.grant_status}: {grant.status_detail or ''} "
                "Re-authenticate it with `imap-pipeline grants add`."
            )
        grant_id, provider = grant.id, grant.provider
    if _enqueue_sync(settings, grant_id, provider):
        console.print(f"sync of {grant_id} queued")
    return 0
