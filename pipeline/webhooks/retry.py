"""When to try a failed delivery again: exponential backoff with jitter.

Delay after the n-th failed attempt = ``min(base * 2**(n-1), max) * (1 ± jitter)``. With the
defaults (40 s, 15 min, ±25 %) six attempts span about 20 minutes, as Nylas v3 does.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from pipeline.config.webhooks import WebhookSettings


def retry_delay_s(
    attempts_made: int, settings: WebhookSettings, *, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before the next attempt, after ``attempts_made`` failed ones (>= 1)."""
    exponent = max(attempts_made, 1) - 1
    nominal = min(settings.backoff_base_s * (2.0**exponent), settings.backoff_max_s)
    return nominal * (1.0 + settings.backoff_jitter * (2.0 * rng() - 1.0))


def nominal_schedule_s(settings: WebhookSettings) -> list[float]:
    """The delays between attempts without jitter (for docs, CLI output and tests)."""
    return [
        min(settings.backoff_base_s * (2.0**n), settings.backoff_max_s)
        for n in range(settings.max_attempts - 1)
    ]
