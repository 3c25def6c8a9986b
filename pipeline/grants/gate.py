"""The sign-in gate: public sign-ins run on threads of their own, a bounded number at once.

A sign-in logs in to a server whoever signs in names (:mod:`pipeline.grants.signin` draws what
runs behind the gate), so the gate bounds them in total and per client address; one more is
refused at once (:class:`GateFull`, never queued), and the caller stops waiting at the
deadline (:class:`SignInTooSlow`) while the thread keeps its slot until its own bounded IMAP
calls end. The HTTP API answers these 429 with ``Retry-After`` and 504
(:mod:`pipeline.api.gate`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pipeline.errors import RequestError

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_RETRY_AFTER_S = 2  # when to retry after a full gate: sign-ins last seconds


class GateFull(RequestError):
    """Too many sign-ins are in flight, in total or for this client; retry after
    ``retry_after_s`` seconds."""

    def __init__(self) -> None:
        super().__init__("Too many sign-ins are in progress; retry in a few seconds.")
        self.retry_after_s = BUSY_RETRY_AFTER_S


class SignInTooSlow(RequestError):
    """The sign-in's server did not finish within ``deadline_s`` (the sign-in goes on on its
    thread and ends with its own IMAP bounds)."""

    def __init__(self, deadline_s: float) -> None:
        super().__init__(
            f"The mail server did not complete the sign-in within {deadline_s:g} s; check the "
            "server name, the port and the TLS mode."
        )
        self.deadline_s = deadline_s


class SignInGate:
    """Runs sign-ins on threads of its own: at most ``total`` at once and ``per_client`` for
    one client address; the rest are refused at once (never queued)."""

    def __init__(self, total: int, per_client: int, deadline_s: float) -> None:
        self.total = total
        self.per_client = per_client
        self.deadline_s = deadline_s
        self._lock = threading.Lock()
        self._running = 0
        self._by_client: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=total, thread_name_prefix="sign-in")

    @property
    def running(self) -> int:
        """Sign-ins in flight now (including ones whose request already gave up)."""
        with self._lock:
            return self._running

    def _admit(self, client: str) -> bool:
        with self._lock:
            if self._running >= self.total or self._by_client.get(client, 0) >= self.per_client:
                return False
            self._running += 1
            self._by_client[client] = self._by_client.get(client, 0) + 1
            return True

    def _release(self, client: str) -> None:
        with self._lock:
            self._running -= 1
            left = self._by_client.get(client, 1) - 1
            if left > 0:
                self._by_client[client] = left
            else:
                self._by_client.pop(client, None)

    async def run(self, client: str, work: Callable[[], T]) -> T:
        """Run ``work`` on a sign-in thread and wait for it at most ``deadline_s``.

        Raises:
            GateFull: At once, when the gate is full.
            SignInTooSlow: The deadline passed first (the thread then finishes on its own and
                frees its slot).
        """
        if not self._admit(client):
            log.info("sign-in refused: gate full", extra={"running": self.running})
            raise GateFull()
        try:
            future = self._pool.submit(work)
        except BaseException:
            self._release(client)
            raise
        future.add_done_callback(lambda _: self._release(client))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=self.deadline_s)
        except TimeoutError as exc:
            log.info("sign-in answered 504: past its deadline")
            raise SignInTooSlow(self.deadline_s) from exc

    def close(self) -> None:
        """Stop taking work (at shutdown); running sign-ins end with their IMAP bounds."""
        self._pool.shutdown(wait=False, cancel_futures=True)
