"""The console script's body: the parser built from every command module, and the run.

Imported by :func:`pipeline.cli.main` inside its Ctrl-C guard, so that an interrupt while these
modules load is as quiet as one at any later moment.
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
    package = sys.modules[__package__ or "pipeline.cli"]
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
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


def run(argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run its command; errors are one line, never a traceback."""
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
