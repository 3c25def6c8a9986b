"""``imap-pipeline up | migrate | keygen``."""

from __future__ import annotations

import argparse

from rich.console import Console

from pipeline.config import Settings
from pipeline.crypto import generate_key
from pipeline.db import check_connection, migrate

console = Console(soft_wrap=True)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the commands of this module."""
    up = sub.add_parser("up", help="run the whole pipeline in the foreground (Ctrl-C stops it)")
    up.add_argument(
        "--demo", action="store_true", help="also start a local Dovecot with a demo mailbox"
    )
    up.set_defaults(handler=_up)

    mig = sub.add_parser("migrate", help="apply database migrations")
    mig.set_defaults(handler=_migrate)

    key = sub.add_parser(
        "keygen", help="print a new encryption key for IMAP_PIPELINE_ENCRYPTION_KEYS"
    )
    key.set_defaults(handler=_keygen)


def _up(args: argparse.Namespace) -> int:
    from pipeline.dev.up import run_up

    return run_up(Settings.load(), demo=args.demo)


def _migrate(args: argparse.Namespace) -> int:
    url = Settings.load().require_database_url()
    check_connection(url)
    migrate(url)
    console.print("[green]database is up to date[/]")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    print(generate_key())
    return 0
