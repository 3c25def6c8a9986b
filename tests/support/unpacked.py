"""Debian's Cyrus IMAP and Courier-IMAP, unpacked (not installed) for the test suite.

``cyrus-imapd``, ``courier-imap`` and ``dovecot-imapd`` each provide and conflict with
``imap-server``: installing one removes the others. So ``scripts/test`` installs Dovecot and
only *downloads* the other two servers (``apt-get download``) and unpacks them with
``dpkg-deb -x`` below ``.venv/imap-servers/root``; their shared libraries come from ordinary
library packages it installs (``libical3``, ``libxapian30``, ``libcourier-unicode4``...). The
runners in :mod:`tests.support.cyrus` and :mod:`tests.support.courier` start the servers from
there with ``LD_LIBRARY_PATH`` pointing into the unpacked tree.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.errors import ServiceError

REPO = Path(__file__).resolve().parents[2]
UNPACKED_ROOT = REPO / ".venv" / "imap-servers" / "root"
ARCH_LIB = "usr/lib/x86_64-linux-gnu"
TOOL_TIMEOUT_S = 30.0  # saslpasswd2, makedatprog and friends answer in milliseconds


def unpacked(relative: str) -> Path:
    """A file of the unpacked packages.

    Raises:
        ServiceError: it is missing, with the command that unpacks the servers.
    """
    path = UNPACKED_ROOT / relative
    if not path.exists():
        raise ServiceError(
            f"{path} is missing: run scripts/test once (it downloads and unpacks Cyrus IMAP "
            "and Courier-IMAP into .venv/imap-servers without installing them)."
        )
    return path


def library_path(*extra: str) -> str:
    """``LD_LIBRARY_PATH`` for a program of the unpacked tree."""
    folders = [UNPACKED_ROOT / ARCH_LIB, UNPACKED_ROOT / "usr/lib"]
    folders += [UNPACKED_ROOT / e for e in extra]
    return ":".join(str(f) for f in folders)


def run_tool(argv: list[str], *, stdin: bytes = b"", env: dict[str, str] | None = None) -> str:
    """Run a helper program of the unpacked tree; its standard output.

    Raises:
        ServiceError: it failed or timed out (the message has its error output).
    """
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, timeout=TOOL_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{Path(argv[0]).name} timed out") from exc
    if done.returncode != 0:
        raise ServiceError(
            f"{Path(argv[0]).name} failed (exit {done.returncode}): "
            f"{done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout.decode(errors="replace")
