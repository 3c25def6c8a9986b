"""The send outbox: one row per send (immediate or scheduled), the only way mail leaves.

The API composes the message, writes a row and commits; a worker sends it
(:mod:`pipeline.outbound.deliver`). A row's ``state``::

                 cancel (DELETE /messages/schedules/{id}, only while queued)
           +---------------------------------------------------------> cancelled
           |
    queued --claim (lease)--> queued+claimed --before DATA--> sending --250--> sent
      ^                          |                               |
      +---- lease lapsed --------+                               +--refused--> failed
            (nothing was sent: claimed again)                    +--lease lapsed (crash)--> failed

- **queued**: waiting; due when ``send_at`` is null or past. A drain claims it
  (``claimed_by``, ``lease_until``) in a committed transaction; a claim whose lease lapses (the
  worker died) is claimed again, which is safe: nothing of it reached the server yet.
- **sending**: committed right before the message data is handed to the SMTP server (after
  MAIL FROM and RCPT TO were accepted). From here on the message may be on its way.
- **sent** / **failed** / **cancelled**: final (``closed_at`` set; the MIME dropped, for a
  sent row once its Sent copy is filed).

A sent row keeps its MIME until its copy is in the Sent folder. The drain that sent it holds it
(``lease_until``) while it files the copy; a try that fails for a reason that may pass (no IMAP
slot or login token in time, a lost connection, a server error) leaves the row to a later drain
after :data:`FILING_RETRY_S`; one whose drain died is taken up when its lease lapses. After
:data:`MAX_FILING_ATTEMPTS` tries the row is closed without a copy (the answer then carries no
``id``, as for a provider that files sent mail itself). The API answers an immediate send once
the copy is filed, or tried for the last time.

The guarantee is *at most once*: a row is never handed to SMTP twice. The one window where the
engine cannot know the outcome is between the ``sending`` commit and the row's update after
the server's answer to the data (a worker killed there, or a connection lost while the server
answers). Such a row is never sent again: when its lease lapses the sweep closes it as
``failed`` with ``unconfirmed`` in its error, saying the message may have been delivered and
where to look (the Sent folder). A live drain whose connection breaks after the data closes its
row the same way at once. A drain that could not renew its leases for a whole lease (Postgres
out of reach that long) counts as dead: a message it then still delivers shows as such a
failure, never as a second send. Every other failure is certain and says why; a message refused
before the data (sender, recipients, login) was not sent and may be sent again with a new
request (under a new Idempotency-Key: the same key repeats the failure, as Nylas caches
errors too; sending a draft frees the key of a certain failure,
:mod:`pipeline.drafts.service`).

Idempotency: a row carries the request's ``Idempotency-Key`` (unique per grant, as Nylas scopes
it) and a hash of the request; the same key with the same request gives the first request's
answer (``response``), with another request a 409. Keys are honoured for
:data:`IDEMPOTENCY_WINDOW_S` (Nylas: an hour); rows are kept :data:`KEEP_CLOSED_S` after they
close (Nylas keeps scheduled-send details 72 hours), then purged.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from pipeline.models import Base

IDEMPOTENCY_WINDOW_S = 3600  # Nylas: "Keys are ... valid for 1 hour"
KEEP_CLOSED_S = 72 * 3600  # Nylas keeps scheduled-send details 72 hours after the send time
MAX_SCHEDULE_AHEAD_S = 30 * 24 * 3600  # Nylas: send_at at most 30 days ahead
OPEN_STATES = ("queued", "sending")
FILING_RETRY_S = (3.0, 10.0, 30.0, 60.0)  # a failed Sent copy is tried again after these
MAX_FILING_ATTEMPTS = len(FILING_RETRY_S) + 1
FINAL_STATES = ("sent", "failed", "cancelled")

send_outbox = Table(
    "send_outbox",
    Base.metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),  # also the schedule_id
    Column(
        "grant_id",
        UUID(as_uuid=False),
        ForeignKey("grants.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("idempotency_key", String(256)),
    Column("request_hash", String(64), nullable=False),  # sha256 hex of the request
    Column("state", String(16), nullable=False, server_default="queued"),
    Column("send_at", DateTime(timezone=True)),  # null: as soon as possible
    Column("use_draft", Boolean, nullable=False, server_default=false()),
    Column("mail_from", Text, nullable=False),
    Column("recipients", ARRAY(Text), nullable=False),  # the envelope: to + cc + bcc
    Column("bcc", JSONB, nullable=False, server_default="[]"),  # for the Sent copy's header
    Column("message_id_header", Text, nullable=False),
    Column("raw", LargeBinary),  # the MIME as sent (no Bcc header); dropped once closed
    Column("request", JSONB, nullable=False, server_default="{}"),  # the answer's fields
    Column("claimed_by", String(64)),
    Column("lease_until", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("filing_attempts", Integer, nullable=False, server_default="0"),  # the Sent copy
    Column("stored_message_id", String(64)),  # the Sent copy in ``messages``
    Column("error", JSONB),  # {"status", "type", "message"} of a failed send
    Column("response", JSONB),  # the first answer given, repeated for the same key
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("closed_at", DateTime(timezone=True)),
    UniqueConstraint("grant_id", "idempotency_key", name="uq_send_outbox_grant_key"),
    Index("ix_send_outbox_closed", "closed_at"),
)
# ix_send_outbox_open (grant_id, send_at) WHERE state IN ('queued', 'sending'): migration 0901
# ix_send_outbox_unfiled (grant_id, lease_until) WHERE state = 'sent' AND raw IS NOT NULL: 0902


def utcnow() -> datetime:
    """Aware UTC now."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class NewSend:
    """What the API writes for one send."""

    grant_id: str
    idempotency_key: str | None
    request_hash: str
    send_at: datetime | None
    use_draft: bool
    mail_from: str
    recipients: list[str]
    bcc: list[dict[str, str]]
    message_id_header: str
    raw: bytes
    request: dict[str, Any]


class OutboxRepository:
    """Every query on ``send_outbox``. Never commits; the caller owns the transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, new: NewSend) -> tuple[Row[Any], bool]:
        """Insert a send, or find the one its idempotency key already names.

        Returns:
            The row, and whether it is new. A key older than :data:`IDEMPOTENCY_WINDOW_S` is
            released from its old row first, so it names the new send.
        """
        new_id = str(uuid.uuid4())
        values = {
            "id": new_id,
            "grant_id": new.grant_id,
            "idempotency_key": new.idempotency_key,
            "request_hash": new.request_hash,
            "send_at": new.send_at,
            "use_draft": new.use_draft,
            "mail_from": new.mail_from,
            "recipients": new.recipients,
            "bcc": new.bcc,
            "message_id_header": new.message_id_header,
            "raw": new.raw,
            "request": new.request,
        }
        if new.idempotency_key is None:
            self.session.execute(insert(send_outbox).values(**values))
            return self.get(new.grant_id, new_id), True  # type: ignore[return-value]
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        for _ in range(2):
            inserted = self.session.execute(
                pg_insert(send_outbox)
                .values(**values)
                .on_conflict_do_nothing(constraint="uq_send_outbox_grant_key")
                .returning(send_outbox.c.id)
            ).scalar()
            if inserted is not None:
                return self.get(new.grant_id, inserted), True  # type: ignore[return-value]
            existing = self.by_key(new.grant_id, new.idempotency_key)
            if existing is None:
                continue  # released meanwhile
            if existing.created_at > utcnow() - timedelta(seconds=IDEMPOTENCY_WINDOW_S):
                return existing, False
            self.session.execute(
                update(send_outbox)
                .where(send_outbox.c.id == existing.id)
                .values(idempotency_key=None)
            )
        raise RuntimeError("idempotency key contended")  # two releases in a row: cannot happen

    def release_key(self, grant_id: str, key: str) -> bool:
        """Free an idempotency key whose send failed for certain (nothing reached the
        recipients), so that the same request may be sent again; True if it was freed."""
        done = self.session.execute(
            update(send_outbox)
            .where(
                send_outbox.c.grant_id == grant_id,
                send_outbox.c.idempotency_key == key,
                send_outbox.c.state.in_(("failed", "cancelled")),
                func.coalesce(send_outbox.c.error["unconfirmed"].astext, "false") != "true",
            )
            .values(idempotency_key=None)
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]

    def get(self, grant_id: str, outbox_id: str) -> Row[Any] | None:
        """One row of the grant."""
        try:
            uuid.UUID(outbox_id)
        except ValueError:
            return None
        return self.session.execute(
            select(send_outbox).where(
                send_outbox.c.id == outbox_id, send_outbox.c.grant_id == grant_id
            )
        ).first()

    def by_key(self, grant_id: str, key: str) -> Row[Any] | None:
        """The row an idempotency key names."""
        return self.session.execute(
            select(send_outbox).where(
                send_outbox.c.grant_id == grant_id, send_outbox.c.idempotency_key == key
            )
        ).first()

    def scheduled(self, grant_id: str, limit: int = 200) -> Sequence[Row[Any]]:
        """The grant's scheduled sends (``send_at`` given), newest first."""
        return self.session.execute(
            select(send_outbox)
            .where(send_outbox.c.grant_id == grant_id, send_outbox.c.send_at.is_not(None))
            .order_by(send_outbox.c.send_at.desc(), send_outbox.c.id)
            .limit(limit)
        ).all()

    def draft_schedules(self, grant_id: str, message_id_headers: list[str]) -> dict[str, Row[Any]]:
        """Open scheduled sends kept in Drafts (``use_draft``), by their Message-ID: the
        schedule of a draft with that Message-ID."""
        if not message_id_headers:
            return {}
        rows = self.session.execute(
            select(send_outbox)
            .where(
                send_outbox.c.grant_id == grant_id,
                send_outbox.c.state.in_(OPEN_STATES),
                send_outbox.c.send_at.is_not(None),
                send_outbox.c.use_draft.is_(True),
                send_outbox.c.message_id_header.in_(message_id_headers),
            )
            .order_by(send_outbox.c.created_at)
        ).all()
        return {r.message_id_header: r for r in rows}

    def cancel(self, grant_id: str, outbox_id: str) -> bool:
        """Cancel a send that has not started (``queued``, even if claimed: the drain checks
        the state again before it sends). False when it is no longer queued."""
        done = self.session.execute(
            update(send_outbox)
            .where(
                send_outbox.c.id == outbox_id,
                send_outbox.c.grant_id == grant_id,
                send_outbox.c.state == "queued",
            )
            .values(state="cancelled", closed_at=utcnow(), raw=None, lease_until=None)
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]

    def claim(self, grant_id: str, holder: str, lease_s: float, limit: int) -> list[Row[Any]]:
        """Claim up to ``limit`` due rows of the grant, oldest first (``SKIP LOCKED``: two
        drains of one grant never claim the same row)."""
        now = utcnow()
        due = (
            select(send_outbox.c.id)
            .where(
                send_outbox.c.grant_id == grant_id,
                *_queued_due(now),
            )
            .order_by(send_outbox.c.created_at, send_outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = self.session.execute(
            update(send_outbox)
            .where(send_outbox.c.id.in_(due.scalar_subquery()))
            .values(
                claimed_by=holder,
                lease_until=now + timedelta(seconds=lease_s),
                attempts=send_outbox.c.attempts + 1,
            )
            .returning(send_outbox)
        ).all()
        return sorted(rows, key=lambda r: (r.created_at, r.id))

    def start_sending(self, outbox_id: str, holder: str, lease_s: float) -> bool:
        """``queued`` (claimed by ``holder``) → ``sending``; False if it was cancelled or
        claimed by another drain meanwhile (then it must not be sent)."""
        done = self.session.execute(
            update(send_outbox)
            .where(
                send_outbox.c.id == outbox_id,
                send_outbox.c.state == "queued",
                send_outbox.c.claimed_by == holder,
            )
            .values(state="sending", lease_until=utcnow() + timedelta(seconds=lease_s))
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]

    def release(self, outbox_id: str, holder: str) -> None:
        """Give a claimed row back unsent (no connection now): the next drain takes it."""
        self.session.execute(
            update(send_outbox)
            .where(
                send_outbox.c.id == outbox_id,
                send_outbox.c.state == "queued",
                send_outbox.c.claimed_by == holder,
            )
            .values(claimed_by=None, lease_until=None)
        )

    def close(
        self,
        outbox_id: str,
        state: str,
        *,
        error: dict[str, Any] | None = None,
        from_states: tuple[str, ...] = OPEN_STATES,
        hold_s: float | None = None,
    ) -> bool:
        """Close a row as ``sent`` or ``failed``; the MIME is kept until the Sent copy is
        made (:meth:`filed`) for ``sent``, dropped otherwise. ``hold_s``: how long the
        closing drain holds a sent row for its Sent copy before another drain may file it."""
        values: dict[str, Any] = {"state": state, "closed_at": utcnow(), "lease_until": None}
        if state == "sent" and hold_s is not None:  # the drain files the Sent copy meanwhile
            values["lease_until"] = utcnow() + timedelta(seconds=hold_s)
        if error is not None:
            values["error"] = error
        if state != "sent":
            values["raw"] = None
        done = self.session.execute(
            update(send_outbox)
            .where(send_outbox.c.id == outbox_id, send_outbox.c.state.in_(from_states))
            .values(**values)
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]

    def filed(self, outbox_id: str, stored_message_id: str | None) -> None:
        """The Sent copy is stored (or could not be): drop the MIME, keep its id."""
        self.session.execute(
            update(send_outbox)
            .where(send_outbox.c.id == outbox_id)
            .values(raw=None, stored_message_id=stored_message_id, lease_until=None)
        )

    def filing_failed(self, outbox_id: str) -> float | None:
        """Count a failed try at the Sent copy and let the row go: the seconds until the next
        try (:data:`FILING_RETRY_S`), or None when that was the last (the caller gives up)."""
        tries = self.session.execute(
            update(send_outbox)
            .where(send_outbox.c.id == outbox_id)
            .values(filing_attempts=send_outbox.c.filing_attempts + 1, claimed_by=None)
            .returning(send_outbox.c.filing_attempts)
        ).scalar_one()
        if tries >= MAX_FILING_ATTEMPTS:
            return None
        wait = FILING_RETRY_S[tries - 1]
        self.session.execute(
            update(send_outbox)
            .where(send_outbox.c.id == outbox_id)
            .values(lease_until=utcnow() + timedelta(seconds=wait))
        )
        return wait

    def claim_unfiled(self, grant_id: str, holder: str, lease_s: float) -> Row[Any] | None:
        """A sent row of the grant whose Sent copy is due (a failed try's wait over, or its
        drain gone), held for ``holder`` for ``lease_s``; None if there is none."""
        now = utcnow()
        due = (
            select(send_outbox.c.id)
            .where(*_unfiled_due(now), send_outbox.c.grant_id == grant_id)
            .order_by(send_outbox.c.closed_at, send_outbox.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        return self.session.execute(
            update(send_outbox)
            .where(send_outbox.c.id.in_(due.scalar_subquery()))
            .values(claimed_by=holder, lease_until=now + timedelta(seconds=lease_s))
            .returning(send_outbox)
        ).first()

    def remember_response(self, outbox_id: str, response: dict[str, Any]) -> dict[str, Any]:
        """Keep the first final answer given for a row; returns the one kept."""
        self.session.execute(
            update(send_outbox)
            .where(send_outbox.c.id == outbox_id, send_outbox.c.response.is_(None))
            .values(response=response)
        )
        kept = self.session.execute(
            select(send_outbox.c.response).where(send_outbox.c.id == outbox_id)
        ).scalar_one()
        return dict(kept)

    def due_grants(self, limit: int = 1000) -> list[str]:
        """Grants with rows to send now (unclaimed or with a lapsed claim), or a Sent copy to
        file now."""
        now = utcnow()
        to_send = (
            select(send_outbox.c.grant_id)
            .where(
                *_queued_due(now),
            )
            .group_by(send_outbox.c.grant_id)
            .limit(limit)
        )
        to_file = (
            select(send_outbox.c.grant_id)
            .where(*_unfiled_due(now))
            .group_by(send_outbox.c.grant_id)
            .limit(limit)
        )
        grants = dict.fromkeys(self.session.execute(to_send).scalars())
        grants.update(dict.fromkeys(self.session.execute(to_file).scalars()))
        return list(grants)[:limit]

    def has_unfiled(self, grant_id: str) -> bool:
        """Whether the grant has a Sent copy to file now that no live drain holds."""
        return (
            self.session.execute(
                select(send_outbox.c.id)
                .where(*_unfiled_due(utcnow()), send_outbox.c.grant_id == grant_id)
                .limit(1)
            ).first()
            is not None
        )

    def has_due(self, grant_id: str) -> bool:
        """Whether the grant has a row to send now that no live drain holds."""
        now = utcnow()
        return (
            self.session.execute(
                select(send_outbox.c.id)
                .where(
                    send_outbox.c.grant_id == grant_id,
                    *_queued_due(now),
                )
                .limit(1)
            ).first()
            is not None
        )

    def stranded(self, limit: int = 100) -> Sequence[Row[Any]]:
        """``sending`` rows whose lease lapsed: their worker died between handing the data to
        the server and recording the answer."""
        return self.session.execute(
            select(send_outbox)
            .where(and_(send_outbox.c.state == "sending", send_outbox.c.lease_until < utcnow()))
            .limit(limit)
        ).all()

    def purge(self, older_than_s: float = KEEP_CLOSED_S, limit: int = 1000) -> int:
        """Delete closed rows older than ``older_than_s``."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        ids = (
            select(send_outbox.c.id)
            .where(send_outbox.c.closed_at < cutoff)
            .limit(limit)
            .scalar_subquery()
        )
        done = self.session.execute(delete(send_outbox).where(send_outbox.c.id.in_(ids)))
        return int(done.rowcount)  # type: ignore[attr-defined]


def _queued_due(now: datetime) -> tuple[Any, ...]:
    """The conditions of a queued row to send now: its time has come and no live drain holds
    it (never claimed, or its claim lapsed)."""
    return (
        send_outbox.c.state == "queued",
        or_(send_outbox.c.send_at.is_(None), send_outbox.c.send_at <= now),
        or_(send_outbox.c.lease_until.is_(None), send_outbox.c.lease_until < now),
    )


def _unfiled_due(now: datetime) -> tuple[Any, ...]:
    """The conditions of a sent row whose Sent copy is to be filed now (the partial index
    ``ix_send_outbox_unfiled`` matches the first two)."""
    return (
        send_outbox.c.state == "sent",
        send_outbox.c.raw.is_not(None),
        or_(send_outbox.c.lease_until.is_(None), send_outbox.c.lease_until < now),
    )
