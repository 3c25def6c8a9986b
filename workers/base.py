"""The policies every task shares, written once: the base task classes of the Celery app.

Each policy is a small step around the task's own body, like a middleware::

    PipelineTask (every task that opens an IMAP session)
      RateLimited escapes the body ──► sent again after the limiter's wait, same arguments
                                       and queue; result {"rescheduled": s}
    GrantSyncTask (first argument: a grant id; pipeline.sync.*)
      + a transient IMAP error ──────► Celery retry, exponential back-off (at most
                                       RETRY_BACKOFF_MAX_S, MAX_RETRIES times)
      + a bound broken by the server
        or the soft time limit ──────► the reason on the grant's status, the account backs off
    FolderSyncTask (grant id, folder id; pipeline.sync.folder)
      + the reason on the folder too; result {"limited": bound}

A rate-limited run is not a failure: it uses up no retry, and it never waits in a worker slot
for a token (:mod:`pipeline.limits`). A task gets its grant's IMAP session from
:func:`grant_session` (a refused login marks the grant invalid and kicks its ``grant.expired``)
and turns a failed IMAP step into its result with :func:`skipped` (a broken bound costs the
grant). The per-process resources behind them are :mod:`workers.resources`; coalescing of
runs is :mod:`pipeline.coalesce`.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from pipeline.config import get_settings
from pipeline.errors import (
    ImapAuthError,
    ImapConnectError,
    ImapError,
    ImapLimitError,
    ImapProtocolError,
    ImapThrottledError,
)
from pipeline.imap import ImapSession
from pipeline.limits import RateLimited
from pipeline.models import Grant
from workers.resources import LimitsView, fresh_imap_for, imap_for, note_misbehaved, sessions
from workers.webhook_queue import kick

log = logging.getLogger(__name__)

RESCHEDULE_MIN_S = 1.0  # a denied task comes back no sooner than this
RESCHEDULE_MAX_S = 60.0  # nor later: far below the broker's visibility timeout (30 min)
RESCHEDULE_JITTER_S = 1.0  # spreads denied tasks so they do not return in one burst
RETRY_BACKOFF_MAX_S = 600  # stays far below the broker's visibility timeout
MAX_RETRIES = 8
TRANSIENT = (ImapConnectError, ImapProtocolError, ImapThrottledError)


def reschedule_countdown(retry_after_s: float, *, jitter: bool = True) -> float:
    """When a task denied a token comes back: the limiter's wait, bounded (and spread)."""
    spread = random.uniform(0, RESCHEDULE_JITTER_S) if jitter else 0.0
    return min(max(retry_after_s, RESCHEDULE_MIN_S) + spread, RESCHEDULE_MAX_S)


class PipelineTask(Task):  # type: ignore[misc]  # Celery is untyped
    """A task whose run denied a token or a connection slot comes back later.

    The policies run inside the task's ``run`` (wrapped when Celery makes the task's class),
    so Celery's own autoretry, which wraps ``run`` in turn, sees only what they let through:
    a :class:`~pipeline.limits.RateLimited` (an ``ImapThrottledError``) never uses up a
    retry.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        body = cls.__dict__.get("run")
        if body is None:  # a base class of tasks, not a task
            return
        fun = body.__func__ if isinstance(body, staticmethod) else body
        bound = not isinstance(body, staticmethod)  # @app.task(bind=True)

        @functools.wraps(fun)
        def run(self: PipelineTask, *args: Any, **kwargs: Any) -> Any:
            def call() -> Any:
                return fun(self, *args, **kwargs) if bound else fun(*args, **kwargs)

            return self.guarded(call, *args, **kwargs)

        cls.run = run

    def guarded(self, call: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
        """Run the task's body (``call``) under the policies; ``args``: the task's arguments."""
        try:
            return call()
        except RateLimited as exc:
            self.reschedule(exc)
            return {"rescheduled": round(exc.retry_after_s, 2)}

    def reschedule(self, exc: RateLimited) -> None:
        """Send this task again with the same arguments after the limiter's wait (bounded).

        Not ``self.retry()``: a rate-limited run is not a failure and must not use up retries.
        """
        delivery = self.request.delivery_info or {}
        self.apply_async(
            args=self.request.args,
            kwargs=self.request.kwargs,
            countdown=reschedule_countdown(exc.retry_after_s),
            queue=delivery.get("routing_key"),
        )


def limit_problem(exc: ImapLimitError | SoftTimeLimitExceeded) -> ImapLimitError | str:
    """What goes on the grant's status for a broken bound or a task stopped at its soft limit."""
    if isinstance(exc, ImapLimitError):
        return exc
    from workers.celeryconfig import SOFT_LIMIT_MARGIN_S  # loaded: this runs in a worker

    limit = get_settings().sync.task_time_limit_s
    return (
        f"a sync task of this grant was stopped {SOFT_LIMIT_MARGIN_S} s before its time limit "
        f"of {limit:g} s (the server answers too slowly); if it is trusted, raise "
        "IMAP_PIPELINE_SYNC_TASK_TIME_LIMIT_S."
    )


class GrantSyncTask(PipelineTask):
    """A sync task of one grant (its id the first argument): transient IMAP errors retried
    with back-off; a server that breaks a bound of the IMAP client
    (:class:`~pipeline.errors.ImapLimitError`) or keeps the task past its soft time limit
    costs its own grant: the task ends, the reason goes on the grant's status, and the
    account backs off."""

    autoretry_for = TRANSIENT
    retry_backoff = True
    retry_backoff_max = RETRY_BACKOFF_MAX_S
    max_retries = MAX_RETRIES

    def guarded(self, call: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return super().guarded(call, *args, **kwargs)
        except (ImapLimitError, SoftTimeLimitExceeded) as exc:
            return self.misbehaved(limit_problem(exc), args, kwargs)

    def misbehaved(
        self, problem: ImapLimitError | str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Record ``problem`` on the grant of the task's arguments; returns the task's result."""
        note_misbehaved(args[0] if args else kwargs["grant_id"], problem)
        return None


class FolderSyncTask(GrantSyncTask):
    """:class:`GrantSyncTask` of one folder (its id the second argument): the reason goes on
    the folder's status too."""

    def misbehaved(
        self, problem: ImapLimitError | str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        grant_id = args[0] if args else kwargs["grant_id"]
        folder_id = args[1] if len(args) > 1 else kwargs["folder_id"]
        note_misbehaved(grant_id, problem, folder_id)
        return {"limited": getattr(problem, "bound", "time limit")}


def grant_session(
    grant: Grant, *, view: LimitsView | None = None, fresh: bool = False
) -> ImapSession:
    """A session of ``grant`` for a task's IMAP work: this process's pooled one or a new login
    (``fresh``: always a new login, what a new session of the server sees). Its transaction
    writes only when the server refuses the login: the grant is marked invalid and its
    ``grant.expired`` goes into the outbox, committed, then kicked. Give the session back
    with :func:`workers.resources.using` (or ``release_imap``).

    Raises:
        RateLimited: No token or connection slot now (the task comes back later).
        ImapAuthError: The login was refused; the grant is now invalid.
        ImapError: Any other failure of the login (``ImapLimitError``: a bound broken).
    """
    opener = fresh_imap_for if fresh else imap_for
    with sessions().begin() as db:
        try:
            return opener(db, grant, view)
        except ImapAuthError as exc:
            refused = exc  # committed with this block
    kick()  # grant.expired
    raise refused


def skipped(grant_id: str, exc: ImapError, failure: str = "") -> dict[str, Any]:
    """The result of a task whose IMAP work on ``grant_id``'s server failed with ``exc``: a
    broken bound is recorded on the grant (the account backs off); another failure is
    logged as ``failure`` when given (the next run tries again)."""
    if isinstance(exc, ImapLimitError):
        note_misbehaved(grant_id, exc)
    elif failure:
        log.warning("%s: %s", failure, exc)
    return {"skipped": type(exc).__name__}
