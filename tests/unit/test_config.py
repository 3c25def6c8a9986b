"""One settings object, one loader: every ``IMAP_PIPELINE_*`` variable the README documents is
read by ``Settings.load()``, and nothing else in the program reads settings from the
environment."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from pipeline.config import Settings, describe_settings_error, get_settings, reset_settings

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

# Read by the process files (deploy/Procfile, deploy/compose.yaml), not by the program.
PROCESS_FILE_VARIABLES = {
    "IMAP_PIPELINE_SYNC_CONCURRENCY",
    "IMAP_PIPELINE_WEBHOOKS_CONCURRENCY",
    "IMAP_PIPELINE_SYNC_REPLICAS",
    "IMAP_PIPELINE_LISTENER_REPLICAS",
}
MARKER = "not-a-value"

# Modules that may read os.environ, and why; everything else is handed a Settings.
ENVIRONMENT_READERS = {
    "pipeline/config/": "the loader",
    "pipeline/metrics.py": "PROMETHEUS_MULTIPROC_DIR, prometheus-client's own variable",
    "pipeline/dev/": "the dev supervisor hands its environment to the roles it starts",
    "pipeline/cli/webhooks.py": "compares what this terminal sets with a running `up`'s file",
}


def documented_variables() -> set[str]:
    """Every ``IMAP_PIPELINE_*`` name in the README, shorthands in the configuration table
    (``/ `_BACKOFF_MAX_S```, ``…_CONNECT_TIMEOUT_S``) spelled out."""
    text = README.read_text()
    # a name ending in "_" is a family (`IMAP_PIPELINE_LISTENER_*`), not a variable
    names = {n for n in re.findall(r"IMAP_PIPELINE_[A-Z0-9_]+", text) if not n.endswith("_")}
    for row in re.findall(r"^\| `IMAP_PIPELINE_.*$", text, flags=re.M):
        family = re.match(r"\| `(IMAP_PIPELINE_[A-Z0-9]+)", row)
        assert family is not None
        for short in re.findall(r"`…?(_[A-Z0-9_]+)`", row):
            names.add(family.group(1) + short)
    return names - PROCESS_FILE_VARIABLES


def leaf_values(model: BaseModel) -> Iterator[str]:
    """The value of every field of ``model`` and of its sections, as text (secrets revealed)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from leaf_values(value)
        elif isinstance(value, SecretStr):
            yield value.get_secret_value()
        else:
            yield str(value)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No IMAP_PIPELINE_* variable of the machine, and a data dir without a runtime file."""
    for name in list(os.environ):
        if name.startswith("IMAP_PIPELINE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("IMAP_PIPELINE_DATA_DIR", str(tmp_path))


def test_the_readme_table_is_read_with_its_shorthands() -> None:
    assert {
        "IMAP_PIPELINE_DATABASE_URL",
        "IMAP_PIPELINE_POLL_INTERVAL_S",
        "IMAP_PIPELINE_LISTENER_CONNECT_TIMEOUT_S",
        "IMAP_PIPELINE_WEBHOOK_BACKOFF_MAX_S",
    } <= documented_variables()


@pytest.mark.usefixtures("clean_environment")
def test_every_documented_variable_is_read_by_the_one_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unread = []
    for name in sorted(documented_variables()):
        if name == "IMAP_PIPELINE_DATA_DIR":
            continue  # set by the fixture; read below
        with monkeypatch.context() as env:
            env.setenv(name, MARKER)
            try:
                settings = Settings.load()
            except ValidationError as exc:  # refused: it was read, and the error names it
                assert describe_settings_error(exc) is not None, name
                assert name + ":" in (describe_settings_error(exc) or ""), name
                continue
            if MARKER not in " ".join(leaf_values(settings)):
                unread.append(name)
    assert unread == []


def test_the_runtime_file_reaches_every_section(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_environment: None
) -> None:
    (tmp_path / "runtime.env").write_text(
        "IMAP_PIPELINE_REDIS_URL=redis://127.0.0.1:1/0\n"
        "IMAP_PIPELINE_POLL_INTERVAL_S=30\n"
        "IMAP_PIPELINE_LISTENER_DEBOUNCE_S=0.5\n"
        "IMAP_PIPELINE_WEBHOOK_MAX_ATTEMPTS=9\n"
    )
    monkeypatch.setenv("IMAP_PIPELINE_WEBHOOK_MAX_ATTEMPTS", "3")  # the environment wins
    settings = Settings.load()
    assert settings.redis_url == "redis://127.0.0.1:1/0"
    assert settings.beat.poll_interval_s == 30
    assert settings.listener.debounce_s == 0.5
    assert settings.webhooks.max_attempts == 3
    assert settings.data_dir == tmp_path


@pytest.mark.usefixtures("clean_environment")
def test_a_refused_section_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PIPELINE_LISTENER_LEASE_TTL_S", "soon")
    with pytest.raises(ValidationError) as refused:
        Settings.load()
    message = describe_settings_error(refused.value) or ""
    assert message.startswith("invalid setting: IMAP_PIPELINE_LISTENER_LEASE_TTL_S: ")
    assert "soon" not in message


@pytest.mark.usefixtures("clean_environment")
def test_a_process_reads_its_settings_once_until_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PIPELINE_RETENTION_DAYS", "30")
    reset_settings()
    try:
        first = get_settings()
        monkeypatch.setenv("IMAP_PIPELINE_RETENTION_DAYS", "40")
        assert get_settings() is first
        assert first.retention_days == 30
        reset_settings()
        assert get_settings().retention_days == 40
    finally:
        reset_settings()


def test_nothing_else_reads_the_environment() -> None:
    readers = []
    for package in ("pipeline", "workers"):
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if any(relative.startswith(allowed) for allowed in ENVIRONMENT_READERS):
                continue
            source = path.read_text()
            if re.search(r"os\.environ|getenv\(|BaseSettings", source):
                readers.append(relative)
    assert (REPO / "beat_schedule.py").read_text().count("os.environ") == 0
    assert readers == []


@pytest.mark.usefixtures("clean_environment")
def test_a_variable_named_like_a_section_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IMAP_PIPELINE_LISTENER", "IMAP_PIPELINE_WEBHOOKS", "IMAP_PIPELINE_BEAT"):
        monkeypatch.setenv(name, "not json")
    assert Settings.load().listener.debounce_s == 0.25
