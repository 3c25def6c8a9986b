"""``imap-pipeline webhooks add | list | remove | rotate-secret``.

``add`` verifies the URL first (SSRF guard, then the ``GET ?challenge=`` handshake) and stores
nothing when that fails; the secret it prints, like the one ``rotate-secret`` prints, is shown
this once and never again.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from dotenv import dotenv_values
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from pipeline.config import RUNTIME_ENV_NAME, Settings
from pipeline.config.webhooks import WEBHOOK_ENV_PREFIX
from pipeline.crypto import SecretBox
from pipeline.db import check_connection, session_scope
from pipeline.errors import ServiceError
from pipeline.webhooks.errors import InvalidWebhookRequest, WebhookError
from pipeline.webhooks.schemas import TRIGGER_TYPES, WebhookDestinationOut
from pipeline.webhooks.service import WebhookService

console = Console()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``webhooks`` command group."""
    webhooks = sub.add_parser("webhooks", help="manage webhook destinations")
    wsub = webhooks.add_subparsers(dest="webhooks_command", metavar="SUBCOMMAND", required=True)

    add = wsub.add_parser(
        "add", help="add a destination (verified with the challenge handshake first)"
    )
    add.add_argument("url", help="https://… endpoint that answers GET ?challenge=X with X")
    add.add_argument(
        "--triggers",
        required=True,
        help=f"comma-separated trigger types: {', '.join(sorted(TRIGGER_TYPES))}",
    )
    add.add_argument("--description", default="")
    add.add_argument(
        "--notify-email",
        action="append",
        default=[],
        metavar="EMAIL",
        help="address told when the destination fails (repeat or comma-separate)",
    )
    add.add_argument("--json", action="store_true", help="print the destination as JSON")
    add.set_defaults(handler=_add)

    lst = wsub.add_parser("list", help="list destinations")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=_list)

    rm = wsub.add_parser("remove", help="remove a destination and what is still owed to it")
    rm.add_argument("id")
    rm.set_defaults(handler=_remove)

    rot = wsub.add_parser("rotate-secret", help="give a destination a new signing secret")
    rot.add_argument("id")
    rot.add_argument("--json", action="store_true")
    rot.set_defaults(handler=_rotate)


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@contextmanager
def _service() -> Iterator[tuple[WebhookService, Session]]:
    settings = Settings.load()
    url = settings.require_database_url()
    check_connection(url)
    box = SecretBox(settings.encryption_key_list)
    with WebhookService(settings.webhooks, box) as service:
        try:
            with session_scope(url) as session:
                yield service, session
        except ProgrammingError as exc:
            raise WebhookError(
                "The webhook tables are missing: run `imap-pipeline migrate` first."
            ) from exc
        except OperationalError as exc:
            raise ServiceError(f"Postgres failed during the command: {exc.orig}.") from exc


# What decides whether the webhooks worker may reach a destination.
DESTINATION_SETTINGS = ("ALLOWED_NETWORKS", "ALLOW_PRIVATE_DESTINATIONS")


def _warn_if_up_judges_otherwise() -> None:
    """Say so when this terminal allows destinations the running `up`'s worker would refuse."""
    runtime = Settings.load().data_dir / RUNTIME_ENV_NAME
    if not runtime.exists():
        return  # no `up` here: the roles run elsewhere, with settings of their own
    theirs = dotenv_values(runtime)
    for name in (WEBHOOK_ENV_PREFIX + suffix for suffix in DESTINATION_SETTINGS):
        mine = os.environ.get(name)
        if mine is not None and mine != theirs.get(name):
            console.print(
                f"[yellow]warning:[/] this terminal sets {name}={mine!r}, but the running "
                f"`imap-pipeline up` runs its webhooks worker with "
                f"{theirs.get(name, 'the default')!r}: it may refuse deliveries this command "
                f"accepts. Restart `up` with {name} set.",
                highlight=False,
            )


def _when(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _print_secret(view: WebhookDestinationOut) -> None:
    # plain print: the secret must come out on one line, unwrapped and unstyled
    print(f"secret: {view.webhook_secret}")
    console.print(
        "[yellow]Store it now: it is shown only this once.[/] Verify X-Nylas-Signature "
        "(hex HMAC-SHA256 of the raw body) with it."
    )


def _add(args: argparse.Namespace) -> int:
    triggers = _split([args.triggers])
    if not triggers:
        raise InvalidWebhookRequest("Give at least one trigger type with --triggers.")
    request = {
        "webhook_url": args.url,
        "trigger_types": triggers,
        "description": args.description,
        "notification_email_addresses": _split(args.notify_email),
    }
    _warn_if_up_judges_otherwise()
    with _service() as (service, session):
        view = service.create(session, request)
    if args.json:
        print(json.dumps(view.model_dump(), indent=2))
        return 0
    console.print(
        f"[green]added[/] webhook [bold]{view.id}[/] → {view.webhook_url} "
        f"({', '.join(view.trigger_types)})",
        highlight=False,
    )
    _print_secret(view)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _service() as (service, session):
        views = service.list(session)
    if args.json:
        print(json.dumps([v.model_dump(exclude_none=True) for v in views], indent=2))
        return 0
    if not views:
        console.print("no webhook destinations; add one with `imap-pipeline webhooks add URL`")
        return 0
    table = Table("id", "url", "triggers", "status", "since", "why", "description")
    for v in views:
        table.add_row(
            v.id,
            v.webhook_url,
            ", ".join(v.trigger_types),
            v.status,
            _when(v.status_updated_at),
            v.failure_reason or "",
            v.description,
        )
    console.print(table)
    return 0


def _remove(args: argparse.Namespace) -> int:
    with _service() as (service, session):
        service.delete(session, args.id)
    console.print(f"[green]removed[/] webhook {args.id}", highlight=False)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    with _service() as (service, session):
        view = service.rotate_secret(session, args.id)
    if args.json:
        print(json.dumps(view.model_dump(), indent=2))
        return 0
    console.print(f"[green]new secret[/] for webhook {view.id}", highlight=False)
    _print_secret(view)
    return 0
