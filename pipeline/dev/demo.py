"""The demo mailbox of ``imap-pipeline up --demo``: a local Dovecot with a ``demo`` user and
generated mail, stored as a grant through the CLI the way a user would add one."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pipeline.dev.ports import LOCALHOST, free_port, port_in_use

GRANT_ADD_TIMEOUT_S = 120.0  # the CLI logs in to the demo server before storing the grant
DEMO_USER = "demo"
DEMO_EMAIL = "demo@localhost"
DEMO_MESSAGES = 300
DEMO_SEED = 20240601
DEMO_OLD_FRACTION = 0.15  # some mail older than the 90-day window, which sync must skip
DEMO_STATE_NAME = "demo-account.json"


class Say(Protocol):
    """How ``up`` prints a line of its own."""

    def __call__(self, message: str, style: str = "") -> None: ...


def start_demo(
    data_dir: Path, stack: contextlib.ExitStack, retention_days: int, say: Say
) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """Start the demo Dovecot (on ``stack``) with a seeded ``demo`` mailbox.

    The port and password are kept in ``<data_dir>/demo-account.json`` (owner-only), so a
    restart serves the same account and the stored grant keeps working.

    Returns:
        The account (what ``grants add`` needs, password included) and summary rows.
    """
    from pipeline.dev.dovecot import LocalDovecot, ensure_dovecot_installed
    from pipeline.dev.mailgen import generate
    from pipeline.dev.seed import seed_maildir

    ensure_dovecot_installed()
    state_file = data_dir / DEMO_STATE_NAME
    state: dict[str, object] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        state = json.loads(state_file.read_text())
    saved_port = state.get("port")
    # the same port as last time keeps the stored grant pointing at the right place
    port = (
        saved_port if isinstance(saved_port, int) and not port_in_use(saved_port) else free_port()
    )
    dovecot = LocalDovecot(data_dir / "demo-dovecot", port)
    say(f"starting the demo Dovecot on {LOCALHOST}:{port} …")
    stack.enter_context(dovecot)
    saved_password = state.get("password")
    password = saved_password if isinstance(saved_password, str) else secrets.token_urlsafe(18)
    dovecot.add_user(DEMO_USER, password)
    maildir = dovecot.maildir(DEMO_USER)
    if not maildir.exists():
        count = seed_maildir(
            maildir,
            generate(
                DEMO_MESSAGES,
                seed=DEMO_SEED,
                now=datetime.now(UTC),
                old_fraction=DEMO_OLD_FRACTION,
                owner=DEMO_EMAIL,
                retention_days=retention_days,
            ),
            owner=dovecot.mail_user,
        )
        say(f"seeded the demo mailbox with {count} messages")
    account: dict[str, object] = {
        "email": DEMO_EMAIL,
        "host": LOCALHOST,
        "port": port,
        "tls": "plain",
        "username": DEMO_USER,
        "password": password,
    }
    tmp = state_file.with_name(DEMO_STATE_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(account, fh, indent=2)
    tmp.replace(state_file)
    rows = [
        ("demo IMAP", f"{LOCALHOST}:{port} (plain), user {DEMO_USER}"),
        ("demo credentials", str(state_file)),
    ]
    return account, rows


def connect_demo(
    account: Mapping[str, object], env: Mapping[str, str], data_dir: Path, say: Say
) -> tuple[str, str] | None:
    """Store the demo mailbox as a grant with ``imap-pipeline grants add`` (password on stdin).

    Returns:
        The summary row of the grant, or None when adding it failed (said why).
    """
    argv = [
        *_cli_command(),
        "grants", "add",
        "--email", DEMO_EMAIL,
        "--host", LOCALHOST,
        "--port", str(account["port"]),
        "--tls", "plain",
        "--allow-plaintext",
        "--username", DEMO_USER,
        "--password-stdin",
        "--json",
    ]  # fmt: skip
    say("connecting the demo mailbox: imap-pipeline grants add --email demo@localhost …")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=data_dir,
    )
    try:
        # the password goes on stdin, never on a command line
        out, err = proc.communicate(
            (str(account["password"]) + "\n").encode(), timeout=GRANT_ADD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        say("connecting the demo mailbox timed out", "bold red")
        return None
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        say(
            f"connecting the demo mailbox failed (exit {proc.returncode}): {message}",
            "bold red",
        )
        return None
    try:
        grant = json.loads(out)
        grant_id = str(grant.get("id") or grant.get("grant_id") or "?")
    except (ValueError, AttributeError):
        grant_id = "?"
    say(f"demo mailbox connected as grant {grant_id}", "green")
    return ("demo grant", f"{grant_id} ({DEMO_EMAIL})")


def _cli_command() -> list[str]:
    script = Path(sys.executable).parent / "imap-pipeline"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pipeline.cli"]
