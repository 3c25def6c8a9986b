"""The sign-in gate in HTTP: :class:`pipeline.grants.gate.SignInGate` (public sign-ins on
threads of their own, a bounded number at once) answering a full gate with 429 and
``Retry-After`` at once, and a sign-in past its deadline with 504; and the client address a
sign-in is counted against.

See :mod:`pipeline.grants.signin` for what runs behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request

from pipeline.api.errors import from_pipeline_error
from pipeline.grants import gate

T = TypeVar("T")


class SignInGate(gate.SignInGate):
    """The domain's gate, its refusals as the v3 errors (:func:`from_pipeline_error`)."""

    async def run(self, client: str, work: Callable[[], T]) -> T:
        """Run ``work`` on a sign-in thread and wait for it at most ``deadline_s``.

        Raises:
            ApiError: 429 at once when the gate is full; 504 when the deadline passes first
                (the thread then finishes on its own and frees its slot).
        """
        try:
            return await super().run(client, work)
        except (gate.GateFull, gate.SignInTooSlow) as exc:
            raise from_pipeline_error(exc) from exc


def client_of(request: Request) -> str:
    """The client address a sign-in is counted against (the peer; behind a proxy, run uvicorn
    with ``--proxy-headers`` and ``--forwarded-allow-ips`` so that it is the real client)."""
    return request.client.host if request.client else "unknown"
