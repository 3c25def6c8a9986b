"""The listener against real Dovecot, Postgres and Redis, run in-process on its own thread.

Every test creates its own grant(s) on the session Dovecot (or on a private Dovecot when the
test restarts the server), watches them with a :class:`Listener` whose sync enqueue is recorded,
and checks what reaches the recorder and the Redis ``changed`` hash.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.dev.dovecot import LocalDovecot
from pipeline.dev.ports import free_port
from pipeline.grants.service import create_grant
from pipeline.listener.idle import WatchState
from pipeline.listener.status import read_status
from pipeline.models import Folder, Grant
from pipeline.netguard import AddressPolicy
from pipeline.redis import conn_key, lease_key
from tests.integration.listener.listener_harness import (
    FAST,
    WAIT_S,
    RunningListener,
    connect_grant,
)
from tests.support.grants import grant_request
from tests.support.mail import append, create_folder, imap_login, make_message
from tests.support.services import MailUser
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


def test_append_flag_change_and_expunge_each_reach_the_workers(
    settings: Settings, server_user: MailUser, redis_url: str, sync_redis: redis.Redis[bytes]
) -> None:
    grant_id, inbox, sent = connect_grant(settings, server_user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), "both folders idling", timeout_s=WAIT_S)
        time.sleep(1.2)  # let the connect-time event's debounce window pass
        rec = running.recorder

        before = rec.count(inbox)
        append(server_user.server, server_user.name, server_user.password, make_message("new"))
        wait_for(lambda: rec.count(inbox) > before, "enqueue after APPEND", timeout_s=WAIT_S)
        assert rec.calls[-1][:3] == (grant_id, inbox, "generic")

        time.sleep(1.2)  # the last change's debounce window passes
        before = rec.count(inbox)
        conn = imap_login(server_user.server, server_user.name, server_user.password)
        try:
            conn.select("INBOX")
            conn.store("1", "+FLAGS", "(\\Flagged)")
            wait_for(
                lambda: rec.count(inbox) > before, "enqueue after a flag change", timeout_s=WAIT_S
            )
            # \Deleted is a flag change of its own (a FETCH the listener reports as "flags"):
            # let it reach the workers first, so that the EXPUNGE below is a change on its own
            # and not folded into the \Deleted one's debounce window
            time.sleep(1.2)
            before = rec.count(inbox)
            conn.store("1", "+FLAGS", "(\\Deleted)")
            wait_for(
                lambda: rec.count(inbox) > before,
                "enqueue after \\Deleted is set",
                timeout_s=WAIT_S,
            )
            time.sleep(1.2)  # the last change's debounce window passes
            before = rec.count(inbox)
            conn.expunge()
        finally:
            conn.logout()
        assert running.listener is not None
        reasons = running.listener.publisher.stats.by_reason
        wait_for(
            lambda: reasons.get("expunge", 0) >= 1,
            "the listener to see the EXPUNGE",
            timeout_s=WAIT_S,
        )
        wait_for(lambda: rec.count(inbox) > before, "enqueue after an expunge", timeout_s=WAIT_S)
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
        wait_for(lambda: running.idling(2), "both folders idling", timeout_s=WAIT_S)
        time.sleep(1.2)  # the connect-time events' debounce window passes
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

        wait_for(invalid, "grant marked invalid", timeout_s=WAIT_S)
        time.sleep(4 * FAST.lease_renew_s + 4 * FAST.backoff_max_s)  # a retry would come by now
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
    time.sleep(1.1)  # Dovecot re-reads its passwd-file by mtime, in whole seconds
    _grant_id, inbox, _ = connect_grant(settings, user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), "both folders idling", timeout_s=WAIT_S)
        assert running.listener is not None
        connects = running.connects()
        time.sleep(1.2)  # the connect-time events' debounce window passes
        own_dovecot.stop()
        deliver_to_maildir(own_dovecot, user.name, make_message("while down"))
        before = running.recorder.count(inbox)
        own_dovecot.start()
        wait_for(
            lambda: running.connects() >= connects + 2, "both folders reconnected", timeout_s=WAIT_S
        )
        wait_for(
            lambda: running.recorder.count(inbox) > before,
            "event for mail meanwhile",
            timeout_s=WAIT_S,
        )
        wait_for(lambda: running.idling(2), "idling again", timeout_s=WAIT_S)


def test_server_without_changes_is_not_resynced_on_reconnect(
    settings: Settings, own_dovecot: LocalDovecot, redis_url: str
) -> None:
    """CONDSTORE proves nothing changed across a reconnect: no needless sync."""
    user = MailUser(own_dovecot, "quiet", "pw-quiet")
    own_dovecot.add_user(user.name, user.password)
    time.sleep(1.1)  # Dovecot re-reads its passwd-file by mtime, in whole seconds
    _, inbox, _ = connect_grant(settings, user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), "both folders idling", timeout_s=WAIT_S)
        assert running.listener is not None
        connects = running.connects()
        time.sleep(1.2)  # the connect-time events' debounce window passes
        before = running.recorder.count(inbox)
        own_dovecot.stop()
        own_dovecot.start()
        wait_for(
            lambda: running.connects() >= connects + 2, "both folders reconnected", timeout_s=WAIT_S
        )
        time.sleep(1.5)  # time for an enqueue, which must not come
        assert running.recorder.count(inbox) == before


def test_idle_is_renewed_without_dropping_the_connection(
    settings: Settings, mail_user: MailUser, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.listener import idle

    monkeypatch.setattr(idle, "idle_renew_s", lambda provider, rng=None: 0.5)
    _, inbox, _ = connect_grant(settings, mail_user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), "both folders idling", timeout_s=WAIT_S)
        time.sleep(2.0)  # several DONE/IDLE rounds
        assert running.listener is not None
        assert all(w.connects == 1 for w in running.listener.watchers())
        before = running.recorder.count(inbox)
        append(mail_user.server, mail_user.name, mail_user.password, make_message("after renew"))
        wait_for(
            lambda: running.recorder.count(inbox) > before, "event after renewals", timeout_s=WAIT_S
        )


def test_grant_connections_count_against_the_account_cap(
    settings: Settings, mail_user: MailUser, redis_url: str, sync_redis: redis.Redis[bytes]
) -> None:
    grant_id, _, _ = connect_grant(settings, mail_user)
    # workers hold 4 of the generic preset's 5 slots: only one folder may connect
    far = int(time.time() * 1000) + 60_000
    sync_redis.zadd(conn_key(grant_id), {f"worker:test:{i}": far for i in range(4)})
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(1), "one folder idling", timeout_s=WAIT_S)
        time.sleep(1.0)  # time for the waiting folder to connect, which it must not
        assert running.states().get(WatchState.IDLING, 0) == 1
        assert running.states().get(WatchState.WAITING_SLOT, 0) == 1
        assert sync_redis.zcard(conn_key(grant_id)) == 5
        sync_redis.zrem(conn_key(grant_id), "worker:test:0")
        wait_for(lambda: running.idling(2), "second folder idling", timeout_s=20)


def test_two_listeners_split_grants_evenly_and_hand_over_on_a_clean_stop(
    settings: Settings, _mail_user_pool: Iterator[MailUser], redis_url: str
) -> None:
    """(A hard kill is covered with real processes in test_listener_processes.py.)"""
    grants = [connect_grant(settings, next(_mail_user_pool))[0] for _ in range(6)]
    first = RunningListener(settings, FAST, redis_url, "L1").__enter__()
    second = RunningListener(settings, FAST, redis_url, "L2").__enter__()
    try:
        assert first.listener is not None and second.listener is not None
        a, b = first.listener, second.listener
        wait_for(
            lambda: len(a.held) == 3 and len(b.held) == 3,
            "an even split of six grants",
            timeout_s=WAIT_S,
        )
        assert set(a.held) | set(b.held) == set(grants)
        assert not set(a.held) & set(b.held)
        wait_for(
            lambda: first.idling(6) and second.idling(6),
            "all twelve folders idling",
            timeout_s=WAIT_S,
        )
        first.stop()  # releases its leases: no need to wait for them to lapse
        stopped = time.monotonic()
        wait_for(lambda: set(b.held) == set(grants), "handover", timeout_s=WAIT_S)
        assert time.monotonic() - stopped < 2 * FAST.lease_renew_s + 1
        wait_for(lambda: second.idling(12), "all twelve folders idling on L2", timeout_s=WAIT_S)
    finally:
        first.stop()
        second.stop()


def test_a_flushed_redis_costs_no_reconnect(
    settings: Settings, mail_user: MailUser, redis_url: str, sync_redis: redis.Redis[bytes]
) -> None:
    grant_id, inbox, _ = connect_grant(settings, mail_user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), "both folders idling", timeout_s=WAIT_S)
        connects = running.connects()
        sync_redis.flushall()
        time.sleep(3 * FAST.lease_renew_s)  # several lease renewals
        assert sync_redis.get(lease_key(grant_id)) == b"L1"  # taken again, not restarted
        assert sync_redis.zcard(conn_key(grant_id)) == 2  # both open connections count again
        assert running.connects() == connects
        time.sleep(1.2)  # the last change's debounce window passes
        before = running.recorder.count(inbox)
        append(mail_user.server, mail_user.name, mail_user.password, make_message("after flush"))
        wait_for(
            lambda: running.recorder.count(inbox) > before,
            "event after the flush",
            timeout_s=WAIT_S,
        )


def test_uidvalidity_change_ends_the_session_and_is_reported(
    settings: Settings, mail_user: MailUser, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dovecot answers the next DONE with BYE; the listener reconnects and reports it."""
    from pipeline.listener import idle

    monkeypatch.setattr(idle, "idle_renew_s", lambda provider, rng=None: 1.0)
    append(mail_user.server, mail_user.name, mail_user.password, make_message("old"))
    _, inbox, _ = connect_grant(settings, mail_user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), "both folders idling", timeout_s=WAIT_S)
        connects = running.connects()
        time.sleep(1.2)  # the connect-time events' debounce window passes
        before = running.recorder.count(inbox)
        mail_user.server.doveadm(
            "mailbox", "update", "-u", mail_user.name, "--uid-validity", "2000000", "INBOX"
        )
        wait_for(
            lambda: running.connects() > connects, "a reconnect after the BYE", timeout_s=WAIT_S
        )
        wait_for(
            lambda: running.recorder.count(inbox) > before,
            "event after the change",
            timeout_s=WAIT_S,
        )


def test_an_operators_max_connections_override_is_respected(
    settings: Settings, mail_user: MailUser, redis_url: str, sync_redis: redis.Redis[bytes]
) -> None:
    """``imap-pipeline:limits:<provider>`` (pipeline.limits's overrides) caps listeners too:
    with 2 connections one is kept for sync and the API, so only the Inbox is watched."""
    sync_redis.hset("imap-pipeline:limits:generic", "max_connections", "2")
    grant_id, inbox, sent = connect_grant(settings, mail_user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(1), "one folder idling", timeout_s=WAIT_S)
        time.sleep(1.0)  # time for the waiting folder to connect, which it must not
        assert running.listener is not None
        states = {w.target.folder_id: w.state for w in running.listener.watchers()}
        assert states == {inbox: WatchState.IDLING, sent: WatchState.WAITING_SLOT}
        assert [m.decode() for m in sync_redis.zrange(conn_key(grant_id), 0, -1)] == [
            f"listener:L1:{inbox}"
        ]
        # operators see why Sent is not watched (`imap-pipeline limits show --grant`)
        wait_for(
            lambda: sent in read_status(sync_redis, grant_id), "Sent's status", timeout_s=WAIT_S
        )
        status = read_status(sync_redis, grant_id)[sent]
        assert status["state"] == "waiting_slot"
        assert "only the Inbox is watched" in status["error"]


def test_no_login_while_the_account_is_in_the_shared_backoff(
    settings: Settings, mail_user: MailUser, redis_url: str, sync_redis: redis.Redis[bytes]
) -> None:
    """A throttle that workers recorded (pipeline.limits) holds the listener back too."""
    grant_id, _, _ = connect_grant(settings, mail_user)
    sync_redis.set(f"imap-pipeline:backoff:a:{grant_id}", "1", px=2500)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        time.sleep(1.0)  # time to connect, which it must not during the back-off
        assert running.connects() == 0
        assert running.states().get(WatchState.BACKOFF, 0) == 2
        wait_for(
            lambda: running.idling(2), "both folders idling after the back-off", timeout_s=WAIT_S
        )


def test_a_server_a_user_named_is_checked_again_before_the_listener_connects(
    settings: Settings, mail_user: MailUser, redis_url: str
) -> None:
    # Made as the API makes it (the host checked, loopback allowed there); the listener checks
    # again with its own settings: without loopback allowed it never connects, with it, it does.
    loopback = AddressPolicy.of(["127.0.0.0/8"])
    create_folder(mail_user.server, mail_user.name, mail_user.password, mail_user.folder("Sent"))
    with session_scope(settings.require_database_url()) as db:
        grant = create_grant(db, settings, grant_request(mail_user), policy=loopback).grant
        db.add_all(
            [
                Folder(grant_id=grant.id, name="INBOX", raw_name="INBOX", role="inbox"),
                Folder(grant_id=grant.id, name="Sent", raw_name="Sent", role="sent"),
            ]
        )
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        assert running.listener is not None
        wait_for(
            lambda: any(
                "may connect to" in (w.last_error or "") for w in running.listener.watchers()
            ),
            "the host refused at connect time",
            timeout_s=WAIT_S,
        )
        assert running.connects() == 0
    allowed = settings.model_copy(update={"mail_allowed_networks": loopback.allowed_networks})
    with RunningListener(allowed, FAST, redis_url, "L2") as running:
        wait_for(lambda: running.idling(2), "both folders idling", timeout_s=WAIT_S)
