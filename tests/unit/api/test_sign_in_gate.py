"""The sign-in gate: bounded in total and per client address, full means 429 at once, and a
sign-in past its deadline keeps its slot until its work really ends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pipeline.api.errors import ApiError
from pipeline.api.gate import SignInGate
from tests.support.waiting import wait_for

WAIT_S = 10.0  # generous: how long a condition may take to come true


def _blocked(release: threading.Event, started: threading.Event | None = None) -> str:
    if started is not None:
        started.set()
    assert release.wait(WAIT_S)
    return "done"


def test_full_gate_refuses_at_once_in_total_and_per_client() -> None:
    async def scenario() -> None:
        gate = SignInGate(total=2, per_client=1, deadline_s=WAIT_S)
        release = threading.Event()
        first = asyncio.ensure_future(gate.run("10.0.0.1", lambda: _blocked(release)))
        second = asyncio.ensure_future(gate.run("10.0.0.2", lambda: _blocked(release)))
        await asyncio.sleep(0)  # both admitted now
        assert gate.running == 2
        for client in ("10.0.0.1", "10.0.0.3"):  # per client, then in total
            with pytest.raises(ApiError) as refused:
                await gate.run(client, lambda: "never runs")
            assert refused.value.status == 429
            assert refused.value.headers["Retry-After"]
        release.set()
        assert await first == "done"
        assert await second == "done"
        wait_for(lambda: gate.running == 0, "every slot to be free", WAIT_S, interval_s=0.01)
        assert await gate.run("10.0.0.3", lambda: "ran") == "ran"
        gate.close()

    asyncio.run(scenario())


def test_past_the_deadline_the_request_gets_504_and_the_slot_stays_taken() -> None:
    async def scenario() -> None:
        gate = SignInGate(total=1, per_client=1, deadline_s=0.05)
        release, started = threading.Event(), threading.Event()
        with pytest.raises(ApiError) as late:
            await gate.run("10.0.0.1", lambda: _blocked(release, started))
        assert late.value.status == 504
        assert started.is_set()
        with pytest.raises(ApiError) as full:  # the slow server still holds its slot
            await gate.run("10.0.0.2", lambda: "never runs")
        assert full.value.status == 429
        release.set()
        wait_for(lambda: gate.running == 0, "every slot to be free", WAIT_S, interval_s=0.01)
        gate.close()

    asyncio.run(scenario())


def test_a_failing_sign_in_frees_its_slot_and_raises_its_error() -> None:
    async def scenario() -> None:
        gate = SignInGate(total=1, per_client=1, deadline_s=WAIT_S)

        def fails() -> str:
            raise ValueError("login refused")

        with pytest.raises(ValueError, match="login refused"):
            await gate.run("10.0.0.1", fails)
        wait_for(lambda: gate.running == 0, "every slot to be free", WAIT_S, interval_s=0.01)
        assert await gate.run("10.0.0.1", lambda: "again") == "again"
        gate.close()

    asyncio.run(scenario())
