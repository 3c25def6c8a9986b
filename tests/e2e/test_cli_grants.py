"""The `imap-pipeline grants` commands as a person runs them in a terminal."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.dev.ports import free_port
from pipeline.models import Folder, SyncFailure
from pipeline.sync.run import sync_grant_inline
from tests.support.grants import connect, sessions_for
from tests.support.mail import append, make_message
from tests.support.processes import run_cli
from tests.support.services import MailUser

pytestmark = pytest.mark.services

cli = run_cli


def add_args(user: MailUser) -> list[str]:
    return [
        "grants",
        "add",
        "--email",
        user.email,
        "--host",
        "127.0.0.1",
        "--port",
        str(user.server.port),
        "--tls",
        "starttls",
        "--username",
        user.name,
        "--password-stdin",
        "--no-sync",
    ]


def test_wrong_password_is_one_clear_line(settings: Settings, mail_user: MailUser) -> None:
    result = cli(settings, *add_args(mail_user), stdin="wrong-password-123\n")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert "refused the login" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "wrong-password-123" not in result.stderr + result.stdout
    listed = cli(settings, "grants", "list", "--json")
    assert json.loads(listed.stdout) == []


def test_add_then_status_as_json(settings: Settings, mail_user: MailUser) -> None:
    append(mail_user.server, mail_user.name, mail_user.password, make_message("hello"))
    added = cli(settings, *add_args(mail_user), "--json", stdin=mail_user.password + "\n")
    assert added.returncode == 0, added.stderr
    grant = json.loads(added.stdout)
    assert grant["email"] == mail_user.email
    assert grant["grant_status"] == "valid"
    assert mail_user.password not in added.stdout
    sync_grant_inline(sessions_for(settings), settings, grant["id"])

    status = cli(settings, "grants", "status", mail_user.email, "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["sync_state"] == "synced"
    inbox = next(f for f in view["folders"] if f["role"] == "inbox")
    assert inbox["stored"] == 1
    assert inbox["state"] == "synced"
    assert isinstance(inbox["uidvalidity"], int)
    # a human table too, without following (no terminal here)
    table = cli(settings, "grants", "status", grant["id"])
    assert "INBOX" in table.stdout and "synced" in table.stdout

    removed = cli(settings, "grants", "remove", grant["id"])
    assert removed.returncode == 0
    assert json.loads(cli(settings, "grants", "list", "--json").stdout) == []


def test_unknown_provider_domain_needs_a_host(settings: Settings) -> None:
    result = cli(
        settings, "grants", "add", "--email", "x@unknown.example", "--password-stdin", stdin="pw\n"
    )
    assert result.returncode == 1
    assert "No IMAP host known" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_retry_that_cannot_be_queued_keeps_the_failures(
    settings: Settings, mail_user: MailUser
) -> None:
    append(mail_user.server, mail_user.name, mail_user.password, make_message("fine"))
    grant_id = connect(settings, mail_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    with session_scope(settings.require_database_url()) as db:
        inbox = db.scalars(select(Folder).where(Folder.grant_id == grant_id)).first()
        assert inbox is not None
        db.add(SyncFailure(grant_id=grant_id, folder_id=inbox.id, uidvalidity=1, uid=7, error="x"))
    broker_down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})

    result = cli(broker_down, "grants", "failures", grant_id, "--retry")

    assert result.returncode == 1
    assert "failures are kept" in result.stderr.strip().splitlines()[-1]
    listed = cli(settings, "grants", "failures", grant_id, "--json")
    assert [(f["uid"], f["error"]) for f in json.loads(listed.stdout)] == [(7, "x")]


def test_another_server_or_username_for_a_connected_address_needs_replace(
    settings: Settings, mail_user: MailUser, _mail_user_pool: Iterator[MailUser]
) -> None:
    other = next(_mail_user_pool)
    first = cli(settings, *add_args(mail_user), "--json", stdin=mail_user.password + "\n")
    assert first.returncode == 0, first.stderr
    grant_id = json.loads(first.stdout)["id"]
    # the same address, another account (a login that works): refused, nothing changes
    args = add_args(other)
    args[args.index("--email") + 1] = mail_user.email
    refused = cli(settings, *args, stdin=other.password + "\n")
    assert refused.returncode == 1
    assert "changed nothing" in refused.stderr and "--replace" in refused.stderr
    listed = json.loads(cli(settings, "grants", "list", "--json").stdout)
    assert [(g["id"], g["settings"]["imap_username"]) for g in listed] == [
        (grant_id, mail_user.name)
    ]
    # the operator moves it on purpose
    moved = cli(settings, *args, "--replace", "--json", stdin=other.password + "\n")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["id"] == grant_id
    assert json.loads(moved.stdout)["settings"]["imap_username"] == other.name
    # re-authenticating with the same settings needs nothing
    again = cli(settings, *args, "--json", stdin=other.password + "\n")
    assert again.returncode == 0, again.stderr
