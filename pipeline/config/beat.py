"""How often the periodic jobs run: ``Settings.beat``, read by ``beat_schedule.py`` and the jobs.

Every field comes from an environment variable ``IMAP_PIPELINE_<FIELD>`` (no section in the
name, e.g. ``IMAP_PIPELINE_POLL_INTERVAL_S=30``). These are the only defaults of the schedule:
``beat_schedule.beat_schedule()`` reads them from here.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

BEAT_ENV_PREFIX = "IMAP_PIPELINE_"


class BeatSettings(BaseSettings):
    """Intervals of the periodic jobs (Celery beat). Defaults work on one machine."""

    model_config = SettingsConfigDict(env_prefix=BEAT_ENV_PREFIX, extra="ignore")

    uidvalidity_sweep_interval_s: float = Field(
        default=300.0,
        ge=30,
        description="Every folder's UIDVALIDITY is compared this often (the design's "
        "five-minute sweep).",
    )
    poll_interval_s: float = Field(
        default=60.0,
        ge=5,
        description="Folders without an IDLE connection (all but Inbox and Sent) are checked "
        "with STATUS this often and synced when they changed.",
    )
    flag_refresh_interval_s: float = Field(
        default=600.0,
        ge=60,
        description="On a server without CONDSTORE a flag change other than \\Seen moves no "
        "STATUS value: a polled folder's flags are re-read (a sync) when its last sync is this "
        "old, at most IMAP_PIPELINE_FLAG_REFRESH_PER_POLL folders of a grant per poll.",
    )
    flag_refresh_per_poll: int = Field(
        default=2,
        ge=1,
        le=100,
        description="At most this many folders of a grant get a flag refresh per poll "
        "(oldest first), so a grant with many folders spreads them over several polls.",
    )
    purge_interval_s: float = Field(
        default=600.0,
        ge=10,
        description="The rolling retention purge runs this often (small batches often: a "
        "day's mail leaves in many short transactions).",
    )
    reconcile_interval_s: float = Field(
        default=300.0,
        ge=10,
        description="Stalled grants and folders are re-enqueued, and orphans past their grace "
        "deleted, this often: a lost Redis event delays work by at most this (plus the stall).",
    )
    folder_discovery_interval_s: float = Field(
        default=300.0,
        ge=30,
        description="Every grant's folders are listed this often: folders another client made "
        "are synced and announced (folder.created), vanished ones removed (folder.deleted).",
    )
    outbox_sweep_interval_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How often beat sends what is due in the outbox (scheduled sends, and "
        "anything whose worker died): the most a scheduled send is late.",
    )
