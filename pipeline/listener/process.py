"""One listener process: which grants to watch, leases for them, and a watcher per folder.

::

    every plan_refresh_s:  read valid grants + Inbox/Sent folders from Postgres (read-only)
                           -> drop grants gone or invalid, restart grants whose server,
                              password or folders changed
    every lease_renew_s:   heartbeat (live listeners) -> renew own leases (lost: stop those)
                           -> renew connection slots
                           -> fair share = ceil(grants / live listeners):
                              above it: release the surplus; below it: claim free grants
    on shutdown:           stop every watcher (DONE, LOGOUT), send pending events,
                           release leases, leave the live set

If Redis cannot be reached for so long that this listener's leases may have lapsed, it stops
its watchers (self-fencing) so that two listeners never watch one grant for long; it claims
again when Redis is back. A refused login marks the grant invalid in one short transaction, the
only database write a listener makes, and nobody retries it until the grant is re-authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.config import Settings
from pipeline.config.listener import ListenerSettings
from pipeline.crypto import SecretBox
from pipeline.errors import CryptoError, ServiceError
from pipeline.grants.service import GUARD_KEY, USER_NAMED, endpoint_for, expire_grant, guarded
from pipeline.imap.responses import Snapshot
from pipeline.limits import (
    AsyncConnectionSlots,
    LoginTurn,
    RateLimiter,
    idle_allowed,
    idle_holder,
    shares,
)
from pipeline.listener.events import ChangePublisher, Enqueue
from pipeline.listener.idle import FolderWatcher, WatchContext, WatchState, WatchTarget
from pipeline.listener.leases import LeaseStore, fair_share
from pipeline.listener.repository import WatchRepository
from pipeline.listener.status import StatusBoard
from pipeline.redis import CALL_TIMEOUT_S
from pipeline.redis import client as redis_client

log = logging.getLogger(__name__)

DB_CALL_TIMEOUT_S = 30.0  # reading the plan or marking a grant invalid
SHUTDOWN_TIMEOUT_S = 10.0  # DONE + LOGOUT of every connection, then pending events
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
STATUS_LOG_S = 60.0  # one status line per minute at INFO
STARTUP_JITTER_S = 1.0  # random wait after the first heartbeat, before the first claim
# A login turn is reserved at most this far ahead (pipeline.limits.RateLimiter.reserve_login);
# a longer queue is asked again later. Bounds the budget a listener that dies leaves reserved,
# and so the delay of the listener that takes its grants over (issue: within 30 s). 120 s saved
# a fifth of the listener's CPU in a 1,000-login reconnect (listener_scale: 6.8 -> 5.5 s).
LOGIN_TURN_MAX_S = 30.0


@dataclass(frozen=True)
class GrantPlan:
    """What to watch for one grant, as read from Postgres."""

    grant_id: str
    provider: str
    targets: tuple[WatchTarget, ...]
    secrets_sealed: str = field(repr=False)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Changes when the server, the credentials or the watched folders change."""
        parts = [self.secrets_sealed, self.provider]
        for t in self.targets:
            parts += [t.folder_id, t.role, t.raw_name, repr(t.endpoint)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def load_plan(sessions: sessionmaker[Session], settings: Settings) -> dict[str, GrantPlan]:
    """Valid grants and their Inbox/Sent folders, as plain values (blocking; run in a thread)."""
    with sessions() as db:
        rows = WatchRepository(db).watched()
        db.rollback()  # read-only: end the transaction, write nothing
    targets: dict[str, list[WatchTarget]] = {}
    sealed: dict[str, tuple[str, str]] = {}
    for row in rows:
        sealed[row.grant_id] = (row.provider, row.secrets_sealed)
        endpoint = endpoint_for(row, settings.imap)
        targets.setdefault(row.grant_id, []).append(
            WatchTarget(
                grant_id=row.grant_id,
                folder_id=row.folder_id,
                provider=row.provider,
                role=row.role,
                raw_name=row.raw_name,
                endpoint=endpoint,
                baseline=Snapshot(row.uidvalidity, row.uidnext, None, row.highestmodseq),
            )
        )
    return {
        gid: GrantPlan(gid, sealed[gid][0], tuple(ts), sealed[gid][1])
        for gid, ts in targets.items()
    }


def default_listener_id() -> str:
    """``host:pid:random``: unique per process, readable in Redis."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class _Held:
    plan: GrantPlan
    watchers: list[FolderWatcher]


class Listener:
    """Watches a fair share of all valid grants until :meth:`run`'s stop event is set."""

    def __init__(
        self,
        settings: Settings,
        listener_settings: ListenerSettings,
        *,
        redis: aioredis.Redis[bytes],
        sessions: sessionmaker[Session],
        enqueue: Enqueue,
        listener_id: str | None = None,
        rng: random.Random | None = None,
        notify: Callable[[], None] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        # The shared login budget and back-off of workers and listeners. RateLimiter speaks sync
        # Redis: every call runs on a thread (asyncio.to_thread), never on the loop.
        self._limiter_client: Redis[bytes] | None = None
        if limiter is None:
            self._limiter_client = redis_client(
                settings.require_redis_url(), timeout_s=CALL_TIMEOUT_S
            )
            limiter = RateLimiter(self._limiter_client)
        self.limiter = limiter
        # called after a commit that wrote notifications (grant.expired): kicks webhook dispatch
        self._notify = notify
        self.lsettings = listener_settings
        self.id = listener_id or default_listener_id()
        self._sessions = sessions
        self._redis = redis
        self._rng = rng or random.Random()
        self.publisher = ChangePublisher(enqueue, debounce_s=listener_settings.debounce_s)
        self.leases = LeaseStore(redis, self.id, lease_ttl_s=listener_settings.lease_ttl_s)
        # IDLE priority in the account's connection manager: reserved slots for Inbox and Sent
        self.slots = AsyncConnectionSlots(redis, ttl_s=listener_settings.conn_slot_ttl_s)
        self.status = StatusBoard(redis, self.id)
        self._box = SecretBox(settings.encryption_key_list)
        self._plan: dict[str, GrantPlan] = {}
        self._held: dict[str, _Held] = {}
        self._invalid: dict[str, str] = {}  # grant id -> fingerprint refused here
        self._slots: set[tuple[str, str]] = set()
        self._slot_waits: set[str] = set()  # holders whose wait for a slot was logged
        self._dropping: set[str] = set()  # grants whose watchers are being stopped
        self._last_renewal: float | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.live_listeners = 0
        self.ready = asyncio.Event()  # set after the first lease round (tests, status)
        self.ctx = WatchContext(
            settings=listener_settings,
            publish=self.publisher.folder_changed,
            acquire_slot=self._acquire_slot,
            release_slot=self._release_slot,
            auth_failed=self._auth_failed,
            login_gate=asyncio.Semaphore(listener_settings.max_concurrent_logins),
            rng=self._rng,
            login_turn=self._login_turn,
            throttled=self._throttled,
            misbehaved=self._misbehaved,
            recovered=self._recovered,
            report=self._report,
        )

    # --- what tests and the status line see ---------------------------------------------------
    @property
    def held(self) -> list[str]:
        """Grant ids this listener holds leases for."""
        return sorted(self._held)

    def watchers(self) -> list[FolderWatcher]:
        """Every folder watcher of this process."""
        return [w for h in self._held.values() for w in h.watchers]

    def states(self) -> dict[WatchState, int]:
        """How many watchers are in each state."""
        counts: dict[WatchState, int] = {}
        for w in self.watchers():
            counts[w.state] = counts.get(w.state, 0) + 1
        return counts

    # --- main loop ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Watch until ``stop`` is set, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        publisher = loop.create_task(self.publisher.run(), name="listener-publisher")
        status = loop.create_task(self.status.run(), name="listener-status")
        log.info("listener %s starting", self.id)
        try:
            # Listeners started together (a deploy) should see each other before claiming, or
            # the first claims everything and hands half of it over a round later.
            with contextlib.suppress(*REDIS_ERRORS):
                await self.leases.heartbeat()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._rng.uniform(0, STARTUP_JITTER_S)):
                    await stop.wait()
            next_plan = next_status = loop.time()
            while not stop.is_set():
                if loop.time() >= next_plan:
                    await self._refresh_plan()
                    next_plan = loop.time() + self.lsettings.plan_refresh_s
                await self._lease_round()
                self.ready.set()
                if loop.time() >= next_status:
                    self._log_status()
                    next_status = loop.time() + STATUS_LOG_S
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.lsettings.lease_renew_s):
                        await stop.wait()
        finally:
            await self._shutdown()
            for task in (publisher, status):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            log.info("listener %s stopped", self.id)

    def _log_status(self) -> None:
        states = ", ".join(f"{n} {s.value}" for s, n in sorted(self.states().items(), key=str))
        stats = self.publisher.stats
        log.info(
            "listener %s: %d of %d grants (%d live listeners); %s; %d changes -> %d sync "
            "requests, %d failed",
            self.id,
            len(self._held),
            len(self._plan),
            self.live_listeners,
            states or "no connections",
            stats.changes,
            stats.enqueued,
            stats.failed,
        )

    async def _refresh_plan(self) -> None:
        try:
            async with asyncio.timeout(DB_CALL_TIMEOUT_S):
                plan = await asyncio.to_thread(load_plan, self._sessions, self.settings)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("could not read grants from Postgres (%s); keeping the last plan", exc)
            return
        self._plan = plan
        for grant_id, fingerprint in list(self._invalid.items()):
            if grant_id not in plan or plan[grant_id].fingerprint != fingerprint:
                del self._invalid[grant_id]
        for grant_id, held in list(self._held.items()):
            new = plan.get(grant_id)
            if new is None:
                log.info("grant=%s is no longer to be watched", grant_id)
                self._spawn(self._drop(grant_id, release=True))
            elif new.fingerprint != held.plan.fingerprint:
                log.info("grant=%s changed (server, password or folders); restarting", grant_id)
                await self._drop(grant_id, release=False)
                self._start(new)

    async def _lease_round(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.live_listeners = await self.leases.heartbeat()
            lost = await self.leases.renew(list(self._held))
            self._last_renewal = loop.time()
        except REDIS_ERRORS as exc:
            log.warning("listener %s cannot reach Redis (%s)", self.id, type(exc).__name__)
            self._fence_if_lapsed(loop.time())
            return
        for grant_id in lost:
            log.warning("lease of grant=%s was lost to another listener; stopping", grant_id)
            self._spawn(self._drop(grant_id, release=False))
        with contextlib.suppress(*REDIS_ERRORS):
            await self.slots.renew(sorted(self._slots))
        eligible = [g for g in self._plan if g not in self._invalid]
        share = fair_share(len(eligible), self.live_listeners)
        surplus = len(self._held) - share
        if surplus > 0:
            for grant_id in self._rng.sample(sorted(self._held), surplus):
                self._spawn(self._drop(grant_id, release=True))
            log.info("listener %s released %d grants (fair share %d)", self.id, surplus, share)
        elif surplus < 0:
            candidates = [g for g in eligible if g not in self._held and g not in self._dropping]
            self._rng.shuffle(candidates)
            try:
                won = await self.leases.claim(candidates, -surplus)
            except REDIS_ERRORS as exc:
                log.warning("claiming grants failed (%s)", type(exc).__name__)
                return
            for grant_id in won:
                plan = self._plan.get(grant_id)
                if plan is not None:
                    self._start(plan)
            if won:
                log.info("listener %s claimed %d grants (fair share %d)", self.id, len(won), share)

    def _fence_if_lapsed(self, now: float) -> None:
        if self._last_renewal is None or not self._held:
            return
        if now - self._last_renewal >= self.lsettings.lease_ttl_s - self.lsettings.lease_renew_s:
            log.error(
                "listener %s could not renew its leases for %.0f s; stopping %d grants so that "
                "no grant is watched twice",
                self.id,
                now - self._last_renewal,
                len(self._held),
            )
            for grant_id in list(self._held):
                self._spawn(self._drop(grant_id, release=False))

    # --- grants -------------------------------------------------------------------------------
    def _start(self, plan: GrantPlan) -> None:
        try:
            secrets = self._box.open_json(plan.secrets_sealed)
            password = secrets["imap_password"]
        except (CryptoError, KeyError, ValueError) as exc:
            log.error(
                "grant=%s: cannot decrypt its password (%s); not watching it", plan.grant_id, exc
            )
            self._invalid[plan.grant_id] = plan.fingerprint
            self._spawn(self.leases.release([plan.grant_id]))
            return
        secret = SecretStr(password)
        # A server a user named is checked again at every connection, as the workers and the
        # API do: a name that turned internal after the grant was made is never connected to.
        guard = (
            functools.partial(guarded, policy=self.settings.mail_address_policy)
            if secrets.get(GUARD_KEY) == USER_NAMED
            else None
        )
        watchers = [FolderWatcher(t, secret, self.ctx, guard) for t in plan.targets]
        self._held[plan.grant_id] = _Held(plan, watchers)
        for watcher in watchers:
            watcher.start()

    async def _drop(self, grant_id: str, *, release: bool) -> None:
        held = self._held.pop(grant_id, None)
        self._dropping.add(grant_id)  # not claimable again until its lease is given back
        try:
            if held is not None:
                await asyncio.gather(*(w.stop() for w in held.watchers))
                self._slot_waits -= {idle_holder(self.id, t.folder_id) for t in held.plan.targets}
            self.publisher.forget(grant_id)
            # A lease lost to another listener keeps its status: the new owner overwrites it.
            # A released one loses it, written before the lease goes (a successor reports).
            if release:
                self.status.forget(grant_id)
                await self.status.flush()
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.leases.release([grant_id])
        finally:
            self._dropping.discard(grant_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _auth_failed(self, target: WatchTarget, message: str) -> None:
        held = self._held.get(target.grant_id)
        if held is None or target.grant_id in self._invalid:
            return
        self._invalid[target.grant_id] = held.plan.fingerprint
        # The caller is one of the grant's watchers: stop the grant from a separate task.
        self._spawn(self._invalidate(target.grant_id, message))

    async def _invalidate(self, grant_id: str, message: str) -> None:
        await self._drop(grant_id, release=True)
        try:
            async with asyncio.timeout(DB_CALL_TIMEOUT_S):
                await asyncio.to_thread(self._mark_invalid, grant_id, message)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.error("could not mark grant=%s invalid (%s)", grant_id, exc)
            return
        log.warning("grant=%s marked invalid after a refused login", grant_id)

    def _mark_invalid(self, grant_id: str, message: str) -> None:
        with self._sessions() as db:
            expired = expire_grant(db, grant_id, message)
            db.commit()
        if expired and self._notify is not None:
            self._notify()

    # --- connection slots ---------------------------------------------------------------------
    async def _acquire_slot(self, target: WatchTarget) -> bool:
        holder = idle_holder(self.id, target.folder_id)
        cap = await self.slots.cap(target.provider)
        try:
            ok = idle_allowed(target.role, cap) and await self.slots.acquire(
                target.grant_id, holder, cap
            )
        except REDIS_ERRORS as exc:
            # Fail open: watching matters more than the cap while Redis is briefly away.
            log.warning(
                "grant=%s: connection slot unknown (%s)", target.grant_id, type(exc).__name__
            )
            return True
        if ok:
            self._slots.add((target.grant_id, holder))
            self._slot_waits.discard(holder)
        elif holder not in self._slot_waits:  # once per wait, not every retry
            self._slot_waits.add(holder)
            log.info(
                "grant=%s folder=%s: no connection slot for IDLE (cap %d, %d reserved for "
                "IDLE); waiting",
                target.grant_id,
                target.folder_id,
                cap,
                shares(cap).idle,
            )
        return ok

    # --- shared login budget and back-off (pipeline.limits) ----------------------------------
    async def _login_turn(self, target: WatchTarget) -> LoginTurn:
        """A login token of the account and the provider, reserved up to LOGIN_TURN_MAX_S ahead
        (none while either backs off). Fails open: Redis away must not stop watching."""
        reserve = functools.partial(
            self.limiter.reserve_login,
            target.provider,
            target.endpoint.host,
            target.grant_id,
            max_wait_s=LOGIN_TURN_MAX_S,
        )
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S * 2):
                return await asyncio.to_thread(reserve)
        except (ServiceError, TimeoutError) as exc:
            log.warning("grant=%s: login budget unknown (%s)", target.grant_id, exc)
            return LoginTurn(granted=True, wait_s=0.0)

    async def _throttled(self, target: WatchTarget) -> float:
        """Record a throttling answer as workers do; the account's back-off in seconds."""
        record = functools.partial(
            self.limiter.throttled, target.provider, target.endpoint.host, target.grant_id
        )
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S * 2):
                return await asyncio.to_thread(record)
        except (ServiceError, TimeoutError) as exc:
            log.warning("grant=%s: could not record a throttle (%s)", target.grant_id, exc)
            return 0.0

    async def _misbehaved(self, target: WatchTarget) -> float:
        """The account alone backs off (its server broke a bound), as workers would do."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S * 2):
                return await asyncio.to_thread(self.limiter.misbehaved, target.grant_id)
        except (ServiceError, TimeoutError) as exc:
            log.warning("grant=%s: could not record its back-off (%s)", target.grant_id, exc)
            return 0.0

    async def _recovered(self, target: WatchTarget) -> None:
        with contextlib.suppress(ServiceError, TimeoutError):
            async with asyncio.timeout(CALL_TIMEOUT_S * 2):
                await asyncio.to_thread(self.limiter.recovered, target.grant_id)

    def _report(
        self, target: WatchTarget, state: WatchState, error: str | None, retry_in_s: float | None
    ) -> None:
        self.status.report(target.grant_id, target.folder_id, state.value, error, retry_in_s)

    async def _release_slot(self, target: WatchTarget) -> None:
        holder = idle_holder(self.id, target.folder_id)
        if (target.grant_id, holder) not in self._slots:
            return
        self._slots.discard((target.grant_id, holder))
        with contextlib.suppress(*REDIS_ERRORS):
            await self.slots.release(target.grant_id, holder)

    # --- shutdown -----------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        held = list(self._held)
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                await asyncio.gather(
                    *(self._drop(g, release=False) for g in held),
                    *self._background,  # drops already under way finish, releasing leases
                    return_exceptions=True,
                )
        except TimeoutError:
            log.warning("listener %s: some connections did not log out in time", self.id)
        await self.publisher.flush(SHUTDOWN_TIMEOUT_S)
        for grant_id in held:  # before the leases go: a successor's reports must stay
            self.status.forget(grant_id)
        await self.status.flush()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.leases.release(held)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.leases.leave()
        for task in list(self._background):
            task.cancel()
        if self._limiter_client is not None:
            self._limiter_client.close()
