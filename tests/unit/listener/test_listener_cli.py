"""``imap-pipeline listen``: the command exists and documents its settings."""

from __future__ import annotations

import pytest

from pipeline.cli import build_parser
from pipeline.config.listener import ListenerSettings


def test_listen_is_a_command_with_an_id_option() -> None:
    args = build_parser().parse_args(["listen", "--id", "blue"])
    assert args.listener_id == "blue"
    assert callable(args.handler)


def test_listen_help_lists_every_setting_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["listen", "--help"])
    out = capsys.readouterr().out
    for name, field in ListenerSettings.model_fields.items():
        assert f"IMAP_PIPELINE_LISTENER_{name.upper()}={field.default}" in out
