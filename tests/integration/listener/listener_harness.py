"""Helpers shared by the listener's service tests: grants with folder rows, a listener on a
thread of its own, and polling waits."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from pipeline.config import Settings
from pipeline.config.listener import ListenerSettings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.grants.service import create_grant
from pipeline.listener.idle import WatchState
from pipeline.listener.process import Listener
from pipeline.models import Folder
from tests.support.grants import grant_request
from tests.support.mail import create_folder
from tests.support.services import MailUser
from tests.support.waiting import wait_for

WAIT_S = 15.0  # longest wait for something that should happen within about a second
FAST = ListenerSettings(
    lease_ttl_s=3.0,
    lease_renew_s=1.0,
    plan_refresh_s=1.0,
    backoff_base_s=0.2,
    backoff_max_s=2.0,
    backoff_reset_after_s=5.0,
    connect_timeout_s=5.0,
    command_timeout_s=10.0,
)


def connect_grant(settings: Settings, user: MailUser) -> tuple[str, str, str]:
    """A grant for ``user`` with Inbox and Sent folder rows; returns (grant, inbox, sent) ids."""
    sent_name = user.folder("Sent")
    if user.kind != "cyrus":  # Cyrus makes Sent at the first login
        create_folder(user.server, user.name, user.password, sent_name)
    with session_scope(settings.require_database_url()) as db:
        grant = create_grant(db, settings, grant_request(user)).grant
        inbox = Folder(grant_id=grant.id, name="INBOX", raw_name="INBOX", role="inbox")
        sent = Folder(grant_id=grant.id, name=sent_name, raw_name=sent_name, role="sent")
        db.add_all([inbox, sent])
        db.flush()
        return grant.id, inbox.id, sent.id


@dataclass
class Recorder:
    """The injected sync enqueue: remembers every call."""

    calls: list[tuple[str, str, str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, grant_id: str, folder_id: str, provider: str) -> None:
        with self.lock:
            self.calls.append((grant_id, folder_id, provider, time.monotonic()))

    def count(self, folder_id: str | None = None) -> int:
        with self.lock:
            return sum(1 for c in self.calls if folder_id is None or c[1] == folder_id)


class RunningListener:
    """A :class:`Listener` on a thread of its own with its own event loop."""

    def __init__(
        self, settings: Settings, lsettings: ListenerSettings, redis_url: str, name: str
    ) -> None:
        self.recorder = Recorder()
        self.listener: Listener | None = None
        self._settings = settings
        self._lsettings = lsettings
        self._redis_url = redis_url
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> RunningListener:
        self._thread.start()
        assert self._started.wait(WAIT_S)
        wait_for(
            lambda: self.listener is not None and self.listener.ready.is_set(),
            "the listener to be ready",
            timeout_s=WAIT_S,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
            self._started.set()

    async def _run(self) -> None:
        client = aioredis.Redis.from_url(self._redis_url, socket_timeout=5)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.listener = Listener(
            self._settings,
            self._lsettings,
            redis=client,
            sessions=sessionmaker_for(self._settings.require_database_url()),
            enqueue=self.recorder,
            listener_id=self._name,
        )
        self._started.set()
        try:
            await self.listener.run(self._stop)
        finally:
            await client.aclose()  # type: ignore[attr-defined]  # stubs predate aclose

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT_S * 2)
        assert not self._thread.is_alive(), "listener did not stop"
        if self.error is not None:
            raise self.error

    def states(self) -> dict[WatchState, int]:
        assert self.listener is not None
        return dict(self.listener.states())

    def connects(self) -> int:
        """Successful logins of all watchers so far."""
        assert self.listener is not None
        return sum(w.connects for w in self.listener.watchers())

    def idling(self, n: int) -> bool:
        return self.states().get(WatchState.IDLING, 0) >= n
