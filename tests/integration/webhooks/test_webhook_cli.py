"""``imap-pipeline webhooks …`` as a user runs it: a subprocess against real Postgres."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_receiver import HostileReceiver
from webhook_receiver import Receiver

from pipeline.config.webhooks import WebhookSettings
from pipeline.crypto import SecretBox, generate_key
from pipeline.db import session_scope
from pipeline.webhooks import outbox
from pipeline.webhooks.delivery import Drainer
from pipeline.webhooks.models import WebhookDestination
from pipeline.webhooks.sender import Sender

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[3]
CLI_TIMEOUT_S = 60
SECRET_LINE = re.compile(r"^secret: ([0-9a-f]{64})$", re.MULTILINE)


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment of a CLI run on this test's database (loopback destinations allowed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAP_PIPELINE_")}
    env.update(
        IMAP_PIPELINE_DATABASE_URL=database_url,
        IMAP_PIPELINE_ENCRYPTION_KEYS=generate_key(),
        IMAP_PIPELINE_DATA_DIR=str(tmp_path / "data"),
        IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        IMAP_PIPELINE_WEBHOOK_CHALLENGE_TIMEOUT_S="3",
        COLUMNS="200",
    )
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "webhooks", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_add_list_rotate_remove(
    cli_env: dict[str, str], receiver: Receiver, database_url: str
) -> None:
    added = _run(
        cli_env,
        "add",
        receiver.url(),
        "--triggers",
        "message.created,message.updated",
        "--description",
        "crm sync",
        "--notify-email",
        "ops@example.com",
    )
    assert added.returncode == 0, added.stderr
    (secret,) = SECRET_LINE.findall(added.stdout)
    assert "shown only this once" in added.stdout
    assert receiver.challenges() == ["/hook"]

    listed = _run(cli_env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (view,) = json.loads(listed.stdout)
    assert view["webhook_url"] == receiver.url()
    assert view["trigger_types"] == ["message.created", "message.updated"]
    assert view["description"] == "crm sync"
    assert view["notification_email_addresses"] == ["ops@example.com"]
    assert view["status"] == "active"
    assert "webhook_secret" not in view
    assert secret not in listed.stdout
    table = _run(cli_env, "list")
    assert view["id"] in table.stdout and secret not in table.stdout

    with session_scope(database_url) as s:
        sealed = s.get_one(WebhookDestination, view["id"]).secret_sealed
    assert SecretBox([cli_env["IMAP_PIPELINE_ENCRYPTION_KEYS"]]).open(sealed) == secret

    rotated = _run(cli_env, "rotate-secret", view["id"])
    assert rotated.returncode == 0, rotated.stderr
    (new_secret,) = SECRET_LINE.findall(rotated.stdout)
    assert new_secret != secret

    removed = _run(cli_env, "remove", view["id"])
    assert removed.returncode == 0, removed.stderr
    assert json.loads(_run(cli_env, "list", "--json").stdout) == []

    again = _run(cli_env, "remove", view["id"])
    assert again.returncode == 1
    assert "No webhook destination" in again.stderr and "Traceback" not in again.stderr


def test_failed_challenge_is_one_clear_error_and_stores_nothing(
    cli_env: dict[str, str], receiver: Receiver
) -> None:
    receiver.route("/hook", challenge="wrong")
    result = _run(cli_env, "add", receiver.url(), "--triggers", "message.created")
    assert result.returncode == 1
    assert result.stderr.startswith("error:")
    assert "challenge" in result.stderr and "Traceback" not in result.stderr
    assert SECRET_LINE.search(result.stdout) is None
    assert json.loads(_run(cli_env, "list", "--json").stdout) == []


def test_private_destinations_are_refused_unless_allowed(
    cli_env: dict[str, str], receiver: Receiver
) -> None:
    env = {**cli_env}
    del env["IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS"]
    result = _run(env, "add", receiver.url(), "--triggers", "message.created")
    assert result.returncode == 1
    assert "IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS" in result.stderr.replace("\n", "")
    assert receiver.challenges() == []


def test_unknown_trigger_is_refused(cli_env: dict[str, str], receiver: Receiver) -> None:
    result = _run(cli_env, "add", receiver.url(), "--triggers", "message.created,calendar.exploded")
    assert result.returncode == 1
    assert "calendar.exploded" in result.stderr
    assert receiver.challenges() == []


def test_list_says_why_a_destination_fails(
    cli_env: dict[str, str], database_url: str, wh_settings: WebhookSettings
) -> None:
    with HostileReceiver(interval_s=0.5, trickle_for_s=30) as hostile:
        url = hostile.route("/slow", "trickle_headers")
        added = _run(cli_env, "add", url, "--triggers", "message.created", "--json")
        assert added.returncode == 0, added.stderr
        dest = json.loads(added.stdout)["id"]
        uow = functools.partial(session_scope, database_url)
        with uow() as s:
            outbox.emit(s, grant_id=None, type="message.created", obj={"id": "m"})
        with uow() as s:
            outbox.dispatch_batch(s, limit=10)
        settings = wh_settings.model_copy(update={"request_timeout_s": 1.0})
        box = SecretBox([cli_env["IMAP_PIPELINE_ENCRYPTION_KEYS"]])
        with Sender(settings) as sender:
            Drainer(uow, settings=settings, box=box, sender=sender).drain(dest)
    listed = _run(cli_env, "list")
    assert listed.returncode == 0, listed.stderr
    assert "failing" in listed.stdout
    assert "why" in listed.stdout and "DeadlineExceeded" in listed.stdout
    (view,) = json.loads(_run(cli_env, "list", "--json").stdout)
    assert view["status"] == "failing"
    assert view["failure_reason"].startswith(
        "DeadlineExceeded: no complete response headers within 1 s"
    )
