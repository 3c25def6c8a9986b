"""The ``imap-pipeline`` console script.

Each command group lives in its own module of this package and exposes
``register(subparsers)``; the parser (:mod:`pipeline.cli._app`) discovers them, so a new area
adds a module here and touches nothing else. This module imports nothing heavy itself: the
command modules load inside :func:`main`'s Ctrl-C guard, so an interrupt while they load ends
the command quietly too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # nothing loads outside main's guard
    import argparse
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        import signal

        # Ctrl-C while the command's modules load waits until they are loaded: an interrupt
        # inside a compiled module's initialisation is no KeyboardInterrupt (pydantic-core
        # turns it into a Rust panic with a traceback).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            from pipeline.cli._app import run
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return run(argv)
    except KeyboardInterrupt:  # Ctrl-C at any moment: no traceback
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command module's subcommands."""
    from pipeline.cli._app import build_parser as build

    return build()
