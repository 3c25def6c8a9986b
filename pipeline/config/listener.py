"""Listener settings: ``Settings.listener``, loaded with the rest by ``Settings.load``.

Every field comes from an environment variable ``IMAP_PIPELINE_LISTENER_<FIELD>`` (for example
``IMAP_PIPELINE_LISTENER_DEBOUNCE_S=0.5``). The defaults keep the promises of issue 3: a dead
listener's grants are watched again within 30 s (lease TTL + one renewal round + a login), and
a burst of arrivals becomes about one sync run per debounce window.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.imap.aio import (
    COMMAND_MAX_BYTES,
    DEFAULT_MAX_UNTAGGED,
    FLOOD_WINDOW_S,
    LINE_MAX_BYTES,
    LITERAL_MAX_BYTES,
    RESPONSE_MAX_BYTES,
)
from pipeline.redis import conn_key

LISTENER_ENV_PREFIX = "IMAP_PIPELINE_LISTENER_"


class ListenerSettings(BaseSettings):
    """Tunables of one listener process. Defaults work on one machine and in production."""

    model_config = SettingsConfigDict(env_prefix=LISTENER_ENV_PREFIX, extra="ignore")

    # --- leases -----------------------------------------------------------------------------
    lease_ttl_s: float = Field(
        default=15.0,
        ge=1.0,
        description="A grant lease (and a listener heartbeat) lapses this long after its last "
        "renewal: how long a dead listener's grants stay unwatched, at most.",
    )
    lease_renew_s: float = Field(
        default=5.0,
        gt=0,
        description="How often leases and the heartbeat are renewed and free grants claimed.",
    )
    plan_refresh_s: float = Field(
        default=10.0,
        gt=0,
        description="How often the list of valid grants and their Inbox/Sent folders is re-read "
        "from Postgres (new, removed and invalidated grants are noticed this fast).",
    )
    conn_slot_ttl_s: float = Field(
        default=30.0,
        ge=1.0,
        description=f"A connection slot in {conn_key('<grant_id>')} lapses this long after "
        "its holder stopped renewing it (a crashed listener frees its slots).",
    )

    # --- events -----------------------------------------------------------------------------
    debounce_s: float = Field(
        default=0.25,
        ge=0,
        description="At most one sync enqueue per folder per window: the first change is sent "
        "at once, later ones in the window are folded into one send at its end. Short, because "
        "it is added to the freshness of mail arriving in a stream (tests/benchmarks/"
        "freshness.py: 1 s gave p50 +0.45 s over the IDLE floor, 0.2 s gave +0.07 s); the "
        "worker's folder lock and dirty flag fold whatever a burst sends while a sync runs.",
    )

    # --- connections ------------------------------------------------------------------------
    connect_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Total deadline of TCP connect, TLS handshake, greeting and STARTTLS "
        "together (a greeting trickled byte by byte fails by it).",
    )
    command_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Total deadline of one IMAP command, sending and the whole answer "
        "together, however slowly a server trickles it.",
    )
    session_timeout_s: float = Field(
        default=90.0,
        gt=0,
        description="Total deadline of a connection's set-up: TCP, TLS, greeting, login, "
        "ENABLE and EXAMINE together. A server that misses it is disconnected and backed off.",
    )
    max_untagged: int = Field(
        default=DEFAULT_MAX_UNTAGGED,
        ge=100,
        description="Untagged responses a server may send in answer to one command, and "
        f"within {FLOOD_WINDOW_S:.0f} s of IDLE; more is a flood: the connection is dropped "
        "and backed off (no mail is missed: a reconnect asks for a sync unless the folder is "
        f"unchanged). Fixed read bounds: {LINE_MAX_BYTES // 1024} KiB per line, "
        f"{LITERAL_MAX_BYTES // 1024} KiB per literal, {RESPONSE_MAX_BYTES // 1024} KiB per "
        f"response, {COMMAND_MAX_BYTES // 2**20} MiB per command and per {FLOOD_WINDOW_S:.0f} s "
        "of IDLE.",
    )
    poll_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="Servers without IDLE: how often the watched folder is checked with NOOP.",
    )
    backoff_base_s: float = Field(
        default=1.0, gt=0, description="First reconnect delay; doubles per failed attempt."
    )
    backoff_max_s: float = Field(default=300.0, gt=0, description="Longest reconnect delay.")
    backoff_reset_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A connection must stay up this long before the reconnect delay resets "
        "(a server that accepts and then drops does not get a reconnect storm).",
    )
    max_concurrent_logins: int = Field(
        default=50,
        ge=1,
        description="Logins (TCP + TLS + LOGIN + EXAMINE) in flight at once in this process: "
        "smooths the burst after a server restart or at start-up.",
    )

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> ListenerSettings:
        if self.lease_renew_s * 2 > self.lease_ttl_s:
            raise ValueError(
                "lease_renew_s must be at most half of lease_ttl_s, or a single slow renewal "
                "lets the lease lapse and another listener take the grant."
            )
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must be at least backoff_base_s")
        return self
