"""The IDLE connection of one watched folder: a small state machine on the event loop.

::

                 start()
                    |
                    v
     +-------> WAITING_SLOT --(all of the grant's connection slots taken)--> retry in ~5 s
     |              | slot in imap-pipeline:conn:<grant_id>
     |              |     `--(account or provider in the shared back-off of pipeline.limits:
     |              |         BACKOFF; the login queue longer than LOGIN_TURN_MAX_S:
     |              |         LOGIN_QUEUED)--> slot given back, wait, ask again
     |              | a login token of the account and the provider (pipeline.limits)
     |              v
     |        LOGIN_QUEUED  sleep until the reserved turn (a reconnect wave queues, no polling)
     |              |
     |              v
     |         CONNECTING  greeting, [STARTTLS], LOGIN, ENABLE CONDSTORE/QRESYNC, EXAMINE, all
     |              |   \\      within session_timeout_s however slowly the server answers
     |              |    `--(login refused: NO [AUTHENTICATIONFAILED])--> INVALID (final:
     |              |        the grant is marked invalid once, nobody retries it)
     |              |    `--(throttled: NO [UNAVAILABLE] / [LIMIT], "* BYE Too many
     |              |        connections", also later while idling)--> recorded in the shared
     |              |        back-off (workers see it too), BACKOFF, then as above
     |              |  publish "reconnect" unless the EXAMINE snapshot proves nothing changed
     |              v
     |     IDLE capability? --no--> POLLING: NOOP every poll_interval_s
     |              | yes               |
     |              v                   |
     |          IDLING <---------+      |  EXISTS / EXPUNGE / VANISHED / FETCH
     |              |            |      |  --> publish, stay
     |   renew_s passed: DONE, IDLE (RENEWING)
     |              |                   |
     |    * BYE, EOF, reset, timeout, TLS or protocol error, a broken read bound
     |              v                   v
     +-------- BACKOFF: sleep reconnect_delay(attempt), jittered exponential; ``attempt``
               resets only after a connection stayed up backoff_reset_after_s and did not
               end by breaking a bound (a server that accepts and then drops, floods or
               trickles never gets a reconnect storm)

     stop() in any state: DONE, LOGOUT, slot released --> STOPPED

IDLE is re-issued every ``min(preset.idle_renew_s, IDLE_RENEW_MAX_S)`` minus up to
:data:`RENEW_JITTER_FRACTION` (so 2,000 connections do not renew in the same second). The
DONE/IDLE round trip doubles as a liveness check: a silently dead peer is noticed within one
renewal (and sooner by TCP keep-alive).

A server that breaks a read bound of :mod:`~pipeline.imap.aio` (a flood of untagged
responses, a huge line or literal, an answer not complete by its deadline) costs only its own
connection: ``ImapLimitError`` drops it, :attr:`FolderWatcher.last_error` says which bound, the
watcher backs off, and the other connections of the process never notice.

No database session lives here: the watcher gets a plain :class:`WatchTarget` and a password,
and reports through the callbacks of :class:`WatchContext`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from pydantic import SecretStr

from pipeline.config.listener import ListenerSettings
from pipeline.errors import (
    ImapAuthError,
    ImapError,
    ImapLimitError,
    ImapProtocolError,
    ImapThrottledError,
)
from pipeline.imap.aio import ImapConnection
from pipeline.imap.client import Endpoint
from pipeline.imap.responses import Change, Snapshot, classify, is_throttle
from pipeline.limits import LoginTurn
from pipeline.listener.events import FolderRef
from pipeline.presets import preset

log = logging.getLogger(__name__)

IDLE_RENEW_MAX_S = 28 * 60  # RFC 2177: servers may end IDLE after 29 min; always renew before
RENEW_JITTER_FRACTION = 0.1  # renew up to 10 % early, spread over connections
NO_SLOT_RETRY_S = 5.0  # all connection slots of the account taken: look again this soon
NO_SLOT_DETAIL = (
    "No connection slot for IDLE: the account's cap leaves none for this folder (with a cap "
    "of 2 only the Inbox is watched, see pipeline.limits.slots) or other connections "
    "hold more than the cap allows now; the folder is polled meanwhile."
)
LOGOUT_TIMEOUT_S = 3.0  # DONE + LOGOUT on stop; then the socket is just closed


class WatchState(Enum):
    """Where a watcher is in the diagram above."""

    WAITING_SLOT = "waiting_slot"
    LOGIN_QUEUED = "login_queued"
    CONNECTING = "connecting"
    IDLING = "idling"
    RENEWING = "renewing"
    POLLING = "polling"
    BACKOFF = "backoff"
    INVALID = "invalid"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WatchTarget:
    """One folder to watch (plain values read from Postgres by the listener)."""

    grant_id: str
    folder_id: str
    provider: str
    role: str
    raw_name: str
    endpoint: Endpoint
    baseline: Snapshot | None = None  # what the last sync saw; a match skips a needless sync

    @property
    def ref(self) -> FolderRef:
        """The folder as events name it."""
        return FolderRef(self.grant_id, self.folder_id, self.provider)


@dataclass
class WatchContext:
    """What a watcher needs from its listener; shared by all watchers of a process."""

    settings: ListenerSettings
    publish: Callable[[FolderRef, str], None]
    acquire_slot: Callable[[WatchTarget], Awaitable[bool]]
    release_slot: Callable[[WatchTarget], Awaitable[None]]
    auth_failed: Callable[[WatchTarget, str], Awaitable[None]]
    login_gate: asyncio.Semaphore
    rng: random.Random = field(default_factory=random.Random)
    login_turn: Callable[[WatchTarget], Awaitable[LoginTurn]] | None = None
    """A login token of the account and its provider (shared budget and back-off of
    :mod:`pipeline.limits`); None: log in unpaced."""
    throttled: Callable[[WatchTarget], Awaitable[float]] | None = None
    """Record a throttling answer in the shared back-off; returns its length in seconds."""
    misbehaved: Callable[[WatchTarget], Awaitable[float]] | None = None
    """Put the account alone in the shared back-off after its server broke a bound (workers
    then keep away from it too); returns its length in seconds."""
    recovered: Callable[[WatchTarget], Awaitable[None]] | None = None
    """A login worked after a throttle: the next throttle starts from the base back-off."""
    report: Callable[[WatchTarget, WatchState, str | None, float | None], None] | None = None
    """Publish a connection's state, why it ended (None: it did not) and when it is retried
    (seconds from now), for operators (:mod:`pipeline.listener.status`); never blocks."""


def idle_renew_s(provider: str, rng: random.Random | None = None) -> float:
    """Seconds between IDLE re-issues for ``provider``: under its preset and under 29 min."""
    base = float(min(preset(provider).idle_renew_s, IDLE_RENEW_MAX_S))
    jitter: float = (rng or random.Random()).uniform(0, RENEW_JITTER_FRACTION)
    return base * (1 - jitter)


def reconnect_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Jittered exponential backoff ("equal jitter"): half fixed, half random, capped."""
    ceiling: float = min(max_s, base_s * 2.0 ** min(attempt, 32))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class _Dropped(ImapError):
    """The server said BYE while we were idling."""


class FolderWatcher:
    """Keeps one IDLE (or polling) connection to one folder and publishes its changes."""

    def __init__(
        self,
        target: WatchTarget,
        password: SecretStr,
        ctx: WatchContext,
        guard: Callable[[Endpoint], Endpoint] | None = None,
    ) -> None:
        self.target = target
        self._password = password
        self._ctx = ctx
        # For a server a user named: checks its host again before every connection and pins
        # the endpoint to the checked address (blocking: run in a thread). Raises
        # ImapConnectError for a refused host, which is retried like an unreachable one.
        self._guard = guard
        self.state = WatchState.STOPPED
        self.connects = 0  # successful logins, for tests and the status line
        self.last_error: str | None = None
        self.limit_breaches = 0  # connections dropped for breaking a read bound or deadline
        self.retry_in_s: float | None = None  # the reconnect delay of the current back-off
        self._task: asyncio.Task[None] | None = None
        self._known: Snapshot | None = target.baseline
        self._was_throttled = False  # recorded a throttle since the last successful login
        self._why: str | None = None  # why the last connection ended; None once one works

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start watching in a task on the running loop."""
        if self._task is None or self._task.done():
            self.state = WatchState.WAITING_SLOT
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"watch:{self.target.grant_id}:{self.target.role}"
            )

    async def stop(self) -> None:
        """Stop: DONE + LOGOUT if connected, release the slot. Idempotent."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.state is not WatchState.INVALID:
            self.state = WatchState.STOPPED

    @property
    def running(self) -> bool:
        """Whether the watcher's task is alive."""
        return self._task is not None and not self._task.done()

    # --- the loop -----------------------------------------------------------------------------
    def _log_extra(self) -> dict[str, str]:
        return {"grant_id": self.target.grant_id, "folder_id": self.target.folder_id}

    async def _run(self) -> None:
        """The drawing of the module docstring, one turn of the loop per connection: a slot
        and a login turn, one session (CONNECTING, then IDLING or POLLING), a back-off; until
        stopped (cancelled) or the login is refused (INVALID)."""
        attempt = 0
        slot_wait_reported = False
        while True:
            turn = await self._take_slot()
            if turn is None:  # every connection slot of the grant is taken
                await self._wait_for_slot(report=not slot_wait_reported)
                slot_wait_reported = True  # once per wait: the status is no heartbeat
                continue
            slot_wait_reported = False
            if not turn.granted:
                await self._wait_for_turn(turn)
                continue
            ended = await self._session(turn)
            if ended is None:
                return  # INVALID: final
            up_since, misbehaved = ended
            attempt = await self._back_off(attempt, up_since, misbehaved)

    async def _take_slot(self) -> LoginTurn | None:
        """WAITING_SLOT: a connection slot, then a login turn; None without a slot."""
        self.state = WatchState.WAITING_SLOT
        turn = LoginTurn(granted=True, wait_s=0.0)
        async with self._ctx.login_gate:  # bounds the Redis calls of a reconnect wave too
            got_slot = await self._ctx.acquire_slot(self.target)
            # the slot first: a token taken while all slots are in use would be wasted
            if got_slot and self._ctx.login_turn is not None:
                try:
                    turn = await self._ctx.login_turn(self.target)
                except asyncio.CancelledError:  # stopped while asking: give the slot back
                    await self._ctx.release_slot(self.target)
                    raise
        return turn if got_slot else None

    async def _wait_for_slot(self, *, report: bool) -> None:
        """No slot free: ask again in about :data:`NO_SLOT_RETRY_S`."""
        wait = NO_SLOT_RETRY_S * self._ctx.rng.uniform(0.5, 1.5)
        if report:
            self._report(NO_SLOT_DETAIL, wait)
        await asyncio.sleep(wait)

    async def _wait_for_turn(self, turn: LoginTurn) -> None:
        """No login now: the account or provider is backing off (workers were told to slow
        down too), or the login queue is long. The slot goes back meanwhile."""
        await self._ctx.release_slot(self.target)
        self.state = WatchState.BACKOFF if turn.backing_off else WatchState.LOGIN_QUEUED
        wait = min(turn.wait_s, self._ctx.settings.backoff_max_s) * self._ctx.rng.uniform(1, 1.2)
        self._report(
            (self._why or "The account or its provider is backing off.")
            if turn.backing_off
            else None,
            wait,
        )
        await asyncio.sleep(wait)

    async def _session(self, turn: LoginTurn) -> tuple[float | None, bool] | None:
        """LOGIN_QUEUED, CONNECTING, then IDLING or POLLING until the connection ends; the slot
        is given back. Returns when it came up (loop time; None: it never did) and whether the
        server misbehaved (broke a read bound or a deadline, or spoke no IMAP we can read), or
        None once the login was refused (INVALID)."""
        up_since: float | None = None
        misbehaved = False
        try:
            if turn.wait_s > 0:
                self.state = WatchState.LOGIN_QUEUED
                await asyncio.sleep(turn.wait_s)
            conn = await self._connect()
            up_since = asyncio.get_running_loop().time()
            await self._watch(conn)
        except ImapAuthError as exc:
            await self._invalid(exc)
            return None
        except ImapThrottledError as exc:
            self.last_error = str(exc)
            await self._record_throttle(exc)
        except (ImapProtocolError, ImapLimitError) as exc:  # a limit is no protocol error
            self.last_error = str(exc)
            if isinstance(exc, ImapLimitError):
                self.limit_breaches += 1
                await self._record_misbehaviour()
            misbehaved = True
        except ImapError as exc:  # dropped, timed out, BYE: logged with the back-off
            self.last_error = str(exc)
        except asyncio.CancelledError:
            await self._ctx.release_slot(self.target)
            raise
        except Exception as exc:  # a bug must not end the watch; log it and reconnect
            self.last_error = repr(exc)
            log.exception(
                "unexpected error watching grant=%s folder=%s",
                self.target.grant_id,
                self.target.folder_id,
                extra=self._log_extra(),
            )
        await self._ctx.release_slot(self.target)
        return up_since, misbehaved

    async def _invalid(self, exc: ImapAuthError) -> None:
        """INVALID: the login was refused; the grant is marked invalid once, the slot freed."""
        self.state = WatchState.INVALID
        self.last_error = str(exc)
        self._report(self.last_error)
        log.warning(
            "login refused for grant=%s folder=%s; marking the grant invalid: %s",
            self.target.grant_id,
            self.target.folder_id,
            exc,
            extra=self._log_extra(),
        )
        await self._ctx.release_slot(self.target)
        await self._ctx.auth_failed(self.target, str(exc))

    async def _back_off(self, attempt: int, up_since: float | None, misbehaved: bool) -> int:
        """BACKOFF: sleep ``reconnect_delay(attempt)``; returns the next attempt number.

        ``attempt`` starts again only after a connection stayed up ``backoff_reset_after_s``
        and did not misbehave.
        """
        settings = self._ctx.settings
        stayed_up = up_since is not None and (
            asyncio.get_running_loop().time() - up_since >= settings.backoff_reset_after_s
        )
        if stayed_up and not misbehaved:
            attempt = 0
        delay = reconnect_delay(
            attempt, settings.backoff_base_s, settings.backoff_max_s, self._ctx.rng
        )
        attempt += 1
        self.state = WatchState.BACKOFF
        self.retry_in_s = delay
        self._why = self.last_error
        self._report(self.last_error, delay)
        log.log(
            logging.WARNING if misbehaved else logging.INFO,
            "grant=%s folder=%s disconnected%s: %s; reconnecting in %.1f s (attempt %d)",
            self.target.grant_id,
            self.target.folder_id,
            ", the server misbehaved" if misbehaved else "",
            self.last_error,
            delay,
            attempt,
            extra=self._log_extra(),
        )
        await asyncio.sleep(delay)
        self.retry_in_s = None
        return attempt

    def _report(self, error: str | None = None, retry_in_s: float | None = None) -> None:
        if self._ctx.report is not None:
            self._ctx.report(self.target, self.state, error, retry_in_s)

    async def _record_misbehaviour(self) -> None:
        """Put the account in the shared back-off, as workers do when a server breaks a bound."""
        if self._ctx.misbehaved is not None:
            await self._ctx.misbehaved(self.target)
            self._was_throttled = True  # a login that works again restarts its streak

    async def _record_throttle(self, exc: ImapThrottledError) -> None:
        """Put the account in the shared back-off that workers respect, as they would."""
        backoff = await self._ctx.throttled(self.target) if self._ctx.throttled else 0.0
        self._was_throttled = True
        log.warning(
            "grant=%s folder=%s: the server asks us to slow down; the account backs off "
            "%.0f s (listener and workers): %s",
            self.target.grant_id,
            self.target.folder_id,
            backoff,
            exc,
            extra=self._log_extra(),
        )

    async def _connect(self) -> ImapConnection:
        settings = self._ctx.settings
        self.state = WatchState.CONNECTING
        async with self._ctx.login_gate:
            try:
                # one deadline for the whole set-up: a server that answers every step just
                # before its own timeout must not hold a login slot for minutes
                async with asyncio.timeout(settings.session_timeout_s):
                    conn, snapshot = await self._open_and_examine()
            except TimeoutError as exc:
                raise ImapLimitError(
                    "The server did not let us connect, log in and open the folder within "
                    f"{settings.session_timeout_s:.0f} s (a dead or trickling server); "
                    "disconnected.",
                    bound="session deadline",
                    setting="IMAP_PIPELINE_LISTENER_SESSION_TIMEOUT_S",
                ) from exc
        self.connects += 1
        self._why = None
        if self._was_throttled:
            self._was_throttled = False
            if self._ctx.recovered is not None:
                await self._ctx.recovered(self.target)
        changed = not snapshot.proves_unchanged_since(self._known)
        self._known = snapshot
        log.info(
            "watching grant=%s folder=%s (%s)%s",
            self.target.grant_id,
            self.target.folder_id,
            "IDLE" if conn.has("IDLE") else "polling",
            "" if changed else ", unchanged since last seen",
            extra=self._log_extra(),
        )
        if changed:
            self._ctx.publish(self.target.ref, "reconnect")
        self.state = WatchState.IDLING if conn.has("IDLE") else WatchState.POLLING
        self._report()
        return conn

    async def _open_and_examine(self) -> tuple[ImapConnection, Snapshot]:
        settings = self._ctx.settings
        endpoint = self.target.endpoint
        if self._guard is not None:
            endpoint = await asyncio.to_thread(self._guard, endpoint)
        conn = await ImapConnection.open(
            endpoint,
            connect_timeout_s=settings.connect_timeout_s,
            command_timeout_s=settings.command_timeout_s,
            max_untagged=settings.max_untagged,
        )
        try:
            await conn.login(self.target.endpoint.username, self._password.get_secret_value())
            await conn.enable("QRESYNC" if conn.has("QRESYNC") else "CONDSTORE")
            return conn, await conn.examine(self.target.raw_name)
        except BaseException:
            conn.abort()
            raise

    async def _watch(self, conn: ImapConnection) -> None:
        try:
            if conn.has("IDLE"):
                await self._idle(conn)
            else:
                await self._poll(conn)
        except asyncio.CancelledError:
            await asyncio.shield(conn.logout(LOGOUT_TIMEOUT_S))
            raise
        except BaseException:
            conn.abort()
            raise

    async def _idle(self, conn: ImapConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._handle(await conn.idle_start())
            self.state = WatchState.IDLING
            deadline = loop.time() + idle_renew_s(self.target.provider, self._ctx.rng)
            while (remaining := deadline - loop.time()) > 0:
                line = await conn.idle_wait(remaining)
                if line is None:
                    break
                self._handle([line])
            self.state = WatchState.RENEWING
            self._handle(await conn.idle_done())

    async def _poll(self, conn: ImapConnection) -> None:
        while True:
            self.state = WatchState.POLLING
            await asyncio.sleep(self._ctx.settings.poll_interval_s)
            _, untagged, _ = await conn.command("NOOP", check=True)
            self._handle(untagged)

    def _handle(self, lines: list[bytes]) -> None:
        """Publish once for a batch of untagged lines that mean "changed"; raise on BYE."""
        reason: str | None = None
        for line in lines:
            change = classify(line)
            if change is Change.BYE:
                if reason is not None:
                    self._ctx.publish(self.target.ref, reason)
                if is_throttle(line):  # "* BYE Too many connections": not a plain drop
                    raise ImapThrottledError(
                        f"The server ended the session: {line[:120].decode(errors='replace')}"
                    )
                raise _Dropped(
                    f"The server ended the session: {line[:120].decode(errors='replace')}"
                )
            if change is not Change.NONE and reason is None:
                reason = change.value
        if reason is not None:
            self._known = None  # the folder moved on from the last snapshot
            self._ctx.publish(self.target.ref, reason)
