"""The ``webhooks`` command group parses as documented."""

from __future__ import annotations

import pytest

from pipeline.cli import build_parser, main
from pipeline.cli import webhooks as cli


def test_add_parses_triggers_description_and_emails() -> None:
    args = build_parser().parse_args(
        [
            "webhooks",
            "add",
            "https://example.com/hook",
            "--triggers",
            "message.created,message.updated",
            "--description",
            "crm",
            "--notify-email",
            "a@example.com,b@example.com",
            "--notify-email",
            "c@example.com",
        ]
    )
    assert args.handler is cli._add
    assert args.url == "https://example.com/hook"
    assert cli._split([args.triggers]) == ["message.created", "message.updated"]
    assert cli._split(args.notify_email) == ["a@example.com", "b@example.com", "c@example.com"]


@pytest.mark.parametrize(
    ("argv", "handler"),
    [
        (["webhooks", "list", "--json"], cli._list),
        (["webhooks", "remove", "abc"], cli._remove),
        (["webhooks", "rotate-secret", "abc"], cli._rotate),
    ],
)
def test_other_subcommands(argv: list[str], handler: object) -> None:
    assert build_parser().parse_args(argv).handler is handler


def test_add_requires_triggers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["webhooks", "add", "https://example.com/hook"])
    assert "--triggers" in capsys.readouterr().err


def test_missing_database_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.delenv("IMAP_PIPELINE_DATABASE_URL", raising=False)
    monkeypatch.setenv("IMAP_PIPELINE_DATA_DIR", str(tmp_path))
    assert main(["webhooks", "list"]) == 1
    err = capsys.readouterr().err
    assert "IMAP_PIPELINE_DATABASE_URL" in err
    assert "Traceback" not in err
