"""Every periodic job of imap-pipeline, in one place: what runs, how often, on which queue.

Celery beat reads ``BEAT_SCHEDULE`` (see workers/celeryconfig.py).
"""

from __future__ import annotations

from typing import Any

BEAT_SCHEDULE: dict[str, dict[str, Any]] = {}
