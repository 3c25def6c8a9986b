"""Settings of webhook delivery: ``Settings.webhooks``, loaded with the rest by ``Settings.load``.

Every field comes from an environment variable with the prefix ``IMAP_PIPELINE_WEBHOOK_``
(``IMAP_PIPELINE_WEBHOOK_MAX_ATTEMPTS=8``) or from the runtime file ``imap-pipeline up`` writes.
The defaults follow Nylas v3: a 10 s timeout, a handful of attempts spread over about
20 minutes, and a destination that keeps failing for 72 hours is marked ``failed``.

With the defaults a failed first attempt is retried after about 40 s, 80 s, 160 s, 320 s and
640 s (each ±25 % jitter): six attempts over roughly 20 minutes.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

WEBHOOK_ENV_PREFIX = "IMAP_PIPELINE_WEBHOOK_"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookSettings(BaseSettings):
    """Configuration of webhook destinations and delivery. Defaults work on one machine."""

    model_config = SettingsConfigDict(env_prefix=WEBHOOK_ENV_PREFIX, extra="ignore")

    application_id: str = Field(
        default="imap-pipeline",
        min_length=1,
        description="Sent as data.application_id in every notification.",
    )

    # --- HTTP ---------------------------------------------------------------------------
    request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description=(
            "Total deadline of one delivery POST: connect, send, response headers and the "
            "part of the body that is read all fit in it (Nylas: 10 s)."
        ),
    )
    challenge_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Total time a new destination has to echo the challenge.",
    )
    response_body_limit_bytes: int = Field(
        default=1024,
        ge=0,
        le=65536,
        description="How much of a response body is read (and kept with the attempt); never more.",
    )
    max_payload_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="A notification body larger than this is sent as <type>.truncated.",
    )

    # --- retries and health -------------------------------------------------------------
    max_attempts: int = Field(
        default=6, ge=1, le=50, description="Attempts per notification before it is given up."
    )
    backoff_base_s: float = Field(
        default=40.0, gt=0, description="Delay after the first failed attempt; doubles each time."
    )
    backoff_max_s: float = Field(
        default=15 * 60.0, gt=0, description="Upper bound of one retry delay."
    )
    backoff_jitter: float = Field(
        default=0.25, ge=0, lt=1, description="Each delay is scaled by 1 ± this, at random."
    )
    failed_after_s: float = Field(
        default=72 * 3600.0,
        gt=0,
        description="A destination failing for this long without a success becomes 'failed'.",
    )

    # --- throughput ---------------------------------------------------------------------
    per_destination_concurrency: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Requests in flight to one destination at once, across all processes.",
    )
    max_drains_per_process: int = Field(
        default=64,
        ge=2,
        le=1000,
        description=(
            "Destinations one webhook worker process delivers to at once (each with up to "
            "per_destination_concurrency connections); destinations that are failing get at "
            "most half. More wait in Postgres without holding a process."
        ),
    )
    batch_size: int = Field(
        default=64, ge=1, le=1000, description="Deliveries one drain step claims for a destination."
    )
    drain_budget_s: float = Field(
        default=30.0,
        gt=0,
        description="A drain task stops claiming after this long and re-queues itself (fairness).",
    )
    dispatch_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Outbox rows one dispatch transaction handles."
    )
    retention_days: int = Field(
        default=7,
        ge=1,
        description="Dispatched notifications and their attempts are kept this long.",
    )

    # --- SSRF guard -----------------------------------------------------------------------
    allow_private_destinations: bool = Field(
        default=False,
        description=(
            "Allow URLs resolving to private, loopback, link-local or otherwise "
            "non-public addresses. Off by default: such URLs are refused."
        ),
    )
    allowed_networks: Annotated[list[IpNetwork], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated CIDRs allowed even though they are not public "
            "(e.g. 127.0.0.0/8 for a receiver on this machine)."
        ),
    )

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
