"""Sending what the outbox holds: one drain per account connection, many messages per login.

A drain (run by the Celery task ``pipeline.outbox.deliver(grant_id)``) takes one of the
account's ``smtp_connections_per_account`` slots in Redis (the settings are
``Settings.outbound``'s; none free: another drain is at work and takes the new rows too), then
claims due rows one at a time (:mod:`pipeline.outbound.outbox`), sends each over one SMTP
connection (one login for the whole burst, taken from the account's login budget), files the
copy in Sent and records the outcome. With nothing left it keeps the connection
``smtp_idle_close_s`` for late arrivals, QUITs, lets go of its slot and looks once more (a row
committed while it was letting go is not stranded). A drain works at most ``budget_s``, then
says there is more.

A heartbeat thread renews the slot and the leases of the rows the drain holds every
``outbox_lease_s / 3``; a killed worker's slot and rows are free after ``outbox_lease_s``.

The Sent copy is filed right after each send (:mod:`pipeline.outbound.sent_copy`); a failed
copy never fails the send.

A scheduled send (``send_at``) ends in a webhook, as on Nylas: ``message.send_success`` once
its Sent copy is filed (or could not be), ``message.send_failed`` in the transaction that closes
it as failed (:func:`pipeline.notifications.send_result`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import redis
from sqlalchemy import and_, or_, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from pipeline import coalesce, notifications
from pipeline.config import Settings
from pipeline.grants.service import counting_pool, open_counted_session
from pipeline.imap import ImapSession
from pipeline.imap.connections import INTERACTIVE_WAIT_S
from pipeline.limits import Priority, RateLimiter
from pipeline.models import Grant
from pipeline.outbound.drains import DrainResult, MailAccess
from pipeline.outbound.outbox import OutboxRepository, send_outbox, utcnow
from pipeline.outbound.sent_copy import file_in_sent, file_waiting
from pipeline.outbound.smtp import Aborted, SendError, SmtpConnection
from pipeline.redis import smtp_slot_key

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.1  # how often a lingering drain looks for new rows
LOGIN_WAIT_MAX_S = 30.0  # longest wait for a login token before the rows go back to the queue
LOGIN_POLL_S = 1.0
DEFAULT_BUDGET_S = 60.0  # a drain then ends; the caller enqueues another if rows remain


def _slot_keys(grant_id: str, cap: int) -> list[str]:
    return [smtp_slot_key(grant_id, i) for i in range(cap)]


class _Heartbeat:
    """Renews the slot in Redis and the drain's row leases in Postgres while the drain runs."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        sessions: sessionmaker[Session],
        key: str,
        holder: str,
        lease_s: float,
    ) -> None:
        self._client, self._sessions = client, sessions
        self._key, self._holder, self._lease_s = key, holder, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._lease_s)

    def _run(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                coalesce.renew_held(self._client, self._key, self._holder, self._lease_s)
                with self._sessions() as db:
                    db.execute(
                        update(send_outbox)
                        .where(
                            send_outbox.c.claimed_by == self._holder,
                            or_(
                                send_outbox.c.state.in_(("queued", "sending")),
                                and_(  # a Sent copy this drain is filing
                                    send_outbox.c.state == "sent",
                                    send_outbox.c.raw.is_not(None),
                                ),
                            ),
                            send_outbox.c.lease_until.is_not(None),
                        )
                        .values(lease_until=_lease_end(self._lease_s))
                    )
                    db.commit()
            except Exception as exc:  # a missed beat shortens the lease; the next one renews
                log.warning("outbox heartbeat failed (%s)", type(exc).__name__)


def _lease_end(lease_s: float) -> datetime:
    from datetime import timedelta

    return utcnow() + timedelta(seconds=lease_s)


def _take_slot(
    client: redis.Redis[bytes], grant_id: str, cap: int, holder: str, lease_s: float
) -> str | None:
    for key in _slot_keys(grant_id, cap):
        if coalesce.acquire(client, key, holder, lease_s):
            return key
    return None


def drain(
    sessions: sessionmaker[Session],
    settings: Settings,
    client: redis.Redis[bytes],
    grant_id: str,
    access: MailAccess,
    *,
    budget_s: float = DEFAULT_BUDGET_S,
) -> DrainResult:
    """Send the grant's due rows (see the module docstring). Safe to run any number of times
    at once: the slots bound the connections, ``SKIP LOCKED`` claims keep rows apart."""
    result = DrainResult()
    holder = f"{uuid.uuid4().hex[:16]}"
    lease_s = settings.outbound.outbox_lease_s
    deadline = time.monotonic() + budget_s
    while True:
        key = _take_slot(
            client, grant_id, settings.outbound.smtp_connections_per_account, holder, lease_s
        )
        if key is None:
            result.busy = True
            return result
        try:
            with _Heartbeat(client, sessions, key, holder, lease_s):
                _drain_with_slot(sessions, settings, grant_id, access, holder, deadline, result)
        finally:
            coalesce.release(client, [key], holder)
        if result.more:  # out of login tokens: the next drain comes with a countdown
            return result
        with sessions() as db:
            repo = OutboxRepository(db)
            due = repo.has_due(grant_id) or repo.has_unfiled(grant_id)
        if not due:
            return result
        if time.monotonic() >= deadline:
            result.more = True
            return result


def _drain_with_slot(
    sessions: sessionmaker[Session],
    settings: Settings,
    grant_id: str,
    access: MailAccess,
    holder: str,
    deadline: float,
    result: DrainResult,
) -> None:
    conn: SmtpConnection | None = None
    imap: ImapSession | None = None
    idle_since = time.monotonic()
    try:
        with sessions() as db:
            grant = db.get(Grant, grant_id)
            if grant is None:
                return
            db.expunge(grant)
        imap = file_waiting(sessions, settings, grant, access, holder, result)
        while time.monotonic() < deadline:
            if conn is not None and time.monotonic() - conn.used_at > 30 and not conn.alive():
                conn.close()
                conn = None
            if conn is None:
                conn, go_on = _connect(sessions, settings, grant, access, holder, deadline, result)
                if conn is None:
                    if go_on:
                        continue
                    return
                idle_since = time.monotonic()
            with sessions() as db:
                rows = OutboxRepository(db).claim(
                    grant_id, holder, settings.outbound.outbox_lease_s, 1
                )
                db.commit()
            if not rows:
                if time.monotonic() - idle_since >= settings.outbound.smtp_idle_close_s:
                    return
                time.sleep(IDLE_POLL_S)
                continue
            sent, keep = _send_row(sessions, settings, conn, rows[0], access, holder, result)
            if not keep:
                conn.close()
                conn = None
            if sent:
                imap = file_in_sent(sessions, grant, rows[0], access, imap, result)
                idle_since = time.monotonic()
    finally:
        if conn is not None:
            conn.close()
        if imap is not None:
            access.release_imap(grant_id, imap, healthy=True)


def _connect(
    sessions: sessionmaker[Session],
    settings: Settings,
    grant: Grant,
    access: MailAccess,
    holder: str,
    deadline: float,
    result: DrainResult,
) -> tuple[SmtpConnection | None, bool]:
    """A logged-in connection for the due rows, and whether the drain goes on without one.

    No row due: (None, False). The account's server or login refused: the next row fails with
    the reason, (None, True). No login token in time: the rows wait for the next drain,
    (None, False) with ``result.more``.
    """
    # a login token first, then rows: a drain waiting for one holds no row
    with sessions() as db:
        if not OutboxRepository(db).has_due(grant.id):
            return None, False
    try:
        conn = _open(settings, grant, access, deadline)
    except SendError as exc:
        with sessions() as db:
            rows = OutboxRepository(db).claim(grant.id, holder, settings.outbound.outbox_lease_s, 1)
            db.commit()
        for row in rows:
            _fail(sessions, row, exc, access)
            result.failed += 1
        return None, True
    if conn is None:
        result.more = True
        return None, False
    result.logins += 1
    return conn, True


def _send_row(
    sessions: sessionmaker[Session],
    settings: Settings,
    conn: SmtpConnection,
    row: Row[Any],
    access: MailAccess,
    holder: str,
    result: DrainResult,
) -> tuple[bool, bool]:
    """Send one claimed row over ``conn`` and record the outcome: (sent, connection still good)."""
    try:
        conn.send(
            bytes(row.raw),
            row.mail_from,
            list(row.recipients),
            partial(_start_sending, sessions, row.id, holder, settings.outbound.outbox_lease_s),
        )
    except Aborted:
        return False, True
    except SendError as exc:
        _fail(sessions, row, exc, access, unconfirmed=not exc.certain)
        result.failed += 1
        return False, exc.certain and exc.status < 500
    with sessions() as db:
        OutboxRepository(db).close(
            row.id, "sent", from_states=("sending",), hold_s=settings.outbound.outbox_lease_s
        )
        db.commit()
    result.sent += 1
    log.info("message sent", extra={"grant_id": row.grant_id, "outbox_id": row.id})
    return True, True


def _open(
    settings: Settings, grant: Grant, access: MailAccess, deadline: float
) -> SmtpConnection | None:
    """A new connection after a login token; None if no token comes in time.

    Raises:
        SendError: the connection or the login failed.
    """
    give_up = min(time.monotonic() + LOGIN_WAIT_MAX_S, deadline)
    while True:
        wait = access.take_login(grant)
        if wait <= 0:
            return SmtpConnection.open(grant, settings)
        if time.monotonic() >= give_up:
            return None
        # asked again each second: a budget an operator raises meanwhile is used at once
        time.sleep(min(wait, LOGIN_POLL_S, max(0.0, give_up - time.monotonic())))


def _start_sending(
    sessions: sessionmaker[Session], outbox_id: str, holder: str, lease_s: float
) -> bool:
    with sessions() as db:
        ok = OutboxRepository(db).start_sending(outbox_id, holder, lease_s)
        db.commit()
    return ok


def _fail(
    sessions: sessionmaker[Session],
    row: Row[Any],
    exc: SendError,
    access: MailAccess,
    *,
    unconfirmed: bool = False,
) -> None:
    outbox_id = row.id
    error = exc.as_dict()
    if unconfirmed:
        error["unconfirmed"] = True
        error["message"] = (
            f"{exc} The server may have taken the message before the connection was lost; it "
            "is not sent again (it would arrive twice). Look for it in the Sent folder."
        )
    with sessions() as db:
        if OutboxRepository(db).close(outbox_id, "failed", error=error):
            notifications.send_result(db, row, error=error)
        db.commit()
    access.after_commit()
    log.info("send failed: %s", error["type"], extra={"outbox_id": outbox_id})


def close_stranded(sessions: sessionmaker[Session]) -> int:
    """Close ``sending`` rows whose worker died mid-send as failed and unconfirmed (never
    sent again: see :mod:`pipeline.outbound.outbox`)."""
    closed = 0
    with sessions() as db:
        repo = OutboxRepository(db)
        for row in repo.stranded():
            error = {
                "status": 504,
                "type": "provider_error",
                "unconfirmed": True,
                "message": (
                    "The worker sending this message stopped before the SMTP server's answer "
                    "was recorded; the server may have taken it. It is not sent again (it "
                    "would arrive twice). Look for it in the Sent folder."
                ),
            }
            if repo.close(row.id, "failed", error=error, from_states=("sending",)):
                notifications.send_result(db, row, error=error)
                closed += 1
        db.commit()
    return closed


Enqueue = Callable[[str], None]


def sweep(sessions: sessionmaker[Session], enqueue: Enqueue) -> int:
    """What beat runs: close stranded rows, purge old ones, and start a drain for every grant
    with due rows. Returns the number of drains asked for."""
    close_stranded(sessions)
    with sessions() as db:
        repo = OutboxRepository(db)
        repo.purge()
        grants = repo.due_grants()
        db.commit()
    for grant_id in grants:
        enqueue(grant_id)
    return len(grants)


class DirectAccess:
    """:class:`MailAccess` for a process without a worker's pool (the in-process test API,
    benchmarks, tools): with a limiter, the shared login budget, and IMAP sessions that hold an
    INTERACTIVE slot of the account's connection manager like a worker's Sent copy (waiting up
    to ``INTERACTIVE_WAIT_S`` for one), closed after use; without one (no Redis), uncounted."""

    def __init__(
        self,
        settings: Settings,
        limiter: RateLimiter | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self._after_commit = after_commit
        self._pool = counting_pool(limiter, Priority.INTERACTIVE)

    def take_login(self, grant: Grant) -> float:
        """A token of the account's login budget (always, without a limiter)."""
        if self.limiter is None:
            return 0.0
        return self.limiter.try_login(grant.provider, grant.imap_host, grant.id)

    def imap(self, db: Session, grant: Grant) -> ImapSession:
        """A new login holding a slot of the account.

        Raises:
            RateLimited: no slot within ``INTERACTIVE_WAIT_S``.
        """
        return open_counted_session(
            db, self.settings, grant, self._pool, self.limiter, wait_s=INTERACTIVE_WAIT_S
        )

    def release_imap(self, grant_id: str, imap: ImapSession, *, healthy: bool) -> None:
        """Log out (the slot goes with the session)."""
        self._pool.give_back(imap, healthy=healthy)

    def after_commit(self) -> None:
        """Whatever the owner wants after webhook rows were committed."""
        if self._after_commit is not None:
            self._after_commit()
