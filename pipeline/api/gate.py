"""The sign-in gate: public sign-ins run on threads of their own, a bounded number at once.

See :mod:`pipeline.grants.signin` for what runs behind it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from fastapi import Request

from pipeline.api.errors import ApiError

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_RETRY_AFTER_S = 2  # Retry-After of a 429 from a full gate: sign-ins last seconds


def too_many_sign_ins() -> ApiError:
    """The 429 a full gate answers at once."""
    return ApiError(
        429,
        "rate_limit_error",
        "Too many sign-ins are in progress; retry in a few seconds.",
        headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
    )


def too_slow(deadline_s: float) -> ApiError:
    """The 504 of a sign-in whose server did not finish within the deadline."""
    return ApiError(
        504,
        "provider_error",
        f"The mail server did not complete the sign-in within {deadline_s:g} s; check the "
        "server name, the port and the TLS mode.",
    )


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
            ApiError: 429 at once when the gate is full; 504 when the deadline passes first
                (the thread then finishes on its own and frees its slot).
        """
        if not self._admit(client):
            log.info("sign-in refused: gate full", extra={"running": self.running})
            raise too_many_sign_ins()
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
            raise too_slow(self.deadline_s) from exc

    def close(self) -> None:
        """Stop taking work (at shutdown); running sign-ins end with their IMAP bounds."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def client_of(request: Request) -> str:
    """The client address a sign-in is counted against (the peer; behind a proxy, run uvicorn
    with ``--proxy-headers`` and ``--forwarded-allow-ips`` so that it is the real client)."""
    return request.client.host if request.client else "unknown"
