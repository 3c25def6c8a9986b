"""The UIDVALIDITY sweep's plan (:func:`pipeline.maintenance.sweep.plan_sweep`) on the
rolled-back store: every valid grant is checked once an interval, at an offset of its own that
stays the same between sweeps, and the offsets spread evenly (no herd at the interval's start).

What the sweep finds on a real server is tests/integration/maintenance/test_uidvalidity_sweep.py.
"""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.maintenance.sweep import plan_sweep, sweep_offset
from tests.support.store import offline_grant

pytestmark = pytest.mark.services


def test_the_plan_spreads_grants_over_the_interval(pg_sessions: sessionmaker[Session]) -> None:
    grant_id, _ = offline_grant(pg_sessions, "swept")
    with pg_sessions() as db:
        jobs = plan_sweep(db, 300)
    assert [(j.grant_id, j.provider) for j in jobs] == [(grant_id, "generic")]
    assert jobs[0].countdown_s == sweep_offset(grant_id, 300)  # stable between sweeps
    offsets = [sweep_offset(f"grant-{i}", 300) for i in range(1000)]
    assert all(0 <= o < 300 for o in offsets)
    per_minute = [sum(1 for o in offsets if m * 60 <= o < (m + 1) * 60) for m in range(5)]
    assert min(per_minute) > 150  # about 200 each: no herd at :00
