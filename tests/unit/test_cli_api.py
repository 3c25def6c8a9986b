"""``imap-pipeline api``: how many uvicorn processes it runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.cli import build_parser
from pipeline.cli.api import worker_count
from pipeline.config import ApiSettings, Settings, describe_settings_error


def test_workers_come_from_the_setting_unless_the_flag_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IMAP_PIPELINE_API_WORKERS", raising=False)
    parser = build_parser()
    assert worker_count(parser.parse_args(["api"]), Settings().api) == 1
    assert worker_count(parser.parse_args(["api"]), ApiSettings(workers=3)) == 3
    assert worker_count(parser.parse_args(["api", "--workers", "2"]), ApiSettings(workers=3)) == 2


def test_a_worker_count_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["api", "--workers", "0"])
    assert "at least 1 worker process" in capsys.readouterr().err
    with pytest.raises(ValidationError) as refused:
        ApiSettings(workers=0)
    assert "IMAP_PIPELINE_API_WORKERS: " in (describe_settings_error(refused.value) or "")
