"""Putting a composed send (:mod:`pipeline.outbound.compose`) into the outbox, and following it.

:func:`queue` writes the outbox row (or finds the one its idempotency key names), commits, and
asks a worker to drain the grant's outbox (:mod:`pipeline.outbound.deliver`); a scheduled send
with ``use_draft`` also waits in the account's Drafts folder meanwhile. A caller that waits for
the outcome reads the row again (:func:`current`) until it is :func:`settled`;
:mod:`pipeline.outbound.submit` does that and decides the answer (the send route and sending a
draft call it).

Whoever queues passes a :class:`Sender`: an :class:`~pipeline.grants.interactive.Interactive`
that can also open database sessions and ask for a drain (the API's state is one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from pipeline.errors import ImapError, RequestError
from pipeline.folders.repository import FolderRepository
from pipeline.grants.interactive import Interactive, grant_imap
from pipeline.messages.roles import DRAFTS_ROLE
from pipeline.models import Grant
from pipeline.outbound.compose import Outgoing, outbox_row
from pipeline.outbound.outbox import OutboxRepository
from pipeline.outbound.sent_copy import with_bcc

log = logging.getLogger(__name__)

SETTLED_STATES = ("sent", "failed", "cancelled")


class Sender(Interactive, Protocol):
    """What queueing a send needs besides an IMAP session (the Drafts copy)."""

    @property
    def sessions(self) -> sessionmaker[Session]: ...

    @property
    def enqueue_send(self) -> Callable[[str, float | None], None]: ...  # (grant, countdown_s)


def request_drain(sender: Sender, grant_id: str, countdown: float | None) -> None:
    """Ask a worker to drain the grant's outbox (after the commit); never raises: the sweep
    covers a broker that is down."""
    try:
        sender.enqueue_send(grant_id, countdown)
    except Exception as exc:  # any broker/config failure: the sweep sends it
        log.warning("send drain not enqueued (%s); the sweep will", type(exc).__name__)


def queue(
    db: Session, sender: Sender, grant: Grant, out: Outgoing, key: str | None
) -> tuple[Row[Any], bool]:
    """Write the outbox row (or find the one ``key`` names), commit, ask for a drain; the row
    and whether it is new."""
    row, new = OutboxRepository(db).add(outbox_row(grant, out, key, use_draft=out.use_draft))
    db.commit()
    if new:
        if out.send_at is not None and out.use_draft:
            _keep_in_drafts(db, sender, grant, out)
        delay = max(0.0, out.send_at - time.time()) if out.send_at is not None else None
        request_drain(sender, grant.id, delay)
    return row, new


def _keep_in_drafts(db: Session, sender: Sender, grant: Grant, out: Outgoing) -> None:
    """``use_draft``: the scheduled message also waits in the account's Drafts folder (as
    Nylas keeps it on the provider), where the user's mail clients show it. The worker removes
    it once sent; a cancelled send leaves it there. The outbox row is what gets sent: a
    failure here only loses the Drafts copy."""
    drafts = FolderRepository(db).by_role(grant.id, DRAFTS_ROLE)
    if drafts is None:
        return
    try:
        with grant_imap(db, sender, grant, ops=1) as imap:
            imap.append(
                drafts.raw_name,
                with_bcc(out.raw, out.bcc),
                flags=["\\Draft", "\\Seen"],
                when=datetime.now(UTC),
            )
    except (ImapError, RequestError) as exc:
        log.warning(
            "scheduled send not kept in Drafts: %s",
            type(exc).__name__,
            extra={"grant_id": grant.id},
        )


def current(sessions: sessionmaker[Session], grant_id: str, outbox_id: str) -> Row[Any]:
    """The outbox row as it is now (in a session of its own, so each look sees new commits)."""
    with sessions() as db:
        row = OutboxRepository(db).get(grant_id, outbox_id)
    assert row is not None
    return row


def settled(row: Row[Any]) -> bool:
    """Final, and (when sent) the Sent copy done, so the answer can carry its id."""
    if row.state not in SETTLED_STATES:
        return False
    return row.state != "sent" or row.raw is None
