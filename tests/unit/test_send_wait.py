"""The immediate send's wait is one policy (:class:`pipeline.outbound.submit.Wait`) with two
drivers: :func:`~pipeline.outbound.submit.submit_and_wait` sleeps on its thread, the HTTP
route (``pipeline.api.send._wait``) awaits. Both pause the same, answer with the settled look,
and give the same answer when the wait is over. The looks are scripted; no database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.api import send as send_route
from pipeline.outbound import submit
from pipeline.outbound.submit import WAIT_POLL_FIRST_S, WAIT_POLL_MAX_S, Kind, Outcome, Wait

ROW = SimpleNamespace(id="sched-1", request={"subject": "Once"}, send_at=None)


def _submitted(new: bool = True) -> submit.Submitted:
    return submit.Submitted(row=ROW, new=new)  # type: ignore[arg-type]


def _answered() -> Outcome:
    return Outcome(Kind.ANSWERED, ROW, False, {"status": 200, "data": {"id": "m1"}})  # type: ignore[arg-type]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_pauses_start_short_and_double_up_to_the_longest() -> None:
    wait = Wait(_submitted(), 10.0, clock=_Clock())
    pauses = [wait.after(None) for _ in range(7)]
    assert pauses == [0.02, 0.04, 0.08, 0.16, WAIT_POLL_MAX_S, WAIT_POLL_MAX_S, WAIT_POLL_MAX_S]
    assert pauses[0] == WAIT_POLL_FIRST_S


def test_a_settled_look_is_the_outcome_even_past_the_deadline() -> None:
    clock = _Clock()
    wait = Wait(_submitted(), 1.0, clock=clock)
    clock.now += 5
    settled = _answered()
    assert wait.after(settled) is settled


@pytest.mark.parametrize(
    ("new", "kind", "status"), [(True, Kind.PENDING, 202), (False, Kind.IN_PROGRESS, 0)]
)
def test_the_wait_over_answers_pending_or_in_progress(new: bool, kind: Kind, status: int) -> None:
    clock = _Clock()
    wait = Wait(_submitted(new), 1.0, clock=clock)
    assert wait.after(None) == WAIT_POLL_FIRST_S
    clock.now += 1.0  # the deadline itself ends the wait
    over = wait.after(None)
    assert isinstance(over, Outcome) and over.kind is kind and over.status == status
    if new:
        assert over.answer == {"status": 202, "data": {"subject": "Once", "schedule_id": "sched-1"}}


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[Outcome | None], list[float]]]:
    """``submit.look`` answers from the script; both drivers' pauses are recorded, not slept."""
    looks: list[Outcome | None] = []
    pauses: list[float] = []

    def look(*args: Any) -> Outcome | None:
        return looks.pop(0)

    async def async_pause(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(submit, "look", look)
    monkeypatch.setattr(submit, "submit", lambda *a, **k: _submitted())
    monkeypatch.setattr(submit.time, "sleep", pauses.append)
    monkeypatch.setattr(send_route.asyncio, "sleep", async_pause)
    yield looks, pauses


def _both(
    looks: list[Outcome | None], pauses: list[float], script: list[Outcome | None], wait_s: float
) -> list[tuple[Outcome, list[float]]]:
    """The outcome and the pauses of the thread's driver, then of the route's."""
    sender = SimpleNamespace(sessions=None)
    grant = SimpleNamespace(id="g1")
    results = []
    looks[:] = list(script)
    outcome = submit.submit_and_wait(None, sender, grant, None, None, wait_s=wait_s)  # type: ignore[arg-type]
    results.append((outcome, list(pauses)))
    pauses.clear()
    looks[:] = list(script)
    api = SimpleNamespace(
        sessions=None, settings=SimpleNamespace(api=SimpleNamespace(send_wait_s=wait_s))
    )
    outcome = asyncio.run(send_route._wait(api, grant, _submitted(), "standard"))  # type: ignore[arg-type]
    results.append((outcome, list(pauses)))
    pauses.clear()
    return results


def test_both_drivers_pause_alike_and_answer_with_the_settled_look(
    scripted: tuple[list[Outcome | None], list[float]],
) -> None:
    settled = _answered()
    for outcome, pauses in _both(*scripted, [None, None, None, settled], wait_s=30.0):
        assert outcome is settled
        assert pauses == [0.02, 0.04, 0.08]


def test_both_drivers_answer_pending_when_the_wait_is_over(
    scripted: tuple[list[Outcome | None], list[float]],
) -> None:
    for outcome, pauses in _both(*scripted, [None], wait_s=0.0):
        assert outcome.kind is Kind.PENDING and outcome.status == 202
        assert pauses == []
