"""Draining one destination: sign, POST, record, retry later.

Work is per destination, never a shared serial loop: a drain holds the destination's lease (a
row lock-free lease in Postgres, shared by every process), so at most one drainer sends to a
destination at a time, with at most ``per_destination_concurrency`` requests in flight. That is
the per-destination cap: it keeps per-object order, and it bounds what one slow, dead or hostile
destination can take. A drain claims due deliveries, sends them concurrently, records every
attempt and gives the lease back::

          acquire lease ──(busy)──► return (the holder will see our work)
               │
               ├──(no slot in this process)──► release, return deferred (the work waits in
               │                                Postgres; the task asks again a little later)
               ▼
    ┌──► renew lease, claim ≤ limit due deliveries ──(none)──► release ─► re-check ─(due)─┐
    │          │                                                                         │
    │          ▼                                                                         │
    │    SSRF check, sign, POST concurrently (no transaction open; each POST has a total  │
    │          │                              deadline, see ``sender``)                  │
    │          ▼                                                                         │
    └── record attempts; delivered | retry at now+backoff | given up; destination health  │
               ▲                                                                         │
               └─────────────────────────────────────────────────────────────────────────┘

Drains are coroutines: the Celery worker runs many of them at once on each process's event
loop (``workers.tasks.webhooks``), so a destination that hangs or trickles costs its own drain
and connections, never a worker process. :class:`DrainSlots` caps the drains of one process,
and gives destinations that are not healthy at most half of them, so healthy destinations
always find room however many others fail.

Pipelining: while a batch is in flight the drain claims the next one (a claimed delivery is
not due again while in flight, and a later change to the same object waits behind it), so the
database work of one batch overlaps the HTTP of the other.

Batch sizes: a drain starts with one round (``per_destination_concurrency`` deliveries) and
grows to ``batch_size`` only after a round that all went through quickly; while a destination
fails or crawls (a batch slower than ``SLOW_BATCH_S``) it stays at one round. So a destination
that suddenly hangs costs one round of deadlines before it is ``failing``. A drain stops
claiming after ``drain_budget_s`` and reports ``more_due`` so its task re-queues it.

Transactions: the caller passes a unit-of-work factory (``session_scope`` bound to the URL); each
step runs in its own short transaction, on a thread of the given executor (the database driver
is synchronous), and no transaction stays open during HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline import metrics
from pipeline.config.webhooks import WebhookSettings
from pipeline.crypto import SecretBox
from pipeline.errors import CryptoError
from pipeline.models import new_id
from pipeline.webhooks import payloads, repository, ssrf
from pipeline.webhooks.errors import InvalidWebhookRequest
from pipeline.webhooks.retry import retry_delay_s
from pipeline.webhooks.sender import AttemptResult, OutgoingRequest, Sender
from pipeline.webhooks.signing import encode, sign

log = logging.getLogger(__name__)

UnitOfWork = Callable[[], AbstractContextManager[Session]]
T = TypeVar("T")

DRAIN_LEASE_MIN_S = 300.0  # renewed every batch; longer than any batch (see _lease_s)
SLOW_BATCH_S = 5.0  # a batch slower than this keeps the next one at a single round
DB_STEP_BOUND_S = 60.0  # what the database steps of one batch may take, for outer bounds
UNHEALTHY_SHARE = 0.5  # of a process's drain slots, at most this share for failing destinations
TEXT_SANITIZE = {0: 0xFFFD}  # Postgres text cannot hold NUL


@dataclass(frozen=True)
class DrainOutcome:
    """What a drain did and what its task should do next."""

    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: bool = False  # another drainer holds the destination, or it is paused/failed
    more_due: bool = False  # the budget ran out with due work left: re-queue now
    next_due_in_s: float | None = None  # a retry falls due then: schedule a drain for it
    status: str | None = None  # the destination's status after the last batch
    deferred: bool = False  # no drain slot was free in this process: ask again shortly


@dataclass(frozen=True)
class _BatchOutcome:
    delivered: int
    failed: int
    status: str | None


class DrainSlots:
    """How many drains one process runs at once; failing destinations get at most a share.

    Used from one event loop only (no locking). A destination counts as unhealthy when its
    status is not ``active`` as the drain starts.

    Args:
        total: drains at once in this process.
        unhealthy_share: the fraction of ``total`` destinations that are not ``active`` may hold.
    """

    def __init__(self, total: int, unhealthy_share: float = UNHEALTHY_SHARE) -> None:
        self.total = total
        self.unhealthy_max = max(1, int(total * unhealthy_share))
        self.in_use = 0
        self.unhealthy_in_use = 0

    def take(self, *, healthy: bool) -> bool:
        """Take a slot if one is free for this kind of destination."""
        if self.in_use >= self.total or (
            not healthy and self.unhealthy_in_use >= self.unhealthy_max
        ):
            return False
        self.in_use += 1
        if not healthy:
            self.unhealthy_in_use += 1
        return True

    def give(self, *, healthy: bool) -> None:
        """Give back a slot taken with :meth:`take`."""
        self.in_use -= 1
        if not healthy:
            self.unhealthy_in_use -= 1


def _clean(text: str | None) -> str | None:
    return None if text is None else text.translate(TEXT_SANITIZE)


class Drainer:
    """Delivers one destination's due notifications (see the module docstring).

    Args:
        uow: opens a session whose transaction commits on exit (``session_scope``).
        settings: delivery settings.
        box: opens the destination's sealed secret.
        sender: the process's HTTP sender (its event loop runs the synchronous :meth:`drain`).
        resolver: DNS resolution for the SSRF check (tests substitute it).
        clock: monotonic clock for the time budget.
        executor: threads for the database steps (None: the event loop's default executor).
        stop: once set, drains stop claiming and finish the batch in flight (shutdown).
    """

    def __init__(
        self,
        uow: UnitOfWork,
        *,
        settings: WebhookSettings,
        box: SecretBox,
        sender: Sender,
        resolver: ssrf.Resolver = ssrf.resolve,
        clock: Callable[[], float] = time.monotonic,
        executor: Executor | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._uow = uow
        self._settings = settings
        self._box = box
        self._sender = sender
        self._resolver = resolver
        self._clock = clock
        self._executor = executor
        self._stop = stop

    # --- bounds -----------------------------------------------------------------------------

    def batch_bound_s(self) -> float:
        """The longest one batch can take: every round of requests hits its deadline."""
        return self._sender.rounds_s(self._settings.batch_size) + DB_STEP_BOUND_S

    def drain_bound_s(self, budget_s: float | None = None) -> float:
        """The longest a drain can take: its claiming budget plus the last two batches (the one
        in flight when the budget ran out and the one claimed meanwhile)."""
        budget = self._settings.drain_budget_s if budget_s is None else budget_s
        return budget + 2 * self.batch_bound_s()

    def _lease_s(self) -> float:
        return max(DRAIN_LEASE_MIN_S, 2 * self.batch_bound_s())

    # --- draining ---------------------------------------------------------------------------

    def drain(self, destination_id: str, *, budget_s: float | None = None) -> DrainOutcome:
        """Send what is due for ``destination_id`` until nothing is due or the budget is spent.

        Synchronous: runs :meth:`drain_async` on the sender's event loop and waits.
        """
        return self._sender.call(
            self.drain_async(destination_id, budget_s=budget_s),
            timeout_s=self.drain_bound_s(budget_s),
        )

    async def _db(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def drain_async(
        self,
        destination_id: str,
        *,
        budget_s: float | None = None,
        slots: DrainSlots | None = None,
    ) -> DrainOutcome:
        """:meth:`drain` as a coroutine; with ``slots``, only if this process has room for it."""
        budget = self._settings.drain_budget_s if budget_s is None else budget_s
        deadline = self._clock() + budget
        token = new_id()
        lease = await self._db(self._acquire, destination_id, token)
        if lease is None:
            return DrainOutcome(skipped=True)
        healthy = lease.status == "active"
        if slots is not None and not slots.take(healthy=healthy):
            await self._db(self._release, destination_id, token)
            return DrainOutcome(deferred=True, status=lease.status)
        try:
            return await self._drain_leased(destination_id, token, lease.status, deadline)
        finally:
            if slots is not None:
                slots.give(healthy=healthy)

    async def _drain_leased(
        self, destination_id: str, token: str, status: str | None, deadline: float
    ) -> DrainOutcome:
        # One round first, whatever the destination's status: a destination that has just
        # started to hang then costs one round of deadlines, not batch_size / concurrency.
        limit = self._settings.per_destination_concurrency
        attempted = delivered = failed = 0
        holding = True
        try:
            step = await self._db(
                self._claim_step, destination_id, token, limit, self._may_claim(deadline), True
            )
            while True:
                lease = step.lease
                holding = lease is not None and bool(step.claimed)
                if lease is None:
                    return DrainOutcome(
                        attempted, delivered, failed, skipped=attempted == 0, status=status
                    )
                status = lease.status
                if not step.claimed:
                    if step.due and self._may_claim(deadline):
                        step = await self._db(
                            self._claim_step, destination_id, token, limit, True, True
                        )
                        continue
                    return DrainOutcome(
                        attempted,
                        delivered,
                        failed,
                        more_due=step.due,
                        next_due_in_s=None if step.due else step.next_in,
                        status=status,
                    )
                results, following, slow = await self._send_claiming_next(
                    destination_id, token, lease, step.claimed, limit, deadline
                )
                try:
                    batch = await self._db(self._record, destination_id, step.claimed, results)
                except IntegrityError:
                    if await self._db(self._exists, destination_id):
                        raise
                    # Deleted while we were sending: nothing is owed to it any more.
                    holding = False
                    return DrainOutcome(attempted, delivered, failed, status=None)
                attempted += len(step.claimed)
                delivered += batch.delivered
                failed += batch.failed
                status = batch.status
                # While a destination fails or crawls, claim one round at a time: it then
                # holds its drain for about one request (at most one deadline) per batch.
                limit = (
                    self._settings.per_destination_concurrency
                    if batch.failed or slow
                    else self._settings.batch_size
                )
                if status not in repository.DELIVERABLE:
                    if following is not None and following.claimed:
                        # Paused or failed while in flight: what we took is not ours to send.
                        await self._db(self._unclaim, following.claimed)
                    return DrainOutcome(attempted, delivered, failed, status=status)
                if following is not None and following.claimed:
                    step = following
                    continue
                step = await self._db(
                    self._claim_step,
                    destination_id,
                    token,
                    limit,
                    self._may_claim(deadline),
                    True,
                )
        finally:
            if holding:
                await self._db(self._release, destination_id, token)

    async def _send_claiming_next(
        self,
        destination_id: str,
        token: str,
        lease: repository.LeasedDestination,
        claimed: list[repository.ClaimedDelivery],
        limit: int,
        deadline: float,
    ) -> tuple[dict[int, AttemptResult], _Step | None, bool]:
        """Send a batch; meanwhile claim the next one (claimed deliveries are not due while in
        flight, so it cannot take these again, nor a later change to the same object). The
        lease stays ours: nothing is released while in flight.

        Returns the batch's results, the next claim (None past the deadline) and whether the
        batch was slow (over :data:`SLOW_BATCH_S`).
        """
        started = self._clock()
        sending = asyncio.ensure_future(self._send(lease, claimed))
        following: _Step | None = None
        try:
            if self._may_claim(deadline):
                following = await self._db(
                    self._claim_step, destination_id, token, limit, True, False
                )
        finally:
            results = await sending
        return results, following, self._clock() - started > SLOW_BATCH_S

    def _may_claim(self, deadline: float) -> bool:
        return self._clock() < deadline and not (self._stop is not None and self._stop.is_set())

    # --- database steps (run on executor threads) --------------------------------------------

    def _acquire(self, destination_id: str, token: str) -> repository.LeasedDestination | None:
        with self._uow() as session:
            return repository.acquire_lease(session, destination_id, token, self._lease_s())

    def _release(self, destination_id: str, token: str) -> None:
        with self._uow() as session:
            repository.release_lease(session, destination_id, token)

    def _claim_step(
        self, destination_id: str, token: str, limit: int, may_claim: bool, release: bool
    ) -> _Step:
        """Renew the lease and claim; with nothing to claim and ``release``, let go and look.

        ``release`` is False while a batch is in flight: the lease must stay ours then.
        """
        claimed: list[repository.ClaimedDelivery] = []
        due = False
        next_in: float | None = None
        with self._uow() as session:
            lease = repository.acquire_lease(session, destination_id, token, self._lease_s())
            if lease is not None:
                if may_claim:
                    claimed = repository.claim_due(
                        session, destination_id, limit, in_flight_s=self._lease_s()
                    )
                if not claimed and release:
                    # Let go, then look again in the same transaction: a drain task that
                    # found the lease taken before this UPDATE left its work to us, and that
                    # work was committed before this SELECT runs.
                    repository.release_lease(session, destination_id, token)
                    due = repository.has_due_work(session, destination_id)
                    next_in = repository.seconds_until_next_due(session, destination_id)
        return _Step(lease, claimed, due, next_in)

    def _unclaim(self, claimed: list[repository.ClaimedDelivery]) -> None:
        with self._uow() as session:
            repository.unclaim(session, [c.delivery_id for c in claimed])

    def _exists(self, destination_id: str) -> bool:
        with self._uow() as session:
            return repository.get_destination(session, destination_id) is not None

    # --- one batch ------------------------------------------------------------------------

    async def _send(
        self, lease: repository.LeasedDestination, claimed: list[repository.ClaimedDelivery]
    ) -> dict[int, AttemptResult]:
        refusal = await self._db(self._refusal, lease)
        secret: str | None = None
        if refusal is None:
            try:
                secret = self._box.open(lease.secret_sealed)
            except CryptoError as exc:
                refusal = ("SecretUnavailable", str(exc))
        if refusal is not None or secret is None:
            error_class, detail = refusal or ("SecretUnavailable", "")
            now = datetime.now(UTC)
            return {
                c.delivery_id: AttemptResult(
                    started_at=now, latency_ms=0, error_class=error_class, error_detail=detail
                )
                for c in claimed
            }
        requests = []
        for c in claimed:
            notification = payloads.build(
                notification_id=c.notification_id,
                type=c.type,
                grant_id=c.grant_id,
                occurred_at=c.occurred_at,
                attempt=c.attempt,
                application_id=self._settings.application_id,
                obj=c.obj,
                data=c.data,
                max_bytes=self._settings.max_payload_bytes,
            )
            wire = encode(notification.body, compressed=lease.compressed_delivery)
            requests.append(
                OutgoingRequest(
                    key=c.delivery_id,
                    url=lease.webhook_url,
                    body=wire.body,
                    signature=sign(secret, wire.body),
                    content_encoding=wire.content_encoding,
                )
            )
        return await self._sender.send_many(requests)

    def _refusal(self, lease: repository.LeasedDestination) -> tuple[str, str] | None:
        try:
            ssrf.check_destination(lease.webhook_url, self._settings, resolver=self._resolver)
        except InvalidWebhookRequest as exc:
            return type(exc).__name__, str(exc)
        return None

    def _record(
        self,
        destination_id: str,
        claimed: list[repository.ClaimedDelivery],
        results: dict[int, AttemptResult],
    ) -> _BatchOutcome:
        ok: list[int] = []
        given_up: list[int] = []
        retries: dict[int, float] = {}
        rows = []
        for c in claimed:
            r = results[c.delivery_id]
            metrics.observe_webhook_attempt(r.status_code, r.error_class, r.latency_ms)
            rows.append(
                {
                    "delivery_id": c.delivery_id,
                    "attempt": c.attempt,
                    "started_at": r.started_at,
                    "status_code": r.status_code,
                    "latency_ms": r.latency_ms,
                    "response_body": _clean(r.response_body),
                    "error_class": r.error_class,
                    "error_detail": _clean(r.error_detail),
                }
            )
            if r.ok:
                ok.append(c.delivery_id)
            elif c.attempt >= self._settings.max_attempts:
                given_up.append(c.delivery_id)
            else:
                retries[c.delivery_id] = retry_delay_s(c.attempt, self._settings)
        with self._uow() as session:
            repository.record_attempts(session, rows)
            repository.mark_delivered(session, ok)
            repository.mark_given_up(session, given_up)
            repository.schedule_retries(session, retries)
            status: str | None
            if ok:
                repository.mark_healthy(session, destination_id)
                status = "active"
            else:
                reason = results[claimed[0].delivery_id].reason()
                status = repository.mark_failing(
                    session,
                    destination_id,
                    self._settings.failed_after_s,
                    reason=_clean(reason) or "failed",
                )
                if status == "failed":
                    repository.abandon_pending(session, [destination_id])
        failed = len(given_up) + len(retries)
        self._log_batch(destination_id, results, ok, given_up, retries, status)
        return _BatchOutcome(delivered=len(ok), failed=failed, status=status)

    def _log_batch(
        self,
        destination_id: str,
        results: dict[int, AttemptResult],
        ok: list[int],
        given_up: list[int],
        retries: dict[int, float],
        status: str | None,
    ) -> None:
        """Warn of failed attempts (with one sample), log a destination that failed for good."""
        failed = len(given_up) + len(retries)
        if failed:
            sample = results[(given_up or list(retries))[0]]
            log.warning(
                "webhook attempts failed destination=%s failed=%d delivered=%d given_up=%d "
                "status=%s error=%s http_status=%s",
                destination_id,
                failed,
                len(ok),
                len(given_up),
                status,
                sample.error_class,
                sample.status_code,
                extra={"destination_id": destination_id},
            )
        if status == "failed":
            log.error(
                "webhook destination failed destination=%s: failing for longer than %.0f s; "
                "pending notifications were given up",
                destination_id,
                self._settings.failed_after_s,
                extra={"destination_id": destination_id},
            )
        log.debug(
            "webhook batch destination=%s delivered=%d failed=%d",
            destination_id,
            len(ok),
            failed,
            extra={"destination_id": destination_id},
        )


@dataclass(frozen=True)
class _Step:
    lease: repository.LeasedDestination | None
    claimed: list[repository.ClaimedDelivery]
    due: bool
    next_in: float | None
