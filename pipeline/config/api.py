"""Settings of the HTTP API process: ``Settings.api``, read by ``imap-pipeline api``, the app's
sign-in gate, hosted auth and the send routes (and by ``up``/``health``, which find the API).

Every field comes from ``IMAP_PIPELINE_API_<FIELD>`` (``IMAP_PIPELINE_API_PORT=8081``), except
``send_wait_s``, which keeps the variable it had before it had a section
(``IMAP_PIPELINE_SEND_WAIT_S``). The API keys are a secret the CLI shares: they stay on
``Settings`` (``IMAP_PIPELINE_API_KEYS``).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

API_ENV_PREFIX = "IMAP_PIPELINE_API_"
API_WORKERS_DEFAULT = 1  # `up` runs every role on one machine; compose sets 2


class ApiSettings(BaseSettings):
    """Address, processes, sign-in limits and hosted auth of the HTTP API."""

    # validate_by_name: code and tests set the aliased field by its name
    model_config = SettingsConfigDict(
        env_prefix=API_ENV_PREFIX, extra="ignore", validate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(
        default=API_WORKERS_DEFAULT,
        ge=1,
        le=64,
        description="uvicorn worker processes of `imap-pipeline api` (`--workers` overrides it): "
        "one process runs its Python on one core, so a busy API wants about one per core.",
    )

    # --- sign-ins ---------------------------------------------------------------------------
    sign_in_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Sign-ins (hosted page, /v3/connect/custom) one API process runs at once, "
        "on threads of their own (never those serving other requests); more get a 429 at once.",
    )
    sign_in_per_client: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Sign-ins one client address may have in flight at once; more get a 429.",
    )
    sign_in_deadline_s: float = Field(
        default=30.0,
        gt=0,
        le=300,
        description="A sign-in (resolve, connect, greeting, login, store) is answered within "
        "this long; a server that has not finished by then gets a 504.",
    )
    client_id: str = Field(
        default="imap-pipeline",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._~-]+$",
        description=(
            "The application's id (Nylas: client id). Hosted auth accepts only this client_id, "
            "with a redirect URI registered at /v3/applications/redirect-uris; "
            "GET /v3/applications shows it."
        ),
    )

    # --- sending ----------------------------------------------------------------------------
    send_wait_s: float = Field(
        default=60.0,
        gt=0,
        le=600,
        validation_alias="IMAP_PIPELINE_SEND_WAIT_S",
        description="An immediate send is answered once the SMTP server took it; after this "
        "long without the worker's result the API answers 202 with the schedule_id to follow "
        "(the send still happens, once).",
    )
