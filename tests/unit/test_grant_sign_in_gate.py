"""The sign-in gate without HTTP (pipeline.grants.gate): a full gate refuses at once with when
to retry, and past its deadline the caller gets SignInTooSlow while the slot stays taken. The
HTTP answers (429 with Retry-After, 504) are tests/unit/api/test_sign_in_gate.py's."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pipeline.grants.gate import BUSY_RETRY_AFTER_S, GateFull, SignInGate, SignInTooSlow
from tests.support.waiting import wait_for

WAIT_S = 10.0  # generous: how long a condition may take to come true


def test_a_full_gate_refuses_at_once_and_a_late_sign_in_keeps_its_slot() -> None:
    async def scenario() -> None:
        gate = SignInGate(total=1, per_client=1, deadline_s=0.05)
        release, started = threading.Event(), threading.Event()

        def blocked() -> str:
            started.set()
            assert release.wait(WAIT_S)
            return "done"

        with pytest.raises(SignInTooSlow) as late:
            await gate.run("10.0.0.1", blocked)
        assert late.value.deadline_s == 0.05
        assert "within 0.05 s" in str(late.value)
        assert started.is_set()
        with pytest.raises(GateFull) as full:  # the slow server still holds its slot
            await gate.run("10.0.0.2", lambda: "never runs")
        assert full.value.retry_after_s == BUSY_RETRY_AFTER_S
        release.set()
        wait_for(lambda: gate.running == 0, "every slot to be free", WAIT_S, interval_s=0.01)
        assert await gate.run("10.0.0.2", lambda: "ran") == "ran"
        gate.close()

    asyncio.run(scenario())
