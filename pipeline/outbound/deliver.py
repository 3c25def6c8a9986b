"""Sending what the outbox holds: one drain per account connection, many messages per login.

A drain (run by the Celery task ``pipeline.outbox.deliver(grant_id)``) takes one of the
account's :data:`~pipeline.config.Settings.smtp_connections_per_account` slots in Redis (none
free: another drain is at work and takes the new rows too), then claims due rows one at a time
(:mod:`pipeline.outbound.outbox`), sends each over one SMTP connection (one login for the whole
burst, taken from the account's login budget), files the copy in Sent and records the outcome.
With nothing left it keeps the connection :data:`~pipeline.config.Settings.smtp_idle_close_s`
for late arrivals, QUITs, lets go of its slot and looks once more (a row committed while it
was letting go is not stranded). A drain works at most ``budget_s``, then says there is more.

A heartbeat thread renews the slot and the leases of the rows the drain holds every
``outbox_lease_s / 3``; a killed worker's slot and rows are free after ``outbox_lease_s``.

The Sent copy: appended with ``\\Seen`` (and a ``Bcc`` header, which the recipients' copy
never has), then fetched and stored like synced mail so the send answers with its id; for a
provider that files sent mail itself (``stores_sent_mail``), found in Sent by Message-ID within
:data:`SENT_SEARCH_WAIT_S` instead. A failed copy never fails the send (the mail went out).

A scheduled send (``send_at``) ends in a webhook, as on Nylas: ``message.send_success`` once
its Sent copy is filed (or could not be), ``message.send_failed`` in the transaction that closes
it as failed (:func:`send_result`).
"""

from __future__ import annotations

import email.policy
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import redis
from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from pipeline import coalesce, notifications
from pipeline.config import Settings
from pipeline.errors import ImapError, PipelineError
from pipeline.grants.service import counting_pool, open_counted_session
from pipeline.imap import ImapSession
from pipeline.imap.connections import INTERACTIVE_WAIT_S
from pipeline.limits import Priority, RateLimited, RateLimiter
from pipeline.messages.metadata import store_metadata
from pipeline.messages.repository import MessageRepository
from pipeline.messages.views import attachment_view, message_view
from pipeline.models import Folder, Grant
from pipeline.outbound.outbox import OutboxRepository, send_outbox, utcnow
from pipeline.outbound.smtp import Aborted, SendError, SmtpConnection
from pipeline.presets import preset
from pipeline.redis import smtp_slot_key
from pipeline.sync.store import parse_batch, write_batch
from pipeline.webhooks.outbox import emit

log = logging.getLogger(__name__)

SENT_SEARCH_WAIT_S = 10.0  # a provider that files sent mail itself has it in Sent by then
SENT_SEARCH_EVERY_S = 0.5
IDLE_POLL_S = 0.1  # how often a lingering drain looks for new rows
LOGIN_WAIT_MAX_S = 30.0  # longest wait for a login token before the rows go back to the queue
LOGIN_POLL_S = 1.0
SENT_COPY_WAIT_S = 15.0  # the Sent copy waits this long at most for an IMAP login or slot
MAX_FILINGS_PER_DRAIN = 100  # Sent copies left by earlier tries that one drain files at most
DEFAULT_BUDGET_S = 60.0  # a drain then ends; the caller enqueues another if rows remain


class MailAccess(Protocol):
    """What a drain needs from the process that runs it."""

    def take_login(self, grant: Grant) -> float:
        """Take a login token of the account; seconds to wait when there is none (0: taken)."""

    def imap(self, db: Session, grant: Grant) -> ImapSession:
        """A logged-in IMAP session of the grant (for the Sent copy)."""

    def release_imap(self, grant_id: str, imap: ImapSession, *, healthy: bool) -> None:
        """Give the session back."""

    def after_commit(self) -> None:
        """Webhook rows were committed (message.created of the Sent copy)."""


@dataclass
class DrainResult:
    """What one drain did."""

    sent: int = 0
    failed: int = 0
    logins: int = 0
    more: bool = False  # due rows remain (budget or login tokens spent): run another drain
    again_in_s: float | None = None  # a Sent copy failed: a drain should try again this soon
    busy: bool = False  # every slot was taken: another drain has the account


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
    lease_s = settings.outbox_lease_s
    deadline = time.monotonic() + budget_s
    while True:
        key = _take_slot(client, grant_id, settings.smtp_connections_per_account, holder, lease_s)
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
        imap = _file_waiting(sessions, settings, grant, access, holder, result)
        while time.monotonic() < deadline:
            if conn is not None and time.monotonic() - conn.used_at > 30 and not conn.alive():
                conn.close()
                conn = None
            if conn is None:
                # a login token first, then rows: a drain waiting for one holds no row
                with sessions() as db:
                    if not OutboxRepository(db).has_due(grant_id):
                        return
                try:
                    conn = _open(settings, grant, access, deadline)
                except SendError as exc:  # the account's server or login: fails the next row
                    with sessions() as db:
                        rows = OutboxRepository(db).claim(
                            grant_id, holder, settings.outbox_lease_s, 1
                        )
                        db.commit()
                    for row in rows:
                        _fail(sessions, row, exc, access)
                        result.failed += 1
                    continue
                if conn is None:  # no login token in time: the rows wait for the next drain
                    result.more = True
                    return
                result.logins += 1
                idle_since = time.monotonic()
            with sessions() as db:
                rows = OutboxRepository(db).claim(grant_id, holder, settings.outbox_lease_s, 1)
                db.commit()
            if not rows:
                if time.monotonic() - idle_since >= settings.smtp_idle_close_s:
                    return
                time.sleep(IDLE_POLL_S)
                continue
            row = rows[0]
            try:
                conn.send(
                    bytes(row.raw),
                    row.mail_from,
                    list(row.recipients),
                    partial(_start_sending, sessions, row.id, holder, settings.outbox_lease_s),
                )
            except Aborted:
                continue
            except SendError as exc:
                _fail(sessions, row, exc, access, unconfirmed=not exc.certain)
                result.failed += 1
                if not exc.certain or exc.status >= 500:
                    conn.close()
                    conn = None
                continue
            with sessions() as db:
                OutboxRepository(db).close(
                    row.id, "sent", from_states=("sending",), hold_s=settings.outbox_lease_s
                )
                db.commit()
            result.sent += 1
            log.info("message sent", extra={"grant_id": grant_id, "outbox_id": row.id})
            imap = _file_in_sent(sessions, grant, row, access, imap, result)
            idle_since = time.monotonic()
    finally:
        if conn is not None:
            conn.close()
        if imap is not None:
            access.release_imap(grant_id, imap, healthy=True)


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
            send_result(db, row, error=error)
        db.commit()
    access.after_commit()
    log.info("send failed: %s", error["type"], extra={"outbox_id": outbox_id})


def send_result(
    db: Session,
    row: Row[Any],
    *,
    message_id: str | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    """Emit ``message.send_success`` (no ``error``) or ``message.send_failed`` for a scheduled
    send (Nylas sends them only for messages sent with ``send_at``), in the caller's
    transaction. The object is the stored Sent copy (``message_id``) or else the message as
    composed, with ``schedule_id``, ``send_at`` and ``use_draft`` (when true); a success's
    object has no ``body``, as Nylas leaves it out (``snippet`` stays)."""
    if row.send_at is None:
        return
    obj: dict[str, Any] | None = None
    if message_id is not None:
        repo = MessageRepository(db)
        folders = repo.current_folder_ids([message_id])
        for message, attachments in repo.with_attachments([message_id]):
            obj = message_view(
                message, folders.get(message.id, []), [attachment_view(a) for a in attachments]
            )
    if obj is None:
        obj = dict(row.request or {})
    obj.update(object="message", grant_id=row.grant_id, schedule_id=row.id)
    obj["send_at"] = int(row.send_at.timestamp())
    if row.use_draft:
        obj["use_draft"] = True
    data: dict[str, Any] = {"grant_id": row.grant_id}
    if error is None:
        obj.pop("body", None)
        type_ = "message.send_success"
    else:
        type_ = "message.send_failed"
        reason = str(error.get("message", "The send failed."))
        data["reason"] = reason
        data["error"] = {
            "type": str(error.get("type", "api_error")),
            "message": reason,
            "status_code": int(error.get("status", 500)),
        }
    emit(db, grant_id=row.grant_id, type=type_, obj=obj, subject_id=row.id, data=data)


def with_bcc(raw: bytes, bcc: list[dict[str, str]]) -> bytes:
    """The message with a ``Bcc`` header on top (for the sender's own copy only)."""
    if not bcc:
        return raw
    from email.utils import formataddr

    value = ", ".join(formataddr((b.get("name") or "", b["email"])) for b in bcc)
    header: str = email.policy.SMTP.fold("Bcc", value)
    return header.encode("ascii", "replace") + raw


def _file_waiting(
    sessions: sessionmaker[Session],
    settings: Settings,
    grant: Grant,
    access: MailAccess,
    holder: str,
    result: DrainResult,
) -> ImapSession | None:
    """File the Sent copies whose earlier try failed (their wait over) or whose drain died,
    oldest first, until one fails again; returns the IMAP session to reuse."""
    imap: ImapSession | None = None
    for _ in range(MAX_FILINGS_PER_DRAIN):
        with sessions() as db:
            row = OutboxRepository(db).claim_unfiled(grant.id, holder, settings.outbox_lease_s)
            db.commit()
        if row is None:
            break
        imap = _file_in_sent(sessions, grant, row, access, imap, result)
        if imap is None:
            break
    return imap


def _file_in_sent(
    sessions: sessionmaker[Session],
    grant: Grant,
    row: Row[Any],
    access: MailAccess,
    imap: ImapSession | None,
    result: DrainResult,
) -> ImapSession | None:
    """Store the Sent copy and record its id on the row; returns the IMAP session to reuse
    (None after a failure). A failure that may pass leaves the row to a later try
    (:meth:`OutboxRepository.filing_failed`); the answer waits for it."""
    stored: str | None = None
    try:
        with sessions() as db:
            sent = db.execute(
                select(Folder).where(Folder.grant_id == grant.id, Folder.role == "sent").limit(1)
            ).scalar_one_or_none()
            if sent is not None:
                if imap is None:
                    imap = _imap_when_allowed(db, grant, access)
                stored = _store_copy(db, grant, sent, row, imap)
            if row.use_draft and row.send_at is not None and imap is not None:
                _remove_from_drafts(db, grant, row, imap)
            OutboxRepository(db).filed(row.id, stored)
            send_result(db, row, message_id=stored)
            db.commit()
        access.after_commit()
        return imap
    except (ImapError, PipelineError, OSError) as exc:
        if imap is not None:
            access.release_imap(grant.id, imap, healthy=False)
        with sessions() as db:
            again = OutboxRepository(db).filing_failed(row.id)
            if again is None:
                OutboxRepository(db).filed(row.id, None)
                send_result(db, row)
            db.commit()
        log.warning(
            "sent, but not filed in Sent (%s): %s: %s",
            "given up" if again is None else f"tried again in {again:g} s",
            type(exc).__name__,
            str(exc)[:300],
            extra={"grant_id": grant.id, "outbox_id": row.id},
        )
        if again is None:
            access.after_commit()
        else:
            result.again_in_s = min(again, result.again_in_s or again)
        return None


def _remove_from_drafts(db: Session, grant: Grant, row: Row[Any], imap: ImapSession) -> None:
    """A ``use_draft`` send went out: its copy in Drafts goes (the sync forgets its row)."""
    drafts = db.execute(
        select(Folder).where(Folder.grant_id == grant.id, Folder.role == "drafts").limit(1)
    ).scalar_one_or_none()
    if drafts is None:
        return
    imap.select(drafts.raw_name, readonly=False)
    uids = imap.search_uids("HEADER", "Message-ID", f'"{row.message_id_header}"')
    if uids:
        imap.expunge_uids(uids)


def _imap_when_allowed(db: Session, grant: Grant, access: MailAccess) -> ImapSession:
    """An IMAP session for the Sent copy, waiting (bounded) while the account's login budget or
    connection cap says not yet.

    Raises:
        RateLimited: still not allowed after :data:`SENT_COPY_WAIT_S`.
    """
    give_up = time.monotonic() + SENT_COPY_WAIT_S
    while True:
        try:
            return access.imap(db, grant)
        except RateLimited as exc:
            if time.monotonic() >= give_up:
                raise
            time.sleep(min(max(exc.retry_after_s, 0.1), LOGIN_POLL_S))


def _store_copy(
    db: Session, grant: Grant, sent: Folder, row: Row[Any], imap: ImapSession
) -> str | None:
    message_id = row.message_id_header
    if not preset(grant.provider).stores_sent_mail:
        imap.append(
            sent.raw_name,
            with_bcc(bytes(row.raw), list(row.bcc)),
            flags=["\\Seen"],
            when=datetime.now(UTC),
        )
    waited = 0.0
    while True:
        info = imap.select(sent.raw_name, readonly=True)
        uids = imap.search_uids("HEADER", "Message-ID", f'"{message_id}"')
        if uids or not preset(grant.provider).stores_sent_mail or waited >= SENT_SEARCH_WAIT_S:
            break
        time.sleep(SENT_SEARCH_EVERY_S)
        waited += SENT_SEARCH_EVERY_S
    if not uids:
        return None
    fetched = list(imap.fetch_messages(uids[-1:]))
    items, failures = parse_batch(fetched)
    result = write_batch(
        db,
        grant_id=grant.id,
        folder_id=sent.id,
        uidvalidity=info.uidvalidity,
        items=items,
        failures=failures,
    )
    ids = result.new_message_ids or result.existing_message_ids
    pairs = (row.request or {}).get("metadata")
    if ids and pairs:  # the send's metadata (checked by the API), before message.created
        store_metadata(db, ids[0], pairs)
    notifications.messages(db, grant.id, "message.created", result.new_message_ids)
    return ids[0] if ids else None


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
                send_result(db, row, error=error)
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
