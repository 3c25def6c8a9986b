"""The ``imap-pipeline`` console script.

Each command group lives in its own module of this package and exposes
``register(subparsers)``; :func:`main` discovers them, so a new area adds a module here and
touches nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError
from rich.console import Console

from pipeline.config import describe_settings_error
from pipeline.errors import PipelineError

Handler = Callable[[argparse.Namespace], int]

err_console = Console(stderr=True, soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command module's subcommands."""
    parser = argparse.ArgumentParser(
        prog="imap-pipeline",
        description="Self-hosted IMAP sync engine in the shape of the Nylas v3 IMAP connector.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def _configure_logging(level: int) -> None:
    from pipeline import logs
    from pipeline.config import Settings

    try:
        log_format = Settings.load().log_format
    except ValidationError:
        log_format = "text"  # the command itself says which setting is wrong, in one line
    logs.configure(level, log_format)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        return _run(argv)
    except KeyboardInterrupt:  # Ctrl-C at any moment, even while modules load: no traceback
        return 130


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(logging.DEBUG if args.verbose else logging.WARNING)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except PipelineError as exc:
        # One clear line, never a stack trace, never a secret (messages are written that way).
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except ValidationError as exc:
        message = describe_settings_error(exc)
        if message is None:
            raise
        err_console.print(f"[bold red]error:[/] {message}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
