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
from tests.support.settings import section_changed

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
        assert first.sync.retention_days == 30
        reset_settings()
        assert get_settings().sync.retention_days == 40
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
    sections = ("LISTENER", "WEBHOOKS", "BEAT", "IMAP", "SYNC", "API", "OUTBOUND")
    for name in sections:
        monkeypatch.setenv("IMAP_PIPELINE_" + name, "not json")
    settings = Settings.load()
    assert settings.listener.debounce_s == 0.25
    assert settings.sync.batch_size == 100
    assert settings.outbound.outbox_lease_s == 30.0


# The defaults of the variables that were flat fields of Settings before the IMAP, API, sync and
# outbound settings became sections (issue 14): moving a field must keep its variable and its
# default.
FORMER_FLAT_DEFAULTS: dict[str, object] = {
    "IMAP_PIPELINE_DATABASE_URL": None,
    "IMAP_PIPELINE_REDIS_URL": None,
    "IMAP_PIPELINE_EMBEDDED_POSTGRES_PORT": 55432,
    "IMAP_PIPELINE_EMBEDDED_REDIS_PORT": 56379,
    "IMAP_PIPELINE_ENCRYPTION_KEYS": None,
    "IMAP_PIPELINE_API_KEYS": None,
    "IMAP_PIPELINE_RETENTION_DAYS": 90,
    "IMAP_PIPELINE_SYNC_BATCH_SIZE": 100,
    "IMAP_PIPELINE_SYNC_BATCH_BYTES": 16 * 1024 * 1024,
    "IMAP_PIPELINE_IMAP_TIMEOUT_S": 60.0,
    "IMAP_PIPELINE_IMAP_MAX_LINE_BYTES": 16 * 1024 * 1024,
    "IMAP_PIPELINE_IMAP_MAX_LITERAL_BYTES": 64 * 1024 * 1024,
    "IMAP_PIPELINE_IMAP_MAX_UNTAGGED": 500_000,
    "IMAP_PIPELINE_IMAP_MAX_COMMAND_BYTES": 96 * 1024 * 1024,
    "IMAP_PIPELINE_IMAP_COMMAND_DEADLINE_S": 300.0,
    "IMAP_PIPELINE_IMAP_LOGIN_DEADLINE_S": 60.0,
    "IMAP_PIPELINE_SYNC_TASK_TIME_LIMIT_S": 900.0,
    "IMAP_PIPELINE_IMAP_CA_FILE": None,
    "IMAP_PIPELINE_MAIL_ALLOWED_NETWORKS": [],
    "IMAP_PIPELINE_SYNC_CHUNK_BUDGET_S": 120.0,
    "IMAP_PIPELINE_MAX_FOLDERS_PER_GRANT": 1000,
    "IMAP_PIPELINE_MAX_FOLDER_TASKS_PER_GRANT": 8,
    "IMAP_PIPELINE_SYNC_RANGE_MESSAGES": 400,
    "IMAP_PIPELINE_ORPHAN_GRACE_S": 300.0,
    "IMAP_PIPELINE_SYNC_LOCK_TTL_S": 60,
    "IMAP_PIPELINE_WORKER_CONCURRENCY": 0,
    "IMAP_PIPELINE_FLOWER_PORT": 5555,
    "IMAP_PIPELINE_FLOWER_HOST": "127.0.0.1",
    "IMAP_PIPELINE_METRICS_PORT": 0,
    "IMAP_PIPELINE_METRICS_HOST": "127.0.0.1",
    "IMAP_PIPELINE_API_HOST": "127.0.0.1",
    "IMAP_PIPELINE_API_PORT": 8080,
    "IMAP_PIPELINE_API_WORKERS": 1,
    "IMAP_PIPELINE_API_SIGN_IN_CONCURRENCY": 8,
    "IMAP_PIPELINE_API_SIGN_IN_PER_CLIENT": 2,
    "IMAP_PIPELINE_API_SIGN_IN_DEADLINE_S": 30.0,
    "IMAP_PIPELINE_API_CLIENT_ID": "imap-pipeline",
    "IMAP_PIPELINE_SEND_WAIT_S": 60.0,
    "IMAP_PIPELINE_SMTP_CONNECTIONS_PER_ACCOUNT": 2,
    "IMAP_PIPELINE_SMTP_IDLE_CLOSE_S": 2.0,
    "IMAP_PIPELINE_OUTBOX_LEASE_S": 30.0,
    "IMAP_PIPELINE_LOG_LEVEL": "INFO",
    "IMAP_PIPELINE_LOG_FORMAT": "text",
}


# Where the outbound variables went (issue 14): the section its readers (the send drain and
# the Sent copy) take, each field under the name it had on Settings.
OUTBOUND_FIELDS = {
    "IMAP_PIPELINE_SMTP_CONNECTIONS_PER_ACCOUNT": "outbound.smtp_connections_per_account",
    "IMAP_PIPELINE_SMTP_IDLE_CLOSE_S": "outbound.smtp_idle_close_s",
    "IMAP_PIPELINE_OUTBOX_LEASE_S": "outbound.outbox_lease_s",
}


def variable_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(variable, field path) for every field of ``model`` and of its sections: a field reads
    the variable its alias names, else its section's prefix and its own name."""
    env_prefix = str(model.model_config.get("env_prefix", ""))
    for name, info in model.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            yield from variable_fields(section, prefix + name + ".")
        elif isinstance(info.validation_alias, str):
            yield info.validation_alias.upper(), prefix + name
        else:
            yield env_prefix.upper() + name.upper(), prefix + name


def field_value(settings: BaseModel, path: str) -> object:
    value: object = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_every_variable_maps_to_exactly_one_field() -> None:
    fields: dict[str, list[str]] = {}
    for variable, path in variable_fields(Settings):
        fields.setdefault(variable, []).append(path)
    assert {v: paths for v, paths in fields.items() if len(paths) > 1} == {}
    documented = documented_variables() - {"IMAP_PIPELINE_DATA_DIR"}
    assert sorted(documented - fields.keys()) == []
    assert sorted(FORMER_FLAT_DEFAULTS.keys() - fields.keys()) == []


def test_the_outbound_variables_are_the_outbound_section() -> None:
    fields = dict(variable_fields(Settings))
    assert {v: fields[v] for v in OUTBOUND_FIELDS} == OUTBOUND_FIELDS
    assert OUTBOUND_FIELDS.keys() <= FORMER_FLAT_DEFAULTS.keys()
    assert sorted(p for p in fields.values() if p.startswith("outbound.")) == sorted(
        OUTBOUND_FIELDS.values()
    )


@pytest.mark.usefixtures("clean_environment")
def test_moved_fields_keep_their_defaults() -> None:
    fields = dict(variable_fields(Settings))
    settings = Settings.load()
    defaults = {v: field_value(settings, fields[v]) for v in FORMER_FLAT_DEFAULTS}
    assert defaults == FORMER_FLAT_DEFAULTS


@pytest.mark.usefixtures("clean_environment")
def test_moved_fields_keep_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = dict(variable_fields(Settings))
    numbers: dict[str, int | float] = {
        v: d for v, d in FORMER_FLAT_DEFAULTS.items() if isinstance(d, int | float)
    }
    for variable, default in numbers.items():
        monkeypatch.setenv(variable, str(default + 1))
    settings = Settings.load()
    read = {v: field_value(settings, fields[v]) for v in numbers}
    assert read == {v: d + 1 for v, d in numbers.items()}


@pytest.mark.usefixtures("clean_environment")
def test_a_refused_pair_of_variables_is_named_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PIPELINE_IMAP_MAX_LITERAL_BYTES", str(200 * 1024 * 1024))
    with pytest.raises(ValidationError) as refused:
        Settings.load()
    message = describe_settings_error(refused.value) or ""
    assert message.startswith("invalid setting: Value error, IMAP_PIPELINE_IMAP_MAX_COMMAND_BYTES")


@pytest.mark.usefixtures("clean_environment")
def test_a_changed_section_field_is_changed_and_a_misspelt_one_refused() -> None:
    settings = Settings()
    changed = section_changed(settings, "outbound", smtp_idle_close_s=0.0)
    assert changed.outbound.smtp_idle_close_s == 0.0
    assert settings.outbound.smtp_idle_close_s == 2.0  # the original is not changed
    assert changed.sync is settings.sync
    with pytest.raises(TypeError, match="smtp_idle_close"):
        section_changed(settings, "outbound", smtp_idle_close=0.0)
    with pytest.raises(TypeError, match="no section"):
        section_changed(settings, "smtp", idle_close_s=0.0)
