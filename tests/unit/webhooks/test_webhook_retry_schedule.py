"""Backoff: exponential, jittered, capped; the defaults span about 20 minutes."""

from __future__ import annotations

import pytest

from pipeline.config.webhooks import WebhookSettings
from pipeline.webhooks.retry import nominal_schedule_s, retry_delay_s


def test_defaults_make_six_attempts_over_about_twenty_minutes() -> None:
    s = WebhookSettings()
    schedule = nominal_schedule_s(s)
    assert s.max_attempts == 6
    assert schedule == [40.0, 80.0, 160.0, 320.0, 640.0]
    assert 15 * 60 <= sum(schedule) <= 25 * 60


def test_delay_doubles_and_is_capped() -> None:
    s = WebhookSettings(backoff_base_s=10, backoff_max_s=50, backoff_jitter=0)
    assert [retry_delay_s(n, s) for n in range(1, 6)] == [10, 20, 40, 50, 50]


@pytest.mark.parametrize(("draw", "factor"), [(0.0, 0.75), (0.5, 1.0), (0.999999, 1.25)])
def test_jitter_stays_within_its_band(draw: float, factor: float) -> None:
    s = WebhookSettings(backoff_base_s=100, backoff_jitter=0.25)
    assert retry_delay_s(1, s, rng=lambda: draw) == pytest.approx(100 * factor, rel=1e-4)


def test_real_jitter_varies() -> None:
    s = WebhookSettings()
    delays = {round(retry_delay_s(2, s), 6) for _ in range(20)}
    assert len(delays) > 1
    assert all(60 <= d <= 100 for d in delays)
