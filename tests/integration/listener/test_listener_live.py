"""The listener against real Dovecot, Postgres and Redis, run in-process on its own thread.

Every test creates its own grant(s) on the session Dovecot (or on a private Dovecot when the
test restarts the server), watches them with a :class:`Listener` whose sync enqueue is recorded,
and checks what reaches the recorder and the Redis ``changed`` hash.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from pipeline.config import Settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant
from pipeline.listener import CHANGED_KEY, Listener, ListenerSettings, conn_key, lease_key
from pipeline.listener.idle import WatchState
from pipeline.local import free_port
from pipeline.local.dovecot import LocalDovecot
from pipeline.models import Folder, Grant
from tests.support.mail import append, create_folder, imap_login, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services

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


def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S, what: str = "") -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what or condition}")
        time.sleep(0.05)


def connect_grant(settings: Settings, user: MailUser) -> tuple[str, str, str]:
    """A grant for ``user`` with Inbox and Sent folder rows; returns (grant, inbox, sent) ids."""
    create_folder(user.server, user.name, user.password, "Sent")
    request = GrantRequest(
        email=user.email,
        password=user.password,  # type: ignore[arg-type]
        imap_host="127.0.0.1",
        imap_port=user.server.port,
        imap_tls="starttls",
        imap_username=user.name,
    )
    with session_scope(settings.require_database_url()) as db:
        grant = create_grant(db, settings, request).grant
        inbox = Folder(grant_id=grant.id, name="INBOX", raw_name="INBOX", role="inbox")
        sent = Folder(grant_id=grant.id, name="Sent", raw_name="Sent", role="sent")
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
        wait_for(lambda: self.listener is not None and self.listener.ready.is_set())
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


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


def changed_at(client: redis.Redis[bytes], grant_id: str, folder_id: str) -> int:
    value = client.hget(CHANGED_KEY, f"{grant_id}:{folder_id}")
    return int(value) if value else 0


def test_append_flag_change_and_expunge_each_reach_the_workers(
    settings: Settings, mail_user: MailUser, redis_url: str, sync_redis: redis.Redis[bytes]
) -> None:
    grant_id, inbox, sent = connect_grant(settings, mail_user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), what="both folders idling")
        time.sleep(1.2)  # let the connect-time event's debounce window pass
        rec = running.recorder

        before = rec.count(inbox)
        append(mail_user.server, mail_user.name, mail_user.password, make_message("new"))
        wait_for(lambda: rec.count(inbox) > before, what="enqueue after APPEND")
        assert changed_at(sync_redis, grant_id, inbox) > 0
        assert rec.calls[-1][:3] == (grant_id, inbox, "generic")

        time.sleep(1.2)
        before = rec.count(inbox)
        conn = imap_login(mail_user.server, mail_user.name, mail_user.password)
        try:
            conn.select("INBOX")
            conn.store("1", "+FLAGS", "(\\Flagged)")
            wait_for(lambda: rec.count(inbox) > before, what="enqueue after a flag change")
            time.sleep(1.2)
            before = rec.count(inbox)
            conn.store("1", "+FLAGS", "(\\Deleted)")
            conn.expunge()
        finally:
            conn.logout()
        wait_for(lambda: rec.count(inbox) > before, what="enqueue after an expunge")
        assert running.listener is not None
        reasons = running.listener.publisher.stats.by_reason
        assert reasons.get("exists", 0) >= 1
        assert reasons.get("flags", 0) >= 1
        assert reasons.get("expunge", 0) >= 1
        # the Sent folder saw none of it
        assert rec.count(sent) <= 1  # at most its connect-time event
    # a clean stop logs out and gives everything back
    assert sync_redis.get(lease_key(grant_id)) is None
    assert sync_redis.zcard(conn_key(grant_id)) == 0


def test_a_burst_of_appends_becomes_a_few_enqueues(
    settings: Settings, mail_user: MailUser, redis_url: str
) -> None:
    _grant_id, inbox, _ = connect_grant(settings, mail_user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), what="both folders idling")
        time.sleep(1.2)
        before = running.recorder.count(inbox)
        conn = imap_login(mail_user.server, mail_user.name, mail_user.password)
        started = time.monotonic()
        try:
            for i in range(200):
                conn.append("INBOX", None, None, make_message(f"burst {i}"))
        finally:
            conn.logout()
        burst_s = time.monotonic() - started
        time.sleep(2.5)  # the last window closes
        sent = running.recorder.count(inbox) - before
    # one at the start plus one per debounce window, never one per message
    assert 1 <= sent <= burst_s / FAST.debounce_s + 3, (sent, burst_s)
    assert sent < 20


def test_wrong_password_marks_the_grant_invalid_without_retrying(
    settings: Settings, mail_user: MailUser, redis_url: str, sync_redis: redis.Redis[bytes]
) -> None:
    grant_id, _, _ = connect_grant(settings, mail_user)
    mail_user.server.add_user(mail_user.name, "changed-on-the-server")
    time.sleep(1.1)  # Dovecot re-reads its passwd-file at most once a second
    with RunningListener(settings, FAST, redis_url, "L1") as running:

        def invalid() -> bool:
            with session_scope(settings.require_database_url()) as db:
                grant = db.get(Grant, grant_id)
                return grant is not None and grant.grant_status == "invalid"

        wait_for(invalid, what="grant marked invalid")
        time.sleep(4 * FAST.lease_renew_s + 4 * FAST.backoff_max_s)
        assert running.listener is not None
        assert running.listener.held == []
    failures = auth_failures(mail_user.server, mail_user.name)
    assert 1 <= failures <= 2, failures  # Inbox and Sent may each have tried once
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None and grant.status_detail
        assert "changed-on-the-server" not in grant.status_detail
    assert sync_redis.get(lease_key(grant_id)) is None


def auth_failures(server: LocalDovecot, user: str) -> int:
    """Refused logins of ``user`` in Dovecot's log."""
    text = server.log_path.read_text(errors="replace")
    return len(re.findall(rf"auth failed.*user=<{re.escape(user)}>", text))


@pytest.fixture
def own_dovecot(dovecot: LocalDovecot, tmp_path: Path) -> Iterator[LocalDovecot]:
    """A private Dovecot this test may stop and start (same TLS files as the session one)."""
    server = LocalDovecot(
        tmp_path / "dovecot",
        free_port(),
        tls_cert=dovecot.tls_cert,
        tls_key=dovecot.tls_key,
    )
    server.start()
    yield server
    server.stop()


def deliver_to_maildir(server: LocalDovecot, user: str, raw: bytes) -> None:
    """Deliver a message the way an MTA does while IMAP is down: a file in ``new/``."""
    new = server.maildir(user) / "new"
    path = new / f"{time.time_ns()}.listener-test.{os.getpid()}"
    path.write_bytes(raw)
    entry = pwd.getpwnam(server.mail_user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def test_reconnects_after_a_server_restart_and_reports_what_arrived_meanwhile(
    settings: Settings, own_dovecot: LocalDovecot, redis_url: str
) -> None:
    user = MailUser(own_dovecot, "restarted", "pw-restart")
    own_dovecot.add_user(user.name, user.password)
    time.sleep(1.1)
    _grant_id, inbox, _ = connect_grant(settings, user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), what="both folders idling")
        assert running.listener is not None
        connects = running.connects()
        time.sleep(1.2)
        own_dovecot.stop()
        deliver_to_maildir(own_dovecot, user.name, make_message("while down"))
        before = running.recorder.count(inbox)
        own_dovecot.start()
        wait_for(
            lambda: running.connects() >= connects + 2,
            what="both folders reconnected",
        )
        wait_for(lambda: running.recorder.count(inbox) > before, what="event for mail meanwhile")
        wait_for(lambda: running.idling(2), what="idling again")


def test_server_without_changes_is_not_resynced_on_reconnect(
    settings: Settings, own_dovecot: LocalDovecot, redis_url: str
) -> None:
    """CONDSTORE proves nothing changed across a reconnect: no needless sync."""
    user = MailUser(own_dovecot, "quiet", "pw-quiet")
    own_dovecot.add_user(user.name, user.password)
    time.sleep(1.1)
    _, inbox, _ = connect_grant(settings, user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), what="both folders idling")
        assert running.listener is not None
        connects = running.connects()
        time.sleep(1.2)
        before = running.recorder.count(inbox)
        own_dovecot.stop()
        own_dovecot.start()
        wait_for(
            lambda: running.connects() >= connects + 2,
            what="both folders reconnected",
        )
        time.sleep(1.5)
        assert running.recorder.count(inbox) == before


def test_idle_is_renewed_without_dropping_the_connection(
    settings: Settings, mail_user: MailUser, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.listener import idle

    monkeypatch.setattr(idle, "idle_renew_s", lambda provider, rng=None: 0.5)
    _, inbox, _ = connect_grant(settings, mail_user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), what="both folders idling")
        time.sleep(2.0)  # several DONE/IDLE rounds
        assert running.listener is not None
        assert all(w.connects == 1 for w in running.listener.watchers())
        before = running.recorder.count(inbox)
        append(mail_user.server, mail_user.name, mail_user.password, make_message("after renew"))
        wait_for(lambda: running.recorder.count(inbox) > before, what="event after renewals")


def test_grant_connections_count_against_the_account_cap(
    settings: Settings, mail_user: MailUser, redis_url: str, sync_redis: redis.Redis[bytes]
) -> None:
    grant_id, _, _ = connect_grant(settings, mail_user)
    # workers hold 4 of the generic preset's 5 slots: only one folder may connect
    far = int(time.time() * 1000) + 60_000
    sync_redis.zadd(conn_key(grant_id), {f"worker:test:{i}": far for i in range(4)})
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(1), what="one folder idling")
        time.sleep(1.0)
        assert running.states().get(WatchState.IDLING, 0) == 1
        assert running.states().get(WatchState.WAITING_SLOT, 0) == 1
        assert sync_redis.zcard(conn_key(grant_id)) == 5
        sync_redis.zrem(conn_key(grant_id), "worker:test:0")
        wait_for(lambda: running.idling(2), timeout_s=20, what="second folder idling")


def test_two_listeners_share_grants_and_take_over_from_a_dead_one(
    settings: Settings, _mail_user_pool: Iterator[MailUser], redis_url: str
) -> None:
    grants = [connect_grant(settings, next(_mail_user_pool))[0] for _ in range(6)]
    first = RunningListener(settings, FAST, redis_url, "L1").__enter__()
    second = RunningListener(settings, FAST, redis_url, "L2").__enter__()
    try:
        assert first.listener is not None and second.listener is not None
        a, b = first.listener, second.listener
        wait_for(lambda: len(a.held) == 3 and len(b.held) == 3, what="an even split of six grants")
        assert set(a.held) | set(b.held) == set(grants)
        assert not set(a.held) & set(b.held)
        wait_for(lambda: first.idling(6) and second.idling(6), what="all twelve folders idling")
        # the first one dies without releasing anything (its leases simply stop being renewed)
        a_grants = set(a.held)
        first._loop.call_soon_threadsafe(first._loop.stop)  # type: ignore[union-attr]
        died = time.monotonic()
        wait_for(lambda: set(b.held) == set(grants), timeout_s=30, what="takeover")
        assert time.monotonic() - died < 30
        assert a_grants <= set(b.held)
    finally:
        second.stop()
        first._thread.join(5)
