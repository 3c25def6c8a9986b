"""HTTP to webhook destinations: the challenge handshake and signed POSTs.

One :class:`Sender` per process keeps a pooled :class:`aiohttp.ClientSession` on an event loop
of its own (a daemon thread), so one process has many deliveries in flight at once, to many
destinations, while none of them holds a thread. Async callers (the drainer) await
:meth:`Sender.send`; synchronous callers (the API, the CLI, tests) use :meth:`Sender.post`,
:meth:`Sender.post_many` and :meth:`Sender.challenge`, which run on that loop and wait.
Nothing here touches the database; every outcome of a POST is returned as an
:class:`AttemptResult`, never raised, so the caller records it. (aiohttp rather than httpx's
async client: here it costs ~0.16 ms of CPU per request against ~1.1 ms, which is what lets
one process keep up with a fast destination.)

What one destination can cost, whatever it does:

- **Time.** Every request has a *total* deadline (``request_timeout_s``, 10 s by default; the
  challenge ``challenge_timeout_s``): connect, send, response headers and the body we read all
  fit in it. Per-read timeouts would not do (a receiver sending one byte every 5 s never trips
  a 10 s read timeout), so the whole exchange runs under :func:`asyncio.timeout`.
- **Memory.** At most ``response_body_limit_bytes`` of a body are read (for the operator's
  error text and the challenge), raw: ``Accept-Encoding: identity`` is asked for and a
  compressed answer is not inflated, so a "gzip bomb" costs what came over the wire. The
  connection is closed instead of drained after that, so a body of gigabytes costs one read
  buffer (``READ_BUFFER_BYTES``). Response headers are capped at ``MAX_HEADERS`` fields of
  ``MAX_HEADER_FIELD_BYTES``. Per request in flight: the notification (at most
  ``max_payload_bytes``) + well under 1 MiB.
- **Redirects** are never followed: a 3xx is a failed attempt whose reason says where it
  pointed (following it would dodge the address check the URL passed). Point the webhook at
  the final URL instead.

Environment proxies are ignored. Failures are named with a small stable vocabulary
(``ConnectError``, ``TLSError``, ``RemoteProtocolError``, ``ReadError``, ``NetworkError``,
``DeadlineExceeded``, ``RedirectRefused``), whatever the HTTP library calls them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import math
import secrets
import socket
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from pipeline import netguard
from pipeline.config.webhooks import WebhookSettings
from pipeline.errors import AddressRefused, HostUnresolved
from pipeline.netguard import AddressPolicy, Resolver
from pipeline.webhooks.errors import ChallengeFailed
from pipeline.webhooks.signing import SIGNATURE_HEADER

USER_AGENT = "imap-pipeline-webhooks/1"  # major version of the notification format
CHALLENGE_BODY_LIMIT_BYTES = 4096  # a challenge answer is the token we sent, nothing more
ERROR_DETAIL_CHARS = 300
LOCATION_CHARS = 200  # of a redirect's target, in the failure reason
POOL_MAX = 1024  # connections per process, across destinations (drains x their concurrency)
KEEPALIVE_S = 15.0  # an idle keep-alive connection is closed after this
READ_BUFFER_BYTES = 64 * 1024  # what a response buffers before reading from the socket pauses
MAX_HEADERS = 64  # response header fields; more is a protocol error
MAX_HEADER_FIELD_BYTES = 8190  # one response header line (and the status line)
# aiohttp's own total timeout stays as a backstop a little beyond ours, so ours is the one that
# fires (and names the phase it fired in).
BACKSTOP_SLACK_S = 1.0
CALL_SLACK_S = 10.0  # a synchronous caller waits this much beyond the deadlines it runs under
LOOP_STOP_TIMEOUT_S = 10.0

HTTP_OK = 200
DEADLINE_EXCEEDED = "DeadlineExceeded"
REDIRECT_REFUSED = "RedirectRefused"

T = TypeVar("T")


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

    def reason(self) -> str:
        """Why the attempt failed, in one line for the operator ("" when it did not fail)."""
        if self.ok:
            return ""
        if self.error_class is not None:
            detail = f": {self.error_detail}" if self.error_detail else ""
            return f"{self.error_class}{detail}"[: ERROR_DETAIL_CHARS + 64]
        body = (self.response_body or "").strip()
        tail = f": {body[:ERROR_DETAIL_CHARS]}" if body else ""
        return f"HTTP {self.status_code}{tail}"


@dataclass(frozen=True)
class OutgoingRequest:
    """A signed notification ready to POST."""

    key: int  # the caller's handle (delivery id)
    url: str
    body: bytes  # as sent (gzip for a compressed destination); the signature covers these
    signature: str
    content_encoding: str | None = None  # "gzip" for compressed_delivery


async def _read_limited(response: aiohttp.ClientResponse, limit: int, into: bytearray) -> None:
    """Append up to ``limit`` raw bytes of the body to ``into``; the rest is never read."""
    while len(into) < limit:
        chunk = await response.content.read(limit - len(into))
        if not chunk:
            return
        into += chunk


def _close_unread(response: aiohttp.ClientResponse) -> None:
    """Drop the connection of an answer whose body was not read to the end (never drain it)."""
    if not response.content.at_eof():
        response.close()


def _error_name(exc: aiohttp.ClientError) -> str:
    """A stable name for what went wrong, whatever aiohttp calls it."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "TLSError"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "ConnectError"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        return "RemoteProtocolError"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "ReadError"
    if isinstance(exc, aiohttp.InvalidURL):
        return "InvalidURL"
    if isinstance(exc, aiohttp.ClientOSError):
        return "NetworkError"
    return type(exc).__name__


def _describe(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:ERROR_DETAIL_CHARS]


class _LoopThread:
    """An asyncio event loop running on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def on_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=LOOP_STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()


class GuardedResolver(AbstractResolver):
    """aiohttp's name lookup through the address guard: the connection goes to an address
    that was checked in the same lookup, so a name that resolved to a public address for the
    destination check and to an internal one a moment later (DNS rebinding) is refused, not
    connected to. The lookup runs on :mod:`pipeline.netguard`'s resolver threads, with its
    deadline; a refusal is an ``OSError``, which aiohttp reports as a connect failure.
    """

    def __init__(self, settings: WebhookSettings, resolver: Resolver = netguard.resolve) -> None:
        self._policy = (
            None
            if settings.allow_private_destinations
            else AddressPolicy.of(settings.allowed_networks)
        )
        self._resolver = resolver

    def _addresses(self, host: str, port: int) -> list[str]:
        if self._policy is None:  # the operator allowed every destination
            return self._resolver(host, port)
        try:
            return [
                str(a)
                for a in netguard.check_host(host, port, self._policy, resolver=self._resolver)
            ]
        except (AddressRefused, HostUnresolved) as exc:
            # errno + strerror: aiohttp shows the strerror in its connect error
            raise OSError(errno.EACCES, f"{exc} (checked when connecting)") from exc

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        addresses = await loop.run_in_executor(None, self._addresses, host, port)
        results: list[ResolveResult] = []
        for address in addresses:
            is_v6 = ":" in address
            if family in (socket.AF_INET, socket.AF_INET6) and is_v6 != (family == socket.AF_INET6):
                continue  # aiohttp asks for one family only when it was told to
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=socket.AF_INET6 if is_v6 else socket.AF_INET,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not results:
            raise OSError(errno.EADDRNOTAVAIL, f"{host!r} has no address of the family asked for")
        return results

    async def close(self) -> None:
        """Nothing to release: the lookups run on netguard's shared threads."""


class Sender:
    """Pooled async HTTP client for deliveries and challenges, with a synchronous facade.

    Args:
        settings: deadlines, concurrency and response-body limits.
        resolver: the name lookup behind the guard (tests substitute it).
    """

    def __init__(self, settings: WebhookSettings, resolver: Resolver = netguard.resolve) -> None:
        self._settings = settings
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._loop: _LoopThread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def settings(self) -> WebhookSettings:
        """The settings this sender runs on."""
        return self._settings

    # --- the event loop ---------------------------------------------------------------------

    def _ensure_loop(self) -> _LoopThread:
        with self._lock:
            if self._closed:
                raise RuntimeError("the webhook sender is closed")
            if self._loop is None:
                self._loop = _LoopThread("webhook-http")
            return self._loop

    def _http(self) -> aiohttp.ClientSession:
        # Made on the loop, on first use: the session belongs to the loop that uses it.
        if self._session is None:
            backstop_s = (
                max(self._settings.request_timeout_s, self._settings.challenge_timeout_s)
                + BACKSTOP_SLACK_S
            )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=POOL_MAX,
                    limit_per_host=0,
                    keepalive_timeout=KEEPALIVE_S,
                    resolver=GuardedResolver(self._settings, self._resolver),
                ),
                timeout=aiohttp.ClientTimeout(total=backstop_s),
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                auto_decompress=False,
                trust_env=False,
                read_bufsize=READ_BUFFER_BYTES,
                max_line_size=MAX_HEADER_FIELD_BYTES,
                max_field_size=MAX_HEADER_FIELD_BYTES,
                max_headers=MAX_HEADERS,
            )
        return self._session

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on this sender's event loop; the future completes with its result."""
        return self._ensure_loop().submit(coro)

    def call(self, coro: Coroutine[Any, Any, T], *, timeout_s: float) -> T:
        """Run ``coro`` on the event loop and wait for it (at most ``timeout_s`` + slack).

        Raises:
            TimeoutError: the coroutine overran its own bounds (it is cancelled).
        """
        loop = self._ensure_loop()
        if loop.on_loop():
            coro.close()
            raise RuntimeError("Sender.call() from the sender's own loop would deadlock")
        future = loop.submit(coro)
        try:
            return future.result(timeout=timeout_s + CALL_SLACK_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"webhook HTTP call did not finish in {timeout_s:g} s") from None

    def close(self) -> None:
        """Close connections and stop the loop thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._session is not None:
            session = self._session
            # connections die with the process anyway if closing them fails
            with contextlib.suppress(concurrent.futures.TimeoutError, OSError, aiohttp.ClientError):
                loop.submit(session.close()).result(timeout=LOOP_STOP_TIMEOUT_S)
        loop.stop()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- delivery ---------------------------------------------------------------------------

    async def send(self, request: OutgoingRequest) -> AttemptResult:
        """POST one signed notification under the total deadline; never raises for I/O."""
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        limit_s = self._settings.request_timeout_s
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: request.signature}
        if request.content_encoding is not None:
            headers["Content-Encoding"] = request.content_encoding
        status: int | None = None
        location = ""
        body = bytearray()
        try:
            async with asyncio.timeout(limit_s):
                async with self._http().post(
                    request.url, data=request.body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    location = response.headers.get("Location", "")
                    try:
                        limit = self._settings.response_body_limit_bytes
                        await _read_limited(response, limit, body)
                    finally:
                        _close_unread(response)
        except TimeoutError:
            if status is None:
                return AttemptResult(
                    started_at=started,
                    latency_ms=_elapsed_ms(t0),
                    error_class=DEADLINE_EXCEEDED,
                    error_detail=(
                        f"no complete response headers within {limit_s:g} s (connect, send and "
                        "headers share one deadline, IMAP_PIPELINE_WEBHOOK_REQUEST_TIMEOUT_S)"
                    ),
                )
            # The status line and headers came in time: that is the answer. Only the body we
            # keep for the record was cut short.
        except aiohttp.ClientError as exc:
            if status is None:
                return AttemptResult(
                    started_at=started,
                    latency_ms=_elapsed_ms(t0),
                    error_class=_error_name(exc),
                    error_detail=_describe(exc),
                )
            # The status came; the body broke off. The status stands.
        assert status is not None  # every path without a status returned above
        text = bytes(body).decode("utf-8", errors="replace")
        if 300 <= status < 400:
            target = location[:LOCATION_CHARS] or "(no Location)"
            return AttemptResult(
                started_at=started,
                latency_ms=_elapsed_ms(t0),
                status_code=status,
                response_body=text,
                error_class=REDIRECT_REFUSED,
                error_detail=(
                    f"HTTP {status} redirect to {target}; redirects are not followed: "
                    "point the webhook at the final URL"
                ),
            )
        return AttemptResult(
            started_at=started, latency_ms=_elapsed_ms(t0), status_code=status, response_body=text
        )

    async def send_many(self, requests: Sequence[OutgoingRequest]) -> dict[int, AttemptResult]:
        """POST several notifications, ``per_destination_concurrency`` at a time."""
        gate = asyncio.Semaphore(self._settings.per_destination_concurrency)

        async def one(request: OutgoingRequest) -> AttemptResult:
            async with gate:
                return await self.send(request)

        results = await asyncio.gather(*(one(r) for r in requests))
        return {req.key: res for req, res in zip(requests, results, strict=True)}

    def post(self, request: OutgoingRequest) -> AttemptResult:
        """POST one signed notification and wait; never raises for network or HTTP errors."""
        return self.call(self.send(request), timeout_s=self._settings.request_timeout_s)

    def post_many(self, requests: Sequence[OutgoingRequest]) -> dict[int, AttemptResult]:
        """POST several notifications concurrently and wait for all of them."""
        return self.call(self.send_many(requests), timeout_s=self.rounds_s(len(requests)))

    def rounds_s(self, count: int) -> float:
        """The longest ``count`` requests to one destination can take, by the deadlines."""
        rounds = math.ceil(max(count, 1) / self._settings.per_destination_concurrency)
        return rounds * self._settings.request_timeout_s

    # --- handshake --------------------------------------------------------------------------

    def challenge(self, url: str) -> None:
        """Verify a destination: ``GET url?challenge=X`` must answer 200 with body ``X``.

        Raises:
            ChallengeFailed: wrong status or body, a redirect, unreachable, or no complete
                answer within ``challenge_timeout_s``.
        """
        self.call(self.check_challenge(url), timeout_s=self._settings.challenge_timeout_s)

    async def check_challenge(self, url: str) -> None:
        """:meth:`challenge`, for async callers."""
        token = secrets.token_urlsafe(24)
        limit_s = self._settings.challenge_timeout_s
        how = (
            f"Make it answer GET requests carrying ?challenge=<value> with HTTP 200 and exactly "
            f"<value> as the body, within {limit_s:g} s."
        )
        body = bytearray()
        try:
            target = URL(url).update_query({"challenge": token})
            async with asyncio.timeout(limit_s):
                async with self._http().get(target, allow_redirects=False) as response:
                    status = response.status
                    try:
                        await _read_limited(response, CHALLENGE_BODY_LIMIT_BYTES, body)
                    finally:
                        _close_unread(response)
        except TimeoutError as exc:
            raise ChallengeFailed(
                f"The webhook URL did not answer the challenge within {limit_s:g} s. {how}"
            ) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            name = _error_name(exc) if isinstance(exc, aiohttp.ClientError) else "InvalidURL"
            raise ChallengeFailed(
                f"The webhook URL could not be reached for the challenge "
                f"({name}: {_describe(exc)}). {how}"
            ) from exc
        if status != HTTP_OK:
            raise ChallengeFailed(
                f"The webhook URL answered the challenge with HTTP {status}"
                f"{' (redirects are not followed)' if 300 <= status < 400 else ''}. {how}"
            )
        if bytes(body).decode("utf-8", errors="replace").strip() != token:
            raise ChallengeFailed(
                f"The webhook URL answered HTTP 200 but its body was not the challenge value. {how}"
            )


def _elapsed_ms(t0: float) -> int:
    return round((time.perf_counter() - t0) * 1000)
