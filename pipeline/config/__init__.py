"""Typed settings: one object with sections, one loader, read once at the edge and passed inward.

Every setting comes from an environment variable with the prefix ``IMAP_PIPELINE_`` (for
example ``IMAP_PIPELINE_DATABASE_URL``) or from ``<data_dir>/runtime.env``, which
``imap-pipeline up`` writes so that a second terminal finds the services it started.

:class:`Settings` holds what several concerns share (the services, the secrets, which networks
mail hosts may be on) and the processes; each concern reads a section of its own, a typed model
with its part of the variable names::

    Settings                 IMAP_PIPELINE_<FIELD>            this module
    Settings.api             IMAP_PIPELINE_API_<FIELD>        pipeline.config.api (and 1 alias)
    Settings.beat            IMAP_PIPELINE_<FIELD>            pipeline.config.beat (job intervals)
    Settings.imap            IMAP_PIPELINE_IMAP_<FIELD>       pipeline.config.imap (session bounds)
    Settings.listener        IMAP_PIPELINE_LISTENER_<FIELD>   pipeline.config.listener
    Settings.outbound        IMAP_PIPELINE_OUTBOUND_<FIELD>   pipeline.config.outbound (3 aliases)
    Settings.sync            IMAP_PIPELINE_SYNC_<FIELD>       pipeline.config.sync (and 4 aliases)
    Settings.webhooks        IMAP_PIPELINE_WEBHOOK_<FIELD>    pipeline.config.webhooks

:meth:`Settings.load` is the one loader (environment + runtime file, every section at once);
the CLI commands call it, and long-lived Celery processes take theirs from
:func:`get_settings`. Nothing else reads settings from ``os.environ``: code is handed a
``Settings`` (or the section it needs). ``tests/unit/test_config.py`` holds every variable the
README documents to this loader, and names the few modules that read other variables.
"""

from __future__ import annotations

import os
import threading
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.config.api import ApiSettings
from pipeline.config.beat import BeatSettings
from pipeline.config.imap import ImapSettings
from pipeline.config.listener import ListenerSettings
from pipeline.config.outbound import OutboundSettings
from pipeline.config.sync import SyncSettings
from pipeline.config.webhooks import WebhookSettings
from pipeline.errors import ConfigurationError
from pipeline.netguard import AddressPolicy, IpNetwork

__all__ = [
    "ApiSettings",
    "BeatSettings",
    "ImapSettings",
    "ListenerSettings",
    "OutboundSettings",
    "Settings",
    "SyncSettings",
    "WebhookSettings",
    "describe_settings_error",
    "get_settings",
    "reset_settings",
    "variable_name",
    "variable_names",
]

ENV_PREFIX = "IMAP_PIPELINE_"
DEFAULT_DATA_DIR = Path("~/.imap-pipeline").expanduser()
RUNTIME_ENV_NAME = "runtime.env"


def _runtime_env_file() -> Path:
    # The only place that peeks at the environment before settings exist: it has to know where
    # the data folder is to find the runtime file that `up` wrote there.
    data_dir = os.environ.get(ENV_PREFIX + "DATA_DIR")
    return (Path(data_dir).expanduser() if data_dir else DEFAULT_DATA_DIR) / RUNTIME_ENV_NAME


class Settings(BaseSettings):
    """All configuration of imap-pipeline. Defaults work on one machine."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # --- services -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of Postgres. Unset: `up` starts its own in data_dir.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (broker, leases, rate limits). Unset: `up` starts its own.",
    )
    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="Where `up` keeps its state.")
    embedded_postgres_port: int = 55432
    embedded_redis_port: int = 56379

    # --- secrets --------------------------------------------------------------------------
    encryption_keys: SecretStr | None = Field(
        default=None,
        description=(
            "Comma-separated Fernet keys; the first encrypts, all decrypt (rotation). "
            "Unset: `up` creates one in data_dir/encryption.key."
        ),
    )
    api_keys: SecretStr | None = Field(
        default=None,
        description="Comma-separated API keys. Unset: `up` creates one in data_dir/api.key.",
    )

    # --- mail hosts (the API, the listener and the workers alike) -------------------------
    mail_allowed_networks: Annotated[list[IpNetwork], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated CIDRs that IMAP and SMTP hosts named through the HTTP API or the "
            "hosted sign-in page may resolve into although they are not public (e.g. "
            "127.0.0.0/8 for a Dovecot on this machine, 10.0.0.0/8 for an internal server). "
            "Empty: only public addresses. The CLI (run by the operator) is not limited."
        ),
    )

    # --- sections (each reads its own variables; see the module docstring) ----------------
    # NoDecode: a stray IMAP_PIPELINE_LISTENER (or _BEAT, _IMAP, _OUTBOUND, ...) is not parsed
    # as JSON; load() passes every section in, which wins over it.
    api: Annotated[ApiSettings, NoDecode] = Field(default_factory=ApiSettings)
    beat: Annotated[BeatSettings, NoDecode] = Field(default_factory=BeatSettings)
    imap: Annotated[ImapSettings, NoDecode] = Field(default_factory=ImapSettings)
    listener: Annotated[ListenerSettings, NoDecode] = Field(default_factory=ListenerSettings)
    outbound: Annotated[OutboundSettings, NoDecode] = Field(default_factory=OutboundSettings)
    sync: Annotated[SyncSettings, NoDecode] = Field(default_factory=SyncSettings)
    webhooks: Annotated[WebhookSettings, NoDecode] = Field(default_factory=WebhookSettings)

    # --- processes --------------------------------------------------------------------------
    worker_concurrency: int = Field(
        default=0,
        ge=0,
        description="Sync worker processes `up` starts; 0: deploy/Procfile's default (4: "
        "IMAP and Postgres waits leave room for more processes than the 2 cores).",
    )
    flower_port: int = Field(default=5555, ge=1, le=65535, description="Flower's port.")
    flower_host: str = Field(
        default="127.0.0.1",
        description="Flower's address: loopback unless a login is set (FLOWER_BASIC_AUTH).",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Each role serves Prometheus metrics on this port (0: none); `up` gives its "
        "roles this port and the next ones, in Procfile order.",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address of the metrics port (the image: 0.0.0.0)."
    )

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Role logs: text lines, or one JSON object per line with grant_id, "
        "folder_id, task_id as fields of their own.",
    )

    @field_validator("mail_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def mail_address_policy(self) -> AddressPolicy:
        """Which non-public networks user-named IMAP/SMTP hosts may reach (see netguard)."""
        return AddressPolicy.of(self.mail_allowed_networks)

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Read every setting, sections included, from the environment and the runtime file
        `up` left behind (the one loader). ``overrides`` replace fields or whole sections."""
        env_file = _runtime_env_file()
        source: dict[str, Any] = {"_env_file": env_file if env_file.exists() else None}
        for name, section in _SECTIONS.items():
            if name not in overrides:
                overrides[name] = section(**source)
        return cls(**source, **overrides)

    def require_database_url(self) -> str:
        """The Postgres URL, or a ConfigurationError that says how to set it."""
        if not self.database_url:
            raise ConfigurationError(
                "No database configured: set IMAP_PIPELINE_DATABASE_URL "
                "(e.g. postgresql://127.0.0.1:5432/imap_pipeline) or start `imap-pipeline up`."
            )
        return self.database_url

    def require_redis_url(self) -> str:
        """The Redis URL, or a ConfigurationError that says how to set it."""
        if not self.redis_url:
            raise ConfigurationError(
                "No Redis configured: set IMAP_PIPELINE_REDIS_URL "
                "(e.g. redis://127.0.0.1:6379/0) or start `imap-pipeline up`."
            )
        return self.redis_url

    @cached_property
    def encryption_key_list(self) -> list[str]:
        """Configured Fernet keys, newest (encrypting) first."""
        raw = self.encryption_keys.get_secret_value() if self.encryption_keys else ""
        if not raw:
            key_file = self.data_dir / "encryption.key"
            if key_file.exists():
                raw = key_file.read_text().strip()
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        if not keys:
            raise ConfigurationError(
                "No encryption key: set IMAP_PIPELINE_ENCRYPTION_KEYS to one or more Fernet keys "
                "(generate one with `imap-pipeline keygen`), or let `imap-pipeline up` create one."
            )
        return keys

    @cached_property
    def api_key_list(self) -> list[str]:
        """Configured API keys (plaintext as given; the API hashes them at startup)."""
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        if not raw:
            key_file = self.data_dir / "api.key"  # made by `imap-pipeline up`
            if key_file.exists():
                raw = key_file.read_text().strip()
        return [k.strip() for k in raw.split(",") if k.strip()]


_SECTIONS: dict[str, type[BaseSettings]] = {
    "api": ApiSettings,
    "beat": BeatSettings,
    "imap": ImapSettings,
    "listener": ListenerSettings,
    "outbound": OutboundSettings,
    "sync": SyncSettings,
    "webhooks": WebhookSettings,
}
_MODELS: dict[str, type[BaseSettings]] = {
    Settings.__name__: Settings,
    **{section.__name__: section for section in _SECTIONS.values()},
}


def variable_name(model: type[BaseSettings], field: str) -> str:
    """The environment variable of ``model``'s ``field``: its alias (a field whose variable
    is not its section's prefix + its name keeps the name it had as a flat field), else the
    prefix and the field's name. ``field`` may be that alias already (a refused variable)."""
    info = model.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    if field.upper().startswith(ENV_PREFIX):
        return field.upper()
    return str(model.model_config.get("env_prefix", ENV_PREFIX)) + field.upper()


def variable_names() -> set[str]:
    """Every environment variable :meth:`Settings.load` reads, sections included."""
    names = {variable_name(Settings, field) for field in Settings.model_fields}
    names -= {variable_name(Settings, section) for section in _SECTIONS}
    for section in _SECTIONS.values():
        names |= {variable_name(section, field) for field in section.model_fields}
    return names


_loaded: Settings | None = None
_loaded_lock = threading.Lock()


def get_settings() -> Settings:
    """This process's settings, loaded by :meth:`Settings.load` on first use and kept.

    For long-lived processes that have no ``main`` to pass settings from (Celery workers and
    beat); a forked pool process keeps its parent's.
    """
    global _loaded
    with _loaded_lock:
        if _loaded is None:
            _loaded = Settings.load()
        return _loaded


def reset_settings() -> None:
    """Forget this process's settings: the next :func:`get_settings` reads them again (tests
    that point the process at other services; nothing else needs it)."""
    global _loaded
    with _loaded_lock:
        _loaded = None


def describe_settings_error(exc: ValidationError) -> str | None:
    """One line naming each environment variable a settings class refused, or None.

    The value itself is not repeated (it may be a URL with a password or a key); pydantic's
    reason is, e.g. ``IMAP_PIPELINE_POLL_INTERVAL_S: Input should be greater than or equal
    to 5``. None when ``exc`` is not about :class:`Settings` or one of its sections.
    """
    model = _MODELS.get(exc.title)
    if model is None:
        return None
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        if model is Settings and len(loc) > 1 and loc[0] in _SECTIONS:
            parts.append(f"{variable_name(_SECTIONS[loc[0]], loc[1])}: {error['msg']}")
        elif loc:
            parts.append(f"{variable_name(model, loc[0])}: {error['msg']}")
        else:  # a check of several fields; its message names them
            parts.append(error["msg"])
    return "invalid setting: " + "; ".join(parts)
