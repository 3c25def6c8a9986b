"""How an account's connection cap is shared between the listener, the API and bulk sync."""

from __future__ import annotations

import pytest

from pipeline.limits import (
    Priority,
    Shares,
    idle_allowed,
    idle_holder,
    new_holder,
    priority_of,
    shares,
)


@pytest.mark.parametrize(
    ("cap", "idle", "interactive", "bulk"),
    [
        (0, 0, 0, 0),  # an operator's pause
        (1, 0, 0, 1),  # one slot: sync must run (mail is polled), nothing is watched
        (2, 1, 0, 1),  # Inbox watched, one slot for the API and sync (the API first)
        (3, 2, 0, 1),  # Inbox and Sent watched, one shared work slot
        (4, 2, 1, 1),  # from here the API has a slot of its own
        (5, 2, 1, 2),  # the generic preset
        (15, 2, 1, 12),  # Gmail
    ],
)
def test_small_caps_keep_one_work_slot_then_watch_inbox_sent_then_reserve_one_for_the_api(
    cap: int, idle: int, interactive: int, bulk: int
) -> None:
    assert shares(cap) == Shares(cap, idle, interactive, bulk)


def test_holders_carry_their_priority() -> None:
    assert priority_of(idle_holder("host:1:abc", "folder-1")) is Priority.IDLE
    assert priority_of(new_holder(Priority.INTERACTIVE)) is Priority.INTERACTIVE
    assert priority_of(new_holder(Priority.BULK)) is Priority.BULK
    assert new_holder(Priority.BULK) != new_holder(Priority.BULK)  # one per session


@pytest.mark.parametrize(
    ("cap", "inbox", "sent"),
    [(0, False, False), (1, False, False), (2, True, False), (3, True, True)],
)
def test_the_inbox_takes_the_first_idle_slot_and_sent_the_second(
    cap: int, inbox: bool, sent: bool
) -> None:
    assert idle_allowed("inbox", cap) is inbox
    assert idle_allowed("sent", cap) is sent
