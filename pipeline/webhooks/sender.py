"""HTTP to webhook destinations: the challenge handshake and signed POSTs.

One :class:`Sender` per process keeps a pooled :class:`httpx.Client` (keep-alive to busy
destinations) and a small thread pool for concurrent requests to one destination. Nothing here
touches the database; every outcome is returned as an :class:`AttemptResult`, never raised, so
the caller records it.

Every request has a timeout (``request_timeout_s``, 10 s by default), redirects are never
followed (a redirect would dodge the SSRF guard) and environment proxies are ignored.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from pipeline.webhooks.errors import ChallengeFailed
from pipeline.webhooks.settings import WebhookSettings
from pipeline.webhooks.signing import SIGNATURE_HEADER

USER_AGENT = "imap-pipeline-webhooks/1"  # major version of the notification format
CHALLENGE_BODY_LIMIT_BYTES = 4096  # a challenge answer is the token we sent, nothing more
ERROR_DETAIL_CHARS = 300
POOL_KEEPALIVE = 32  # idle keep-alive connections kept per process
POOL_MAX = 128  # connections per process, across destinations


@dataclass(frozen=True)
class AttemptResult:
    """What one POST to a destination came to."""

    started_at: datetime
    latency_ms: int
    status_code: int | None = None
    response_body: str | None = None
    error_class: str | None = None
    error_detail: str | None = None

    @property
    def ok(self) -> bool:
        """A 2xx answer: the destination took the notification."""
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class OutgoingRequest:
    """A signed notification ready to POST."""

    key: int  # the caller's handle (delivery id)
    url: str
    body: bytes
    signature: str


def _read_limited(response: httpx.Response, limit: int) -> bytes:
    if limit <= 0:
        return b""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


class Sender:
    """Pooled HTTP client for deliveries and challenges.

    Args:
        settings: timeouts, concurrency and response-body limits.
        transport: an httpx transport to use instead of the network (tests).
    """

    def __init__(
        self, settings: WebhookSettings, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._settings = settings
        self._client = httpx.Client(
            timeout=httpx.Timeout(settings.request_timeout_s),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=POOL_MAX, max_keepalive_connections=POOL_KEEPALIVE),
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=settings.per_destination_concurrency, thread_name_prefix="webhook-post"
        )

    def close(self) -> None:
        """Close connections and threads."""
        self._pool.shutdown(wait=True)
        self._client.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- delivery ---------------------------------------------------------------------------

    def post(self, request: OutgoingRequest) -> AttemptResult:
        """POST one signed notification; never raises for network or HTTP errors."""
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: request.signature,
        }
        try:
            with self._client.stream(
                "POST", request.url, content=request.body, headers=headers
            ) as response:
                raw = _read_limited(response, self._settings.response_body_limit_bytes)
                return AttemptResult(
                    started_at=started,
                    latency_ms=_elapsed_ms(t0),
                    status_code=response.status_code,
                    response_body=raw.decode("utf-8", errors="replace"),
                )
        except httpx.HTTPError as exc:
            return AttemptResult(
                started_at=started,
                latency_ms=_elapsed_ms(t0),
                error_class=type(exc).__name__,
                error_detail=(str(exc) or type(exc).__name__)[:ERROR_DETAIL_CHARS],
            )

    def post_many(self, requests: Sequence[OutgoingRequest]) -> dict[int, AttemptResult]:
        """POST several notifications concurrently (``per_destination_concurrency`` at once)."""
        if len(requests) == 1:
            return {requests[0].key: self.post(requests[0])}
        results = self._pool.map(self.post, requests)
        return {req.key: res for req, res in zip(requests, results, strict=True)}

    # --- handshake --------------------------------------------------------------------------

    def challenge(self, url: str) -> None:
        """Verify a destination: ``GET url?challenge=X`` must answer 200 with body ``X``.

        Raises:
            ChallengeFailed: wrong status or body, unreachable, or slower than
                ``challenge_timeout_s``.
        """
        token = secrets.token_urlsafe(24)
        target = httpx.URL(url).copy_merge_params({"challenge": token})
        limit_s = self._settings.challenge_timeout_s
        how = (
            f"Make it answer GET requests carrying ?challenge=<value> with HTTP 200 and exactly "
            f"<value> as the body, within {limit_s:g} s."
        )
        deadline = time.monotonic() + limit_s
        try:
            with self._client.stream("GET", target, timeout=httpx.Timeout(limit_s)) as response:
                body = _read_limited(response, CHALLENGE_BODY_LIMIT_BYTES)
                status = response.status_code
        except httpx.TimeoutException as exc:
            raise ChallengeFailed(
                f"The webhook URL did not answer the challenge within {limit_s:g} s. {how}"
            ) from exc
        except httpx.HTTPError as exc:
            raise ChallengeFailed(
                f"The webhook URL could not be reached for the challenge "
                f"({type(exc).__name__}: {exc}). {how}"
            ) from exc
        if time.monotonic() > deadline:
            raise ChallengeFailed(
                f"The webhook URL answered the challenge after more than {limit_s:g} s. {how}"
            )
        if status != httpx.codes.OK:
            raise ChallengeFailed(
                f"The webhook URL answered the challenge with HTTP {status}. {how}"
            )
        if body.decode("utf-8", errors="replace").strip() != token:
            raise ChallengeFailed(
                f"The webhook URL answered HTTP 200 but its body was not the challenge value. {how}"
            )


def _elapsed_ms(t0: float) -> int:
    return round((time.perf_counter() - t0) * 1000)
