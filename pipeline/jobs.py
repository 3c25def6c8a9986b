"""Background work the domain asks for: Celery tasks sent by their registered names.

``pipeline`` never imports ``workers`` (the import contract in ``pyproject.toml`` checks it).
A process that is not a Celery worker (the CLI, the listener, the HTTP API) asks for work
through this module, the one module of the domain that talks to Celery. The HTTP API does not
import it either: ``imap-pipeline api`` hands :class:`Jobs` methods to
:func:`pipeline.api.create_app`.

- Task names and queues are the public contract: any Celery client may send these names.
- :func:`publish_config` is what a sender needs to know about the broker (queues and their
  exchanges, serializer, result backend, task-sent events). ``workers/celeryconfig.py`` starts
  from it, so a task sent by the CLI and the same task sent by a worker are the same message.
- :class:`Jobs` sends. Call each method after your commit, never before: the task may start at
  once and must find the rows. :meth:`Jobs.from_settings` sends through a Celery client of its
  own; the workers' Jobs (``workers/enqueue.py``) through their app.
- Every message is stamped with the time it was asked for (:data:`ENQUEUED_AT_HEADER`): the
  worker reports the sync lag from it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery import Celery
from celery.signals import before_task_publish
from kombu.entity import Exchange, Queue
from kombu.exceptions import KombuError

from pipeline import coalesce
from pipeline.config import Settings
from pipeline.crypto import SecretBox
from pipeline.errors import PipelineError
from pipeline.grants.schemas import GrantRequest
from pipeline.presets import preset, queue_names
from pipeline.redis import (
    BROKER_CONNECT_TIMEOUT_S,
    BROKER_TIMEOUT_S,
    CALL_TIMEOUT_S,
    WEBHOOK_KICK_KEY,
)
from pipeline.redis import client as redis_client

log = logging.getLogger(__name__)
T = TypeVar("T")

SYNC_GRANT_TASK = "pipeline.sync.grant"
SYNC_FOLDER_TASK = "pipeline.sync.folder"
CREATE_GRANT_TASK = "pipeline.grants.create"
SEND_DELIVER_TASK = "pipeline.outbox.deliver"
WEBHOOK_DISPATCH_TASK = "pipeline.webhooks.dispatch"
SEND_QUEUE = "send"
WEBHOOK_QUEUE = "webhooks"
MAINTENANCE_QUEUE = "maintenance"

# Tasks whose caller reads the result (from the Redis result backend); every other task is sent
# without a result: with a Redis backend, a send that expects one subscribes the sending process
# to the task's result channel until the result comes, which for the others it never does.
RESULT_TASKS = frozenset({CREATE_GRANT_TASK})
ENQUEUED_AT_HEADER = "imap_pipeline_enqueued_at"  # unix seconds, set by the publisher

# With the Redis broker, a task a dead worker had taken is handed out again only after this
# long: no task may use a countdown longer than it, or Redis would hand the task out twice.
VISIBILITY_TIMEOUT_S = 30 * 60
RESULT_EXPIRES_S = 24 * 3600  # a grant creation's outcome stays readable this long
MAX_SEND_COUNTDOWN_S = 20 * 60  # below the visibility timeout; later sends wait for the sweep

# The webhook dispatch is coalesced (a pending flag of pipeline.coalesce under
# pipeline.redis.WEBHOOK_KICK_KEY): while one is queued and has not started, a kick does
# nothing. The dispatch task clears the flag when it starts.
FLAG_TTL_S = 10  # a lost flag suppresses enqueues at most this long (the sweep covers the rest)
# Enqueue failures are logged, never raised into the caller: the sweep re-finds the work.
ENQUEUE_ERRORS = (redis.RedisError, KombuError, OSError, PipelineError)


class PipelineCelery(Celery):  # type: ignore[misc]  # Celery is untyped
    """Celery whose ``send_task`` expects a result only for :data:`RESULT_TASKS`."""

    def send_task(self, name: str, *args: Any, **options: Any) -> Any:
        """Send ``name``; ``ignore_result`` defaults to whether its caller may read a result."""
        options.setdefault("ignore_result", name not in RESULT_TASKS)
        return super().send_task(name, *args, **options)


@before_task_publish.connect
def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers.setdefault(ENQUEUED_AT_HEADER, time.time())


def publish_config(broker_url: str) -> dict[str, Any]:
    """The Celery settings that decide what a sent message is and where it goes."""
    return {
        "broker_url": broker_url,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "socket_timeout": BROKER_TIMEOUT_S,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
        },
        "task_ignore_result": True,
        # Only tasks sent with ignore_result=False store a result (pipeline.grants.create: the
        # caller reads whether the account was connected, or why not); it lives a day in Redis.
        "result_backend": broker_url,
        "result_expires": RESULT_EXPIRES_S,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_send_sent_event": True,  # Flower
        "task_default_queue": MAINTENANCE_QUEUE,
        # Each queue gets its own direct exchange and routing key. Without them Celery binds
        # every queue to the default exchange under the default routing key, and a task sent
        # to one queue is copied into all of them.
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in [*queue_names(), SEND_QUEUE, WEBHOOK_QUEUE, MAINTENANCE_QUEUE]
        ],
    }


class Jobs:
    """The background work a process asks for.

    Args:
        app: The Celery app that sends (a worker's own, or :meth:`from_settings`' client),
            asked for at each send.
        flags: This process's Redis client for the coalescing flags, asked for at each kick.
    """

    def __init__(self, app: Callable[[], Celery], flags: Callable[[], redis.Redis[bytes]]) -> None:
        self._app = app
        self._flags = flags

    @classmethod
    def from_settings(cls, settings: Settings) -> Jobs:
        """A sending-only Celery client on the broker of ``settings``, made at the first send
        (in a forked child, again). Without ``IMAP_PIPELINE_REDIS_URL`` each send raises
        :class:`~pipeline.errors.ConfigurationError`, which the callers log like a broker
        failure."""
        return cls(
            _per_process(lambda: _client(settings.require_redis_url())),
            _per_process(
                lambda: redis_client(settings.require_redis_url(), timeout_s=CALL_TIMEOUT_S)
            ),
        )

    @property
    def app(self) -> Celery:
        """The Celery app that sends."""
        return self._app()

    def sync_grant(self, grant_id: str, provider: str) -> None:
        """Discover the grant's folders and sync each of them."""
        self.app.send_task(SYNC_GRANT_TASK, args=[grant_id], queue=preset(provider).queue)

    def sync_folder(
        self,
        grant_id: str,
        folder_id: str,
        provider: str,
        *,
        countdown: float = 0,
        uid_range: tuple[int, int] | None = None,
    ) -> None:
        """Sync one folder (initial window or new mail), or one UID range of its initial sync."""
        args: list[object] = [grant_id, folder_id]
        if uid_range is not None:
            args.extend(uid_range)
        self.app.send_task(
            SYNC_FOLDER_TASK,
            args=args,
            queue=preset(provider).queue,
            countdown=countdown or None,
        )

    def create_grant(self, request: GrantRequest, settings: Settings) -> str:
        """Enqueue ``pipeline.grants.create`` with the passwords sealed; returns the task id.

        This is how another application connects an account through Celery: the plaintext
        password never enters the broker, Flower or a log.
        """
        box = SecretBox(settings.encryption_key_list)
        payload = request.model_dump(mode="json", exclude={"password", "smtp_password"})
        payload["password_sealed"] = box.seal(request.password.get_secret_value())
        if request.smtp_password is not None:
            payload["smtp_password_sealed"] = box.seal(request.smtp_password.get_secret_value())
        provider = request.resolve().provider
        result = self.app.send_task(CREATE_GRANT_TASK, args=[payload], queue=preset(provider).queue)
        return str(result.id)

    def deliver_sends(self, grant_id: str, countdown: float | None = None) -> None:
        """Ask for a drain of the grant's send outbox; never raises (a broker failure is logged:
        the outbox sweep sends it). A countdown past :data:`MAX_SEND_COUNTDOWN_S` is left to the
        sweep."""
        if countdown is not None and countdown > MAX_SEND_COUNTDOWN_S:
            return  # the sweep sends it when due
        try:
            self.app.send_task(
                SEND_DELIVER_TASK, args=[grant_id], queue=SEND_QUEUE, countdown=countdown or None
            )
        except (KombuError, redis.RedisError, OSError) as exc:
            log.warning("send drain not enqueued (%s); the sweep will", type(exc).__name__)

    def kick_webhooks(self) -> None:
        """Have pending webhook outbox rows dispatched soon. Cheap; never raises.

        Coalesced: while a dispatch is queued and has not started, further kicks do nothing.
        """
        try:
            coalesce.send_once(self._flags(), WEBHOOK_KICK_KEY, FLAG_TTL_S, self._dispatch_webhooks)
        except ENQUEUE_ERRORS as exc:
            log.warning("webhook dispatch not enqueued (the sweep will pick it up): %s", exc)

    def _dispatch_webhooks(self) -> None:
        self.app.send_task(WEBHOOK_DISPATCH_TASK, args=[], queue=WEBHOOK_QUEUE)

    def ping(self, node: str, timeout_s: float) -> list[dict[str, Any]]:
        """The replies of the Celery node ``node`` to a ping (empty when it did not answer)."""
        replies: list[dict[str, Any]] = self.app.control.ping(destination=[node], timeout=timeout_s)
        return replies


def _client(broker_url: str) -> PipelineCelery:
    app = PipelineCelery("imap_pipeline", set_as_current=False)
    app.conf.update(publish_config(broker_url))
    return app


def _per_process(make: Callable[[], T]) -> Callable[[], T]:
    """``make()`` once per process, on first use (a forked child makes its own)."""
    lock = threading.Lock()
    made: list[tuple[int, T]] = []

    def get() -> T:
        with lock:
            if not made or made[0][0] != os.getpid():
                made[:] = [(os.getpid(), make())]
            return made[0][1]

    return get
