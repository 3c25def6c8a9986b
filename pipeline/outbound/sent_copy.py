"""The Sent copy of a sent message: appended to the account's Sent folder with ``\\Seen``
(and a ``Bcc`` header, which the recipients' copy never has), then fetched and stored like
synced mail, so the send answers with its id; for a provider that files sent mail itself
(``stores_sent_mail``), found in Sent by Message-ID within :data:`SENT_SEARCH_WAIT_S` instead.
A failed copy never fails the send (the mail went out): the row waits for a later drain's try
(:meth:`~pipeline.outbound.outbox.OutboxRepository.filing_failed`), up to its limit.

A drain (:mod:`pipeline.outbound.deliver`) files each copy right after its send, and first
the copies earlier tries left (:func:`file_waiting`).
"""

from __future__ import annotations

import email.policy
import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from pipeline import notifications
from pipeline.config import Settings
from pipeline.errors import ImapError, PipelineError
from pipeline.imap import ImapSession
from pipeline.limits import RateLimited
from pipeline.messages.metadata import store_metadata
from pipeline.messages.roles import DRAFTS_ROLE, SENT_ROLE, folder_with_role
from pipeline.messages.views import stored_message_view, stored_message_views
from pipeline.models import Folder, Grant
from pipeline.outbound.drains import DrainResult, MailAccess
from pipeline.outbound.outbox import OutboxRepository
from pipeline.presets import preset
from pipeline.sync.store import parse_batch, write_batch

log = logging.getLogger(__name__)

SENT_SEARCH_WAIT_S = 10.0  # a provider that files sent mail itself has it in Sent by then
SENT_SEARCH_EVERY_S = 0.5
SENT_COPY_WAIT_S = 15.0  # the Sent copy waits this long at most for an IMAP login or slot
MAX_FILINGS_PER_DRAIN = 100  # Sent copies left by earlier tries that one drain files at most
COPY_POLL_S = 1.0  # how often a Sent copy waiting for a login or slot asks again


def with_bcc(raw: bytes, bcc: list[dict[str, str]]) -> bytes:
    """The message with a ``Bcc`` header on top (for the sender's own copy only)."""
    if not bcc:
        return raw
    from email.utils import formataddr

    value = ", ".join(formataddr((b.get("name") or "", b["email"])) for b in bcc)
    header: str = email.policy.SMTP.fold("Bcc", value)
    return header.encode("ascii", "replace") + raw


def file_waiting(
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
            row = OutboxRepository(db).claim_unfiled(
                grant.id, holder, settings.outbound.outbox_lease_s
            )
            db.commit()
        if row is None:
            break
        imap = file_in_sent(sessions, grant, row, access, imap, result)
        if imap is None:
            break
    return imap


def file_in_sent(
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
            sent = folder_with_role(db, grant.id, SENT_ROLE)
            if sent is not None:
                if imap is None:
                    imap = _imap_when_allowed(db, grant, access)
                stored = _store_copy(db, grant, sent, row, imap)
            if row.use_draft and row.send_at is not None and imap is not None:
                _remove_from_drafts(db, grant, row, imap)
            OutboxRepository(db).filed(row.id, stored)
            notifications.send_result(db, row, message=stored_message_view(db, stored))
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
                notifications.send_result(db, row)
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
    drafts = folder_with_role(db, grant.id, DRAFTS_ROLE)
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
            time.sleep(min(max(exc.retry_after_s, 0.1), COPY_POLL_S))


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
    notifications.messages(
        db, grant.id, "message.created", stored_message_views(db, result.new_message_ids)
    )
    return ids[0] if ids else None
