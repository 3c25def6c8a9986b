"""Scheduling and sending drafts, and one change of a draft at a time.

A draft's ``send_at`` is a scheduled send of its content in the outbox (:mod:`pipeline.outbound`),
kept in Drafts meanwhile (``use_draft``: the worker removes the draft once the mail went out);
an update makes it again from the new version (:func:`unschedule`, then :func:`schedule`), and
a send now or a delete cancels it. A change of a draft holds its lock (:func:`locked`: a
Postgres advisory lock on the draft's id, in a transaction of its own), so a second change
starts from the server copy and row the first left.

Errors: :class:`DraftBusy` (the API answers 409 ``conflict_error``) when another change holds the
draft too long or its scheduled send has started; :class:`~pipeline.errors.NotFound` and
:class:`~pipeline.errors.InvalidRequest` with the texts the API answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.drafts import repository
from pipeline.drafts.mime import DraftContent, Person
from pipeline.errors import InvalidRequest, NotFound, RequestError
from pipeline.models import Grant, Message
from pipeline.outbound import compose, sending
from pipeline.outbound.outbox import OutboxRepository
from pipeline.outbound.sending import Sender

DRAFT_LOCK_WAIT_S = 60.0  # a change waits this long for another change of the same draft


class DraftBusy(RequestError):
    """Another change of the draft holds it, or its scheduled send has started."""


@contextmanager
def locked(
    sessions: sessionmaker[Session], db: Session, grant: Grant, draft: Message
) -> Iterator[Message]:
    """Hold the draft's lock (a transaction of its own from ``sessions``, which the commits of
    ``db`` do not end) for the block, and give the draft as the last change left it.

    Raises:
        DraftBusy: Another change of this draft held it past ``DRAFT_LOCK_WAIT_S``.
        NotFound: That change removed the draft (sent or deleted).
    """
    with sessions() as lock:
        if not repository.lock_draft(lock, draft.id, DRAFT_LOCK_WAIT_S):
            raise DraftBusy(
                f"Draft {draft.id} is being changed by another request for over "
                f"{DRAFT_LOCK_WAIT_S:g} s; retry when it is done.",
            )
        try:
            db.rollback()  # the request's own reads may predate the change that just ended
            current = repository.get_draft(db, grant.id, draft.id)
            if current is None:
                raise NotFound(f"No draft {draft.id!r} in this grant (sent or deleted).")
            db.refresh(current)
            yield current
        finally:
            lock.rollback()  # lets go of the lock


def send_request(
    db: Session, grant: Grant, content: DraftContent, pairs: dict[str, str] | None = None
) -> tuple[compose.SendRequest, list[tuple[compose.OutgoingAttachment, bytes]]]:
    """The send request of a draft's content (a reply refers to the message it answers)."""
    parent = (
        repository.message_with_header(db, grant.id, content.in_reply_to)
        if content.in_reply_to
        else None
    )

    def people(ps: list[Person]) -> list[dict[str, str]]:
        return [{"email": p.email, "name": p.name} for p in ps]

    try:
        req = compose.SendRequest.model_validate(
            {
                "to": people(content.to),
                "cc": people(content.cc),
                "bcc": people(content.bcc),
                "reply_to": people(content.reply_to),
                "from": [{"email": grant.email, "name": content.from_name}],
                "subject": content.subject,
                "body": content.body,
                "is_plaintext": content.is_plaintext,
                "reply_to_message_id": parent.id if parent is not None else None,
                "custom_headers": [{"name": n, "value": v} for n, v in content.headers],
                "metadata": pairs or None,
            }
        )
        files = [
            (
                compose.OutgoingAttachment(
                    filename=f.filename[:255],
                    content_type=f.content_type,
                    content="",
                    content_id=f.content_id,
                    is_inline=f.inline,
                ),
                f.content,
            )
            for f in content.files
        ]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "draft"
        raise InvalidRequest(f"This draft cannot be sent: {where}: {first['msg']}.") from exc
    return req, files


def scheduled_send(
    db: Session,
    grant: Grant,
    content: DraftContent,
    pairs: dict[str, str] | None,
    send_at: int,
    message_id: str,
) -> compose.Outgoing:
    """The send of a draft's content at ``send_at``, kept in Drafts until then (``use_draft``:
    the worker removes the draft, found by its Message-ID, once the mail went out).

    Raises:
        InvalidRequest: The draft cannot be sent as it is (no recipient, ...).
    """
    req, files = send_request(db, grant, content, pairs)
    req = req.model_copy(update={"send_at": send_at, "use_draft": True})
    return compose.prepare(db, grant, req, files, message_id=message_id)


def unschedule(db: Session, grant: Grant, message_id: str | None) -> int | None:
    """Cancel the draft's open scheduled send; its ``send_at`` (None: it had none).

    Raises:
        DraftBusy: That send has started (it goes as it was; the draft then leaves Drafts).
    """
    if message_id is None:
        return None
    repo = OutboxRepository(db)
    row = repo.draft_schedules(grant.id, [message_id]).get(message_id)
    if row is None:
        return None
    if not repo.cancel(grant.id, row.id):
        raise DraftBusy(
            f"This draft's scheduled send {row.id} has started; it goes out as it was scheduled "
            "and the draft then leaves Drafts.",
        )
    return int(row.send_at.timestamp())


def schedule(db: Session, sender: Sender, grant: Grant, out: compose.Outgoing) -> None:
    """Write the scheduled send of a draft, commit, ask for a drain when it is due."""
    assert out.send_at is not None
    OutboxRepository(db).add(compose.outbox_row(grant, out, None, use_draft=True))
    db.commit()
    sending.request_drain(sender, grant.id, max(0.0, out.send_at - time.time()))
