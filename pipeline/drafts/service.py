"""What each change of a draft does, step by step: create, update, send and remove (the HTTP
routes of :mod:`pipeline.api.drafts` parse a request and render the draft; a task or the CLI
can call these as well).

- :func:`create`: check the request (and, with ``send_at``, that the draft could be sent),
  APPEND it with ``\\Draft`` and store the server's copy (:func:`pipeline.drafts.server.append`),
  then write its scheduled send;
- :func:`update`: check the request, take the draft's lock, replace the server's copy by one
  with the request applied (same Message-ID; :func:`pipeline.drafts.server.replace`), then make
  its scheduled send again from the new version, at the time given or the one it had;
- :func:`send`: take the lock, cancel a scheduled send, read the server's copy, send it
  (:func:`pipeline.outbound.submit.send_now`, one send per version of the draft), then
  expunge the draft;
- :func:`remove`: take the lock, cancel a scheduled send, expunge every copy and forget it.

Update, send and remove of one draft run one at a time
(:func:`pipeline.drafts.scheduling.locked`): the second starts from the server copy and row the
first left.

Errors: :class:`~pipeline.errors.InvalidRequest` and :class:`~pipeline.errors.NotFound` with
the texts the API answers; :class:`SavedNotSendable` (an update saved, its scheduled send
dropped); what :mod:`pipeline.drafts.server`, :mod:`pipeline.drafts.scheduling` and
:func:`pipeline.outbound.submit.send_now` raise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from email.utils import make_msgid
from typing import Any

from sqlalchemy.orm import Session

from pipeline.drafts import scheduling, server
from pipeline.drafts.mime import DraftContent, DraftFile, Person
from pipeline.drafts.schemas import MAX_ATTACHMENTS, MAX_RECIPIENTS, DraftRequest
from pipeline.errors import ImapError, InvalidRequest, NotFound, RequestError
from pipeline.messages import metadata
from pipeline.models import Grant, Message
from pipeline.outbound import compose, submit
from pipeline.outbound.outbox import MAX_SCHEDULE_AHEAD_S, OutboxRepository
from pipeline.outbound.sending import Sender

log = logging.getLogger(__name__)


class SavedNotSendable(RequestError):
    """An update was saved, but the draft cannot be sent as it now is, so its scheduled send
    is cancelled; ``refusal`` is why it cannot be sent (the answer takes its status)."""

    def __init__(self, refusal: RequestError) -> None:
        super().__init__(
            f"The draft was saved, but cannot be sent as it now is ({refusal}); its scheduled "
            "send is cancelled."
        )
        self.refusal = refusal


# --- what a request does to a draft -----------------------------------------------------------


def _people(recipients: list[compose.Recipient]) -> list[Person]:
    return [Person(r.email, r.name or "") for r in recipients]


def applied(
    db: Session,
    grant: Grant,
    base: DraftContent,
    req: DraftRequest,
    files: list[DraftFile] | None,
) -> DraftContent:
    """``base`` with what the request gives (``files`` None: the request leaves the files).

    Raises:
        InvalidRequest: What a draft cannot hold.
        NotFound: An unknown reply target.
    """
    if req.from_ and req.from_[0].email.lower() != grant.email.lower():
        raise InvalidRequest(f"This grant sends as {grant.email}; `from` cannot differ.")
    content = replace(base)
    for name in ("to", "cc", "bcc", "reply_to"):
        given = getattr(req, name)
        if given is not None:
            setattr(content, name, _people(given))
    if req.from_:
        content.from_name = req.from_[0].name or ""
    if req.subject is not None:
        content.subject = req.subject
    if req.body is not None:
        content.body = req.body
    if req.is_plaintext is not None:
        content.is_plaintext = req.is_plaintext
    if req.custom_headers is not None:
        content.headers = [(h.name, h.value) for h in req.custom_headers]
    if req.reply_to_message_id is not None:
        parent = compose.reply_parent(db, grant.id, req.reply_to_message_id)
        if parent is None:
            raise NotFound(f"No message {req.reply_to_message_id!r} to reply to.")
        content.in_reply_to = parent.message_id_header
        content.references = (
            [*parent.references, parent.message_id_header] if parent.message_id_header else []
        )
    if files is not None:
        content.files = files
    if len(content.to) + len(content.cc) + len(content.bcc) > MAX_RECIPIENTS:
        raise InvalidRequest(f"At most {MAX_RECIPIENTS} recipients per draft.")
    if len(content.files) > MAX_ATTACHMENTS:
        raise InvalidRequest(f"At most {MAX_ATTACHMENTS} attachments per draft.")
    return content


def checked_metadata(req: DraftRequest) -> dict[str, str] | None:
    """The request's metadata checked against Nylas' rules (None: not given).

    Raises:
        InvalidRequest: Naming the rule broken.
    """
    if req.metadata is None:
        return None
    try:
        return metadata.validated(req.metadata)
    except metadata.MetadataError as exc:
        raise InvalidRequest(str(exc)) from exc


def check_send_at(req: DraftRequest) -> None:
    """A draft's ``send_at``: in the future, at most 30 days ahead (as a send's).

    Raises:
        InvalidRequest: Otherwise.
    """
    if req.send_at is None:
        return
    if req.send_at <= time.time():
        raise InvalidRequest("send_at must be in the future (Unix seconds).")
    if req.send_at > time.time() + MAX_SCHEDULE_AHEAD_S:
        raise InvalidRequest("send_at must be at most 30 days ahead.")


# --- create -----------------------------------------------------------------------------------


def create(
    db: Session,
    sender: Sender,
    grant: Grant,
    req: DraftRequest,
    files: list[DraftFile] | None,
) -> Message:
    """Save a new draft in the Drafts folder, and its send at ``send_at`` when given (checked
    first: a draft that could not be sent is refused before it is saved)."""
    content = applied(db, grant, DraftContent(), req, files)
    pairs = checked_metadata(req)
    check_send_at(req)
    if req.send_at is not None:
        scheduling.scheduled_send(
            db, grant, content, pairs, req.send_at, make_msgid(domain=server.domain_of(grant))
        )
    draft = server.append(db, sender, grant, content, starred=bool(req.starred), pairs=pairs)
    if req.send_at is not None and draft.message_id_header:
        out = scheduling.scheduled_send(
            db, grant, content, pairs, req.send_at, draft.message_id_header
        )
        scheduling.schedule(db, sender, grant, out)
    return draft


# --- update -----------------------------------------------------------------------------------


def update(
    db: Session,
    sender: Sender,
    grant: Grant,
    draft: Message,
    req: DraftRequest,
    files: list[DraftFile] | None,
) -> Message:
    """Replace the server's copy by one with the request applied (same Message-ID), then
    rewrite the draft's row in place: its id stays. One change of a draft at a time.

    Raises:
        SavedNotSendable: Saved, but a scheduled draft can no longer be sent as it now is.
    """
    applied(db, grant, DraftContent(), req, files)  # refuse a bad request before waiting
    check_send_at(req)
    with scheduling.locked(sender.sessions, db, grant, draft) as current:
        return _update(db, sender, grant, current, req, files)


def _update(
    db: Session,
    sender: Sender,
    grant: Grant,
    draft: Message,
    req: DraftRequest,
    files: list[DraftFile] | None,
) -> Message:
    server.location(db, draft)  # a draft no longer there is answered first
    message_id = draft.message_id_header or make_msgid(domain=server.domain_of(grant))
    starred = draft.starred if req.starred is None else req.starred
    applied(db, grant, DraftContent(), req, files)  # refuse a bad request before any IMAP
    content = server.replace(
        db,
        sender,
        grant,
        draft,
        lambda base: applied(db, grant, base, req, files),
        message_id=message_id,
        starred=starred,
        pairs=checked_metadata(req),
    )
    # A scheduled draft goes as it now is: its send is made again from the new version, at
    # the time given or the one it had.
    send_at = scheduling.unschedule(db, grant, message_id)
    send_at = req.send_at if req.send_at is not None else send_at
    if send_at is not None:
        try:
            out = scheduling.scheduled_send(
                db, grant, content, draft.metadata_, send_at, message_id
            )
        except RequestError as exc:
            db.commit()  # the old schedule stays cancelled: it held the old version
            raise SavedNotSendable(exc) from exc
        scheduling.schedule(db, sender, grant, out)
    db.commit()
    return draft


# --- send and remove --------------------------------------------------------------------------


def send(
    db: Session, sender: Sender, grant: Grant, draft: Message, *, fields: str, wait_s: float
) -> dict[str, Any]:
    """Send what the server's copy of the draft holds (waiting at most ``wait_s`` for a
    worker), then expunge the draft (while no other change of it runs: an update meanwhile
    waits, then finds it gone); the sent message's view."""
    with scheduling.locked(sender.sessions, db, grant, draft) as current:
        return _send(db, sender, grant, current, fields, wait_s)


def _send(
    db: Session, sender: Sender, grant: Grant, draft: Message, fields: str, wait_s: float
) -> dict[str, Any]:
    where = server.location(db, draft)
    if scheduling.unschedule(db, grant, draft.message_id_header) is not None:
        db.commit()  # sent now instead of then
    content = server.read(db, sender, grant, where)
    req, files = scheduling.send_request(db, grant, content, draft.metadata_)
    # One send per version of a draft: a retry (after a 504 while the worker was still at it,
    # or when the draft could not be removed) gets the first send's answer, never a second mail.
    key = f"draft:{draft.id}:{draft.header_hash}"
    try:
        out = compose.prepare(db, grant, req, files, fields)
        view = submit.send_now(db, sender, grant, out, key, wait_s=wait_s, fields=fields)
    except RequestError:  # what compose refused, or the send failed with
        db.rollback()
        if OutboxRepository(db).release_key(grant.id, key):  # refused for certain: may retry
            db.commit()
        raise
    try:
        _remove(db, sender, grant, draft)
    except (ImapError, RequestError) as exc:
        # The mail went out; only the draft is left behind (DELETE removes it).
        log.warning(
            "draft sent, but not removed from Drafts: %s",
            type(exc).__name__,
            extra={"grant_id": grant.id},
        )
    return view


def remove(db: Session, sender: Sender, grant: Grant, draft: Message) -> None:
    """Expunge every copy of the draft and forget it (one change of a draft at a time)."""
    with scheduling.locked(sender.sessions, db, grant, draft) as current:
        _remove(db, sender, grant, current)


def _remove(db: Session, sender: Sender, grant: Grant, draft: Message) -> None:
    scheduling.unschedule(db, grant, draft.message_id_header)  # a deleted draft is not sent later
    server.expunge(db, sender, grant, draft)
    db.commit()
