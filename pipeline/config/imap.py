"""Bounds of every IMAP session the workers and the API open: ``Settings.imap``.

Every field comes from an environment variable ``IMAP_PIPELINE_IMAP_<FIELD>`` (for example
``IMAP_PIPELINE_IMAP_TIMEOUT_S=30``). Read by :func:`pipeline.grants.service.endpoint_for` (the
session's timeouts and limits), the TLS probe of a sign-in, and the sync's fetch plan (a message
above the literal bound is never fetched). The listener's IDLE sessions have bounds of their
own (``Settings.listener``); SMTP trusts the same CA file as IMAP.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

IMAP_ENV_PREFIX = "IMAP_PIPELINE_IMAP_"


class ImapSettings(BaseSettings):
    """Timeouts, deadlines and size bounds of an IMAP session. Defaults fit any real mailbox."""

    model_config = SettingsConfigDict(env_prefix=IMAP_ENV_PREFIX, extra="ignore")

    timeout_s: float = Field(default=60.0, gt=0, description="Socket timeout of IMAP calls.")
    command_deadline_s: float = Field(
        default=300.0,
        gt=0,
        description="Total time one IMAP command may take, however the server trickles its "
        "answer (the socket timeout is per read).",
    )
    login_deadline_s: float = Field(
        default=60.0,
        gt=0,
        description="Total time of connect + TLS + greeting + login + CAPABILITY.",
    )
    max_line_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=64 * 1024,
        description="Longest response line read from an IMAP server (a UID SEARCH answer of "
        "about 2 million UIDs fits); a longer one closes the session.",
    )
    max_literal_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Largest literal (a message) read from an IMAP server; above the largest "
        "message accepted: bigger messages are recorded as failures without being fetched, a "
        "bigger literal announced anyway closes the session before any of it is read.",
    )
    max_untagged: int = Field(
        default=500_000,
        ge=1000,
        description="Untagged responses one IMAP command may receive (a metadata FETCH asks "
        "for 5,000; the flag changes of a big folder marked read at once can be many more); "
        "more closes the session.",
    )
    max_command_bytes: int = Field(
        default=96 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes one IMAP command may receive in all; more closes the session.",
    )
    ca_file: Path | None = Field(
        default=None, description="Extra CA bundle trusted for IMAP/SMTP TLS (private CAs)."
    )

    @model_validator(mode="after")
    def _command_fits_a_literal(self) -> ImapSettings:
        # A message the literal bound lets through must not break the bound on its command.
        if self.max_command_bytes < self.max_literal_bytes:
            raise ValueError(
                "IMAP_PIPELINE_IMAP_MAX_COMMAND_BYTES must be at least "
                "IMAP_PIPELINE_IMAP_MAX_LITERAL_BYTES (a command carries whole messages)"
            )
        return self
