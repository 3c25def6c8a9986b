"""The suite never reads the running user's configuration or data folder."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import Settings
from tests.conftest import SUITE_DATA_DIR, TEST_ONLY_VARIABLES


def test_settings_use_the_suites_own_empty_data_folder() -> None:
    settings = Settings.load()
    assert settings.data_dir == SUITE_DATA_DIR
    assert not settings.data_dir.is_relative_to(Path.home() / ".imap-pipeline")
    assert settings.api_key_list == []  # nothing leaks in from a developer's `up`
    assert settings.database_url is None


def test_only_test_variables_are_inherited() -> None:
    inherited = {n for n in os.environ if n.startswith("IMAP_PIPELINE_")}
    assert inherited <= {*TEST_ONLY_VARIABLES, "IMAP_PIPELINE_DATA_DIR"}
