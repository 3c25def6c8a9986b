"""Submitting a send and waiting for its outcome: what an immediate send answers, and the
answer kept for its idempotency key.

A composed send (:mod:`pipeline.outbound.compose`) is queued (:func:`submit`, through
:func:`pipeline.outbound.sending.queue`); a worker sends it (:mod:`pipeline.outbound.deliver`).
The caller then looks at the row (:func:`look`) at growing intervals until it is settled or
the wait is over (:class:`Wait`, the one policy of that wait)::

    submit ── the key names another request? ── yes ──> KeyReused
       │ no
       v
    send_at given? ── yes ──> SCHEDULED: the scheduled send's view, at once
       │ no
       v
    look until settled, at most ``wait_s``:
       an answer kept on the row ──────> ANSWERED (repeated: a request made before)
       settled (sent, failed, cancelled) ──> ANSWERED (the answer computed and kept)
       the wait is over ──> PENDING (a new send: it stays queued and goes once)
                            or IN_PROGRESS (a repeat whose first request is still sending)

The first final answer of a row is kept on it (``response``): the same key asked again gets
it, never a second send (Nylas' ``Idempotency-Key`` semantics). An answer is
``{"status", "data"}`` or ``{"status", "error": {"type", "message"}}``.

:func:`submit_and_wait` runs it all on the calling thread (the CLI, a task, sending a draft);
the HTTP route runs the same steps and the same :class:`Wait` without blocking its event
loop. :func:`send_now` is
:func:`submit_and_wait` for a caller that wants the sent message or an error.

Errors (:class:`~pipeline.errors.RequestError`): :class:`KeyReused`, :class:`SendRefused`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from pipeline.errors import RequestError
from pipeline.messages import queries as message_queries
from pipeline.messages.repository import MessageRepository
from pipeline.messages.views import attachment_view, message_view
from pipeline.models import Grant
from pipeline.outbound import sending
from pipeline.outbound.compose import Outgoing
from pipeline.outbound.outbox import OutboxRepository
from pipeline.outbound.sending import Sender

WAIT_POLL_FIRST_S = 0.02  # an immediate send's row is looked at this soon, then less often
WAIT_POLL_MAX_S = 0.25


class KeyReused(RequestError):
    """The idempotency key was used with a different request within the key's window."""


class SendRefused(RequestError):
    """The send failed (what the SMTP server or the worker said), or no worker sent it within
    the wait; ``status`` and ``type`` are the answer's (as the HTTP API gives them)."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_


class Kind(StrEnum):
    """What a submitted send came to (see the module docstring)."""

    ANSWERED = "answered"
    SCHEDULED = "scheduled"
    PENDING = "pending"
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True)
class Outcome:
    """What a submitted send came to: ``answer`` (``{"status", "data"|"error"}``) for ANSWERED,
    SCHEDULED (200) and PENDING (202, the composed message with its ``schedule_id``); none for
    IN_PROGRESS. ``repeated``: the answer is one given before for the same key."""

    kind: Kind
    row: Row[Any]
    repeated: bool
    answer: dict[str, Any] | None = None

    @property
    def status(self) -> int:
        """The answer's HTTP-like status (0 without an answer)."""
        return int(self.answer["status"]) if self.answer is not None else 0


@dataclass(frozen=True)
class Submitted:
    """A queued send: its outbox row and whether this submit wrote it."""

    row: Row[Any]
    new: bool


class Wait:
    """The immediate send's wait, written once for every caller: after each :func:`look`,
    :meth:`after` says what comes next: the outcome (the row settled, or the wait is over:
    :func:`not_in_time`), or how many seconds to pause before looking again, short at first
    (:data:`WAIT_POLL_FIRST_S`), then doubling up to :data:`WAIT_POLL_MAX_S`.

    The caller looks and pauses its own way: :func:`submit_and_wait` on its thread, the HTTP
    route (:mod:`pipeline.api.send`) without blocking its event loop::

        wait = Wait(submitted, wait_s)
        while isinstance(step := wait.after(look(...)), float):
            pause for ``step`` seconds
        return step
    """

    def __init__(
        self, submitted: Submitted, wait_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._submitted, self._clock = submitted, clock
        self._deadline = clock() + wait_s
        self._pause = WAIT_POLL_FIRST_S

    def after(self, looked: Outcome | None) -> Outcome | float:
        """What follows a look that came to ``looked`` (None: the row is not settled yet): an
        outcome to answer with, or the pause (seconds) before the next look."""
        if looked is not None:
            return looked
        if self._clock() >= self._deadline:
            return not_in_time(self._submitted)
        pause = self._pause
        self._pause = min(pause * 2, WAIT_POLL_MAX_S)
        return pause


def submit(
    db: Session,
    sender: Sender,
    grant: Grant,
    out: Outgoing,
    key: str | None,
    *,
    check_request: bool = True,
) -> Submitted:
    """Queue the send (or find the one ``key`` names; committed, a drain asked for).

    Raises:
        KeyReused: ``check_request`` and the key names a different request.
    """
    row, new = sending.queue(db, sender, grant, out, key)
    if check_request and not new and row.request_hash != out.digest:
        raise KeyReused(
            "This Idempotency-Key was used with a different request in the last hour; use a new "
            "key for a new message."
        )
    return Submitted(row=row, new=new)


def scheduled(submitted: Submitted) -> Outcome | None:
    """The outcome of a send with ``send_at``: answered at once with its view (None: the send
    is an immediate one)."""
    row = submitted.row
    if row.send_at is None:
        return None
    view = dict(row.request)
    view.update(
        schedule_id=row.id, send_at=int(row.send_at.timestamp()), use_draft=bool(row.use_draft)
    )
    return Outcome(Kind.SCHEDULED, row, not submitted.new, {"status": 200, "data": view})


def look(
    sessions: sessionmaker[Session], grant_id: str, submitted: Submitted, fields: str
) -> Outcome | None:
    """The row as it is now: ANSWERED once it is settled (its answer kept), else None."""
    current = sending.current(sessions, grant_id, submitted.row.id)
    if current.response is not None:
        return Outcome(Kind.ANSWERED, current, True, dict(current.response))
    if not sending.settled(current):
        return None
    return Outcome(Kind.ANSWERED, current, not submitted.new, answer(sessions, current, fields))


def not_in_time(submitted: Submitted) -> Outcome:
    """The wait is over before the row settled: PENDING (202 with the composed message and
    its ``schedule_id``: it stays queued and is sent once) or, for a repeat, IN_PROGRESS."""
    row = submitted.row
    if not submitted.new:
        return Outcome(Kind.IN_PROGRESS, row, True)
    view = dict(row.request)
    view["schedule_id"] = row.id
    return Outcome(Kind.PENDING, row, False, {"status": 202, "data": view})


def answer(sessions: sessionmaker[Session], row: Row[Any], fields: str) -> dict[str, Any]:
    """The answer of a settled row, kept on it for repeats (the first one kept wins)."""
    with sessions() as db:
        if row.response is not None:
            return dict(row.response)
        repo = OutboxRepository(db)
        if row.state == "sent":
            kept = repo.remember_response(
                row.id, {"status": 200, "data": _sent_view(db, row, fields)}
            )
        else:
            kept = repo.remember_response(row.id, _error_answer(row))
        db.commit()
    return kept


def _sent_view(db: Session, row: Row[Any], fields: str) -> dict[str, Any]:
    """The stored message the send became (its Sent copy), or the composed one."""
    message = (
        MessageRepository(db).get(row.grant_id, row.stored_message_id)
        if row.stored_message_id
        else None
    )
    if message is None:
        return dict(row.request)
    attachments = message_queries.attachments_of(db, [message.id]).get(message.id, [])
    return message_view(
        message,
        message_queries.folder_ids_of(db, [message.id]).get(message.id, []),
        [attachment_view(a) for a in attachments],
        include_headers=fields == "include_headers",
        include_basic_headers=fields == "include_basic_headers",
    )


def _error_answer(row: Row[Any]) -> dict[str, Any]:
    error = dict(row.error or {})
    if row.state == "cancelled":
        error = {"status": 400, "type": "invalid_request_error", "message": "cancelled"}
    return {
        "status": int(error.get("status", 500)),
        "error": {
            "type": str(error.get("type", "api_error")),
            "message": str(error.get("message", "The send failed.")),
        },
    }


def submit_and_wait(
    db: Session,
    sender: Sender,
    grant: Grant,
    out: Outgoing,
    key: str | None,
    *,
    wait_s: float,
    fields: str = "standard",
    check_request: bool = True,
) -> Outcome:
    """Queue the send and wait on this thread, at most ``wait_s``, for what it came to.

    Raises:
        KeyReused: ``check_request`` and the key names a different request.
    """
    submitted = submit(db, sender, grant, out, key, check_request=check_request)
    at_once = scheduled(submitted)
    if at_once is not None:
        return at_once
    wait = Wait(submitted, wait_s)
    while isinstance(step := wait.after(look(sender.sessions, grant.id, submitted, fields)), float):
        time.sleep(step)
    return step


def send_now(
    db: Session,
    sender: Sender,
    grant: Grant,
    out: Outgoing,
    key: str | None,
    *,
    wait_s: float,
    fields: str = "standard",
) -> dict[str, Any]:
    """Send and wait for the sent message's view (``key``: a send already made with it is
    not made again, its answer is given, whatever request it was made with).

    Raises:
        SendRefused: What the send failed with; 504 ``provider_error`` when no worker sent it
            within ``wait_s`` (it stays queued and is sent once).
    """
    outcome = submit_and_wait(
        db, sender, grant, out, key, wait_s=wait_s, fields=fields, check_request=False
    )
    if outcome.kind is not Kind.ANSWERED or outcome.answer is None:
        raise SendRefused(
            504,
            "provider_error",
            f"No worker sent the message within {wait_s:g} s; it stays queued and is sent once "
            f"(schedule {outcome.row.id}).",
        )
    if "error" in outcome.answer:
        error = outcome.answer["error"]
        raise SendRefused(outcome.status, error["type"], error["message"])
    return dict(outcome.answer["data"])
