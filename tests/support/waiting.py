"""Waiting in tests: one poll loop with a deadline, used wherever a test waits for a process.

A test waits for something another process does (a worker syncs, a listener notices, a receiver
is called). It polls a condition until it holds or a deadline passes, and then fails saying what
it waited for. A bare ``time.sleep`` is no synchronisation: on a loaded machine it is too short,
on a quiet one too long. :func:`wait_for_async` is the same loop for a test that runs the code
under test in its own event loop (it awaits instead of sleeping).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 0.1  # short enough not to slow a test, long enough not to spin a core
ASYNC_INTERVAL_S = 0.01  # in a test's own event loop: the code under test runs between polls


def wait_for(
    condition: Callable[[], object],
    what: str | Callable[[], str],
    timeout_s: float,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> float:
    """Poll ``condition`` until it is truthy; return the seconds it took.

    ``what`` names what is awaited; a function is called at the timeout (to say what was seen
    last, e.g. ``lambda: f"delivered, still {states}"``).

    Raises:
        AssertionError: ``condition`` was still falsy after ``timeout_s`` seconds; the message
            names ``what`` was awaited.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            named = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {named}")
        time.sleep(interval_s)
    return time.monotonic() - started


async def wait_for_async(
    condition: Callable[[], object],
    what: str | Callable[[], str],
    timeout_s: float,
    interval_s: float = ASYNC_INTERVAL_S,
) -> float:
    """:func:`wait_for` for a test running in an event loop: it awaits between polls, so the
    code under test (in the same loop) runs meanwhile.

    Raises:
        AssertionError: as :func:`wait_for`.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            named = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {named}")
        await asyncio.sleep(interval_s)
    return time.monotonic() - started
