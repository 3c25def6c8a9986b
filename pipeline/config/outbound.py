"""Settings of sending: ``Settings.outbound``, read by the outbox drain
(:mod:`pipeline.outbound.deliver`) and the Sent copy it files (:mod:`pipeline.outbound.sent_copy`)
on the workers of the ``send`` queue.

The three fields were named before they had a section and keep their variables (an alias each,
so a deployment's ``runtime.env`` still works): ``IMAP_PIPELINE_SMTP_CONNECTIONS_PER_ACCOUNT``,
``IMAP_PIPELINE_SMTP_IDLE_CLOSE_S`` and ``IMAP_PIPELINE_OUTBOX_LEASE_S``; a field added later
reads ``IMAP_PIPELINE_OUTBOUND_<FIELD>``. How long the API waits for an immediate send is the
API's (``Settings.api.send_wait_s``).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

OUTBOUND_ENV_PREFIX = "IMAP_PIPELINE_OUTBOUND_"


class OutboundSettings(BaseSettings):
    """The workers' SMTP connections per account and the leases of the outbox rows they hold."""

    # validate_by_name: code and tests set the aliased fields by their names
    model_config = SettingsConfigDict(
        env_prefix=OUTBOUND_ENV_PREFIX, extra="ignore", validate_by_name=True
    )

    smtp_connections_per_account: int = Field(
        default=2,
        ge=1,
        le=20,
        validation_alias="IMAP_PIPELINE_SMTP_CONNECTIONS_PER_ACCOUNT",
        description="SMTP connections the workers hold at once to one account (each sends "
        "many messages after one login).",
    )
    smtp_idle_close_s: float = Field(
        default=2.0,
        ge=0,
        le=300,
        validation_alias="IMAP_PIPELINE_SMTP_IDLE_CLOSE_S",
        description="A worker keeps an account's SMTP connection this long after its last "
        "message for the next one, then QUITs.",
    )
    outbox_lease_s: float = Field(
        default=30.0,
        ge=5,
        le=600,
        validation_alias="IMAP_PIPELINE_OUTBOX_LEASE_S",
        description="A drain renews its claim on an account's sends this often x 3; a worker "
        "that died lets go of them after this long.",
    )
