"""Draining one destination: sign, POST, record, retry later.

Work is per destination, never a shared serial loop: a drain task holds the destination's lease
(so at most one drainer sends to it, which keeps per-object order and bounds what one slow
destination can take from the workers), claims due deliveries, sends them concurrently
(``per_destination_concurrency``), records every attempt and gives the lease back::

          acquire lease ──(busy)──► return (the holder will see our work)
               │
               ▼
    ┌──► renew lease, claim ≤ batch due deliveries ──(none)──► release ─► re-check ─(due)─┐
    │          │                                                                         │
    │          ▼                                                                         │
    │    SSRF check, sign, POST concurrently (no transaction open)                       │
    │          │                                                                         │
    │          ▼                                                                         │
    └── record attempts; delivered | retry at now+backoff | given up; destination health  │
               ▲                                                                         │
               └─────────────────────────────────────────────────────────────────────────┘

A drain stops claiming after ``drain_budget_s`` and reports ``more_due`` so its task re-queues
itself behind other destinations. While a destination is unhealthy (not ``active``, failing
attempts, or a batch slower than ``SLOW_BATCH_S``), batches shrink to one round of
``per_destination_concurrency`` requests, so a dead or slow destination holds a worker for about
one request timeout per batch. (The first batch after a healthy destination suddenly hangs can
take ``batch_size / per_destination_concurrency`` timeouts; the budget check follows it.)

Transactions: the caller passes a unit-of-work factory (``session_scope`` bound to the URL); each
step runs in its own short transaction and no transaction stays open during HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.crypto import SecretBox
from pipeline.errors import CryptoError
from pipeline.models import new_id
from pipeline.webhooks import payloads, repository, ssrf
from pipeline.webhooks.errors import InvalidWebhookRequest
from pipeline.webhooks.retry import retry_delay_s
from pipeline.webhooks.sender import AttemptResult, OutgoingRequest, Sender
from pipeline.webhooks.settings import WebhookSettings
from pipeline.webhooks.signing import sign

log = logging.getLogger(__name__)

UnitOfWork = Callable[[], AbstractContextManager[Session]]

DRAIN_LEASE_S = 300.0  # > worst-case batch (one round of timeouts); renewed every batch
SLOW_BATCH_S = 5.0  # a batch slower than this shrinks the next one to a single round
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


@dataclass(frozen=True)
class _BatchOutcome:
    delivered: int
    failed: int
    status: str | None


def _clean(text: str | None) -> str | None:
    return None if text is None else text.translate(TEXT_SANITIZE)


class Drainer:
    """Delivers one destination's due notifications (see the module docstring).

    Args:
        uow: opens a session whose transaction commits on exit (``session_scope``).
        settings: delivery settings.
        box: opens the destination's sealed secret.
        sender: the process's HTTP sender.
        resolver: DNS resolution for the SSRF check (tests substitute it).
        clock: monotonic clock for the time budget.
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
    ) -> None:
        self._uow = uow
        self._settings = settings
        self._box = box
        self._sender = sender
        self._resolver = resolver
        self._clock = clock

    def drain(self, destination_id: str, *, budget_s: float | None = None) -> DrainOutcome:
        """Send what is due for ``destination_id`` until nothing is due or the budget is spent."""
        budget = self._settings.drain_budget_s if budget_s is None else budget_s
        deadline = self._clock() + budget
        token = new_id()
        limit = self._settings.batch_size
        attempted = delivered = failed = 0
        status: str | None = None
        holding = False
        try:
            while True:
                due = False
                next_in: float | None = None
                claimed: list[repository.ClaimedDelivery] = []
                with self._uow() as session:
                    lease = repository.acquire_lease(session, destination_id, token, DRAIN_LEASE_S)
                    if lease is not None:
                        if status is None and lease.status != "active":
                            limit = self._settings.per_destination_concurrency
                        status = lease.status
                        if self._clock() < deadline:
                            claimed = repository.claim_due(session, destination_id, limit)
                        if not claimed:
                            # Let go, then look again in the same transaction: a drain task
                            # that found the lease taken before this UPDATE left its work to
                            # us, and that work was committed before this SELECT runs.
                            repository.release_lease(session, destination_id, token)
                            due = repository.has_due_work(session, destination_id)
                            next_in = repository.seconds_until_next_due(session, destination_id)
                holding = bool(claimed)
                if lease is None:
                    return DrainOutcome(
                        attempted, delivered, failed, skipped=attempted == 0, status=status
                    )
                if not claimed:
                    if due and self._clock() < deadline:
                        continue
                    return DrainOutcome(
                        attempted,
                        delivered,
                        failed,
                        more_due=due,
                        next_due_in_s=None if due else next_in,
                        status=status,
                    )
                started = self._clock()
                results = self._send(lease, claimed)
                slow = self._clock() - started > SLOW_BATCH_S
                try:
                    batch = self._record(destination_id, claimed, results)
                except IntegrityError:
                    if self._exists(destination_id):
                        raise
                    # Deleted while we were sending: nothing is owed to it any more.
                    holding = False
                    return DrainOutcome(attempted, delivered, failed, status=None)
                attempted += len(claimed)
                delivered += batch.delivered
                failed += batch.failed
                status = batch.status
                # While a destination fails or crawls, claim one round at a time: it then
                # holds this worker for about one request (at most one timeout) per batch.
                limit = (
                    self._settings.per_destination_concurrency
                    if batch.failed or slow
                    else self._settings.batch_size
                )
                if status not in repository.DELIVERABLE:
                    return DrainOutcome(attempted, delivered, failed, status=status)
        finally:
            if holding:
                with self._uow() as session:
                    repository.release_lease(session, destination_id, token)

    # --- one batch ------------------------------------------------------------------------

    def _exists(self, destination_id: str) -> bool:
        with self._uow() as session:
            return repository.get_destination(session, destination_id) is not None

    def _send(
        self, lease: repository.LeasedDestination, claimed: list[repository.ClaimedDelivery]
    ) -> dict[int, AttemptResult]:
        refusal = self._refusal(lease)
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
                max_bytes=self._settings.max_payload_bytes,
            )
            requests.append(
                OutgoingRequest(
                    key=c.delivery_id,
                    url=lease.webhook_url,
                    body=notification.body,
                    signature=sign(secret, notification.body),
                )
            )
        return self._sender.post_many(requests)

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
                status = repository.mark_failing(
                    session, destination_id, self._settings.failed_after_s
                )
                if status == "failed":
                    repository.abandon_pending(session, [destination_id])
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
        return _BatchOutcome(delivered=len(ok), failed=failed, status=status)
