"""The UIDVALIDITY sweep against a real Dovecot: changes found by STATUS are reindexed with
message ids kept, and a server that changes UIDVALIDITY on every session is stopped. The stop
rule's stop, back-off and resume on one folder is tests/unit/sync/test_sweep.py; the plan's
spread over the interval, tests/unit/maintenance/test_sweep_plan.py."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from pipeline.config import Settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.dev.ports import free_port
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant, open_grant_session
from pipeline.maintenance.sweep import (
    STOPPED_DETAIL,
    STOPPED_RETRY_S,
    UIDVALIDITY_STOP_AFTER,
    SweepReport,
    check_grant,
)
from pipeline.models import Folder, Grant, Message
from pipeline.sync.run import sync_folder, sync_grant_inline
from tests.support.grants import connect
from tests.support.mail import append, create_folder, imap_login, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services


def sweep(settings: Settings, grant_id: str, now: datetime | None = None) -> SweepReport:
    """One grant check on a fresh session, as the beat task runs it; returns what it found."""
    sessions = sessionmaker_for(settings.require_database_url())
    with sessions.begin() as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        imap = open_grant_session(db, settings, grant)
    enqueued: list[str] = []
    try:
        report = check_grant(
            sessions, imap, grant_id, now=now or datetime.now(UTC), enqueue_sync=enqueued.append
        )
    finally:
        imap.close()
    assert sorted(enqueued) == sorted(report.changed + report.resumed + report.polled)
    return report


def resync(settings: Settings, grant_id: str, folder_id: str) -> None:
    """What the enqueued ``pipeline.sync.folder`` task does, inline, on a fresh session."""
    sessions = sessionmaker_for(settings.require_database_url())
    with sessions.begin() as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        imap = open_grant_session(db, settings, grant)
    try:
        outcome = sync_folder(sessions, settings, imap, grant_id, folder_id)
        while outcome.more:
            outcome = sync_folder(sessions, settings, imap, grant_id, folder_id)
    finally:
        imap.close()


def folder_row(settings: Settings, grant_id: str, raw_name: str) -> dict[str, object]:
    with session_scope(settings.require_database_url()) as db:
        row = (
            db.execute(
                text(
                    "SELECT id, state, state_detail, uidvalidity, uidvalidity_changes, retry_at "
                    "FROM folders WHERE grant_id = :g AND raw_name = :n"
                ),
                {"g": grant_id, "n": raw_name},
            )
            .mappings()
            .one()
        )
        return {k: (str(v) if k == "id" else v) for k, v in row.items()}


def message_ids(settings: Settings, grant_id: str) -> dict[str, str]:
    with session_scope(settings.require_database_url()) as db:
        rows = db.execute(select(Message.subject, Message.id).where(Message.grant_id == grant_id))
        return {subject: message_id for subject, message_id in rows}


def seeded(settings: Settings, user: MailUser, n: int = 3) -> str:
    for i in range(n):
        append(user.server, user.name, user.password, make_message(f"inbox {i}"))
    grant_id = connect(settings, user)
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
    return grant_id


def test_uidvalidity_update_keeps_message_ids(settings: Settings, mail_user: MailUser) -> None:
    grant_id = seeded(settings, mail_user)
    before = message_ids(settings, grant_id)
    inbox = folder_row(settings, grant_id, "INBOX")
    assert sweep(settings, grant_id).same == [inbox["id"]]

    mail_user.server.doveadm(
        "mailbox", "update", "-u", mail_user.name, "--uid-validity", "2000000", "INBOX"
    )
    report = sweep(settings, grant_id)
    assert report.changed == [inbox["id"]]
    assert folder_row(settings, grant_id, "INBOX")["uidvalidity_changes"] == 1
    # the same change seen again before its reindex ran is not counted twice
    assert sweep(settings, grant_id).changed == [inbox["id"]]
    assert folder_row(settings, grant_id, "INBOX")["uidvalidity_changes"] == 1

    resync(settings, grant_id, str(inbox["id"]))
    after = folder_row(settings, grant_id, "INBOX")
    assert after["uidvalidity"] == 2000000
    assert message_ids(settings, grant_id) == before  # same messages, same ids
    assert sweep(settings, grant_id).same == [inbox["id"]]
    assert folder_row(settings, grant_id, "INBOX")["uidvalidity_changes"] == 0


def test_deleted_index_gives_fresh_uids_and_ids_are_kept(
    settings: Settings, mail_user: MailUser
) -> None:
    grant_id = seeded(settings, mail_user)
    before = message_ids(settings, grant_id)
    inbox = folder_row(settings, grant_id, "INBOX")
    maildir = mail_user.server.maildir(mail_user.name)
    for path in [maildir / "dovecot-uidlist", *maildir.glob("dovecot.index*")]:
        path.unlink()
    report = sweep(settings, grant_id)
    assert report.changed == [inbox["id"]]
    resync(settings, grant_id, str(inbox["id"]))
    assert folder_row(settings, grant_id, "INBOX")["uidvalidity"] != inbox["uidvalidity"]
    assert message_ids(settings, grant_id) == before
    with session_scope(settings.require_database_url()) as db:
        assert db.scalar(select(func.count()).select_from(Message)) == len(before)


def test_the_sweep_polls_folders_no_listener_watches(
    settings: Settings, mail_user: MailUser
) -> None:
    server, name, pw = mail_user.server, mail_user.name, mail_user.password
    create_folder(server, name, pw, "Work")
    create_folder(server, name, pw, "Sent")
    append(server, name, pw, make_message("w"), folder="Work")
    grant_id = seeded(settings, mail_user, n=1)
    work = folder_row(settings, grant_id, "Work")["id"]
    assert sweep(settings, grant_id).polled == []  # nothing changed since the sync

    append(server, name, pw, make_message("new in Work"), folder="Work")
    append(server, name, pw, make_message("new in Inbox"))  # the listener's business
    append(server, name, pw, make_message("new in Sent"), folder="Sent")  # the listener's too
    assert sweep(settings, grant_id).polled == [work]
    resync(settings, grant_id, work)
    assert sweep(settings, grant_id).polled == []
    assert "new in Work" in message_ids(settings, grant_id)

    # without a stored HIGHESTMODSEQ (a server without CONDSTORE) an old folder's flags are
    # re-read by the poll's flag refresh, which holds its cap per poll
    # (tests/integration/test_folder_poll.py); the sweep does not add refreshes of its own
    with session_scope(settings.require_database_url()) as db:
        db.execute(
            text(
                "UPDATE folders SET highestmodseq = NULL, "
                "last_synced_at = now() - interval '31 minutes' WHERE id = :f"
            ),
            {"f": work},
        )
    assert sweep(settings, grant_id).polled == []


def test_a_flag_change_in_a_polled_folder_is_seen_through_highestmodseq(
    settings: Settings, mail_user: MailUser
) -> None:
    server, name, pw = mail_user.server, mail_user.name, mail_user.password
    create_folder(server, name, pw, "Work")
    append(server, name, pw, make_message("w"), folder="Work")
    grant_id = seeded(settings, mail_user, n=1)
    work = folder_row(settings, grant_id, "Work")["id"]
    with session_scope(settings.require_database_url()) as db:
        stored = db.scalar(text("SELECT highestmodseq FROM folders WHERE id = :f"), {"f": work})
    assert stored == server.mailbox_status(name, "Work")["highestmodseq"]  # the sync kept it
    assert sweep(settings, grant_id).polled == []
    conn = imap_login(server, name, pw)
    try:
        conn.select('"Work"')
        conn.store("1", "+FLAGS", "(\\Flagged)")
    finally:
        conn.logout()
    assert sweep(settings, grant_id).polled == [work]


class RenumberingProxy:
    """A TCP proxy in front of Dovecot's plain port that adds ``1000 * n`` to every UIDVALIDITY
    of the ``n``-th connection: a server that changes UIDVALIDITY on every session."""

    PATTERN = re.compile(rb"UIDVALIDITY (\d+)")

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.sessions = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            self.sessions += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
            shift = 1000 * self.sessions
            threading.Thread(target=self._pipe, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, shift), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, shift: int) -> None:
        pending = b""
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if not shift:
                    dst.sendall(chunk)
                    continue
                pending += chunk
                complete, _, pending = pending.rpartition(b"\n")
                if complete or _:
                    dst.sendall(
                        self.PATTERN.sub(
                            lambda m: b"UIDVALIDITY %d" % (int(m[1]) + shift), complete + _
                        )
                    )
        except OSError:
            pass  # either side hung up: close both
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


@pytest.fixture
def renumbering(mail_user: MailUser) -> Iterator[RenumberingProxy]:
    proxy = RenumberingProxy(mail_user.server.port)
    yield proxy
    proxy.close()


def test_inbox_renumbered_every_session_stops_the_grant(
    settings: Settings, mail_user: MailUser, renumbering: RenumberingProxy
) -> None:
    for i in range(2):
        append(mail_user.server, mail_user.name, mail_user.password, make_message(f"m{i}"))
    request = GrantRequest(
        email=mail_user.email,
        password=mail_user.password,  # type: ignore[arg-type]
        imap_host="127.0.0.1",
        imap_port=renumbering.port,
        imap_tls="plain",
        allow_plaintext=True,
        imap_username=mail_user.name,
    )
    with session_scope(settings.require_database_url()) as db:
        grant_id = create_grant(db, settings, request).grant.id
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
    before = message_ids(settings, grant_id)
    inbox = folder_row(settings, grant_id, "INBOX")
    # every look counts, a sync's as much as a sweep's: sweep, sync, sweep, sync, sweep
    looks = 0
    for n in range(1, UIDVALIDITY_STOP_AFTER // 2 + 1):
        report = sweep(settings, grant_id)
        assert report.changed == [inbox["id"]], n
        resync(settings, grant_id, str(inbox["id"]))
        assert message_ids(settings, grant_id) == before  # every reindex keeps the ids
        looks += 2
    report = sweep(settings, grant_id)
    assert looks + 1 == UIDVALIDITY_STOP_AFTER
    assert report.stopped == [inbox["id"]]
    assert report.grant_stopped
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        assert grant.sync_state == "stopped"
        assert grant.status_detail is not None and STOPPED_DETAIL in grant.status_detail
        folder = db.get(Folder, inbox["id"])
        assert folder is not None and folder.state_detail == STOPPED_DETAIL
        types = db.scalars(
            text("SELECT type FROM webhook_outbox WHERE grant_id = :g"), {"g": grant_id}
        ).all()
    assert "grant.updated" in types
    # stopped folders are not asked again until their retry is due
    assert sweep(settings, grant_id) == SweepReport.empty()
    # the retry finds the server still renumbering: it stays stopped, the back-off grows
    later = datetime.now(UTC) + timedelta(seconds=STOPPED_RETRY_S + 1)
    report = sweep(settings, grant_id, now=later)
    assert report.still_broken == [inbox["id"]]
    retry_at = folder_row(settings, grant_id, "INBOX")["retry_at"]
    assert isinstance(retry_at, datetime)
    assert retry_at - later > timedelta(seconds=2 * STOPPED_RETRY_S - 60)


def test_mail_deleted_while_the_folder_is_reindexed(
    settings: Settings, mail_user: MailUser
) -> None:
    server, name, pw = mail_user.server, mail_user.name, mail_user.password
    for i in range(30):
        append(server, name, pw, make_message(f"m{i:02}"))
    grant_id = connect(settings, mail_user)
    sessions = sessionmaker_for(settings.require_database_url())
    sync_grant_inline(sessions, settings, grant_id)
    before = message_ids(settings, grant_id)
    inbox = str(folder_row(settings, grant_id, "INBOX")["id"])
    # fresh UIDs: the reindex places every message anew
    maildir = server.maildir(name)
    for path in [maildir / "dovecot-uidlist", *maildir.glob("dovecot.index*")]:
        path.unlink()
    assert sweep(settings, grant_id).changed == [inbox]

    with sessions.begin() as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        imap = open_grant_session(db, settings, grant)
    try:
        first = sync_folder(sessions, settings, imap, grant_id, inbox, budget_s=0)
        assert first.more  # one batch (20 of 30) reindexed, then the budget stopped it
        conn = imap_login(server, name, pw)
        try:  # delete one message already reindexed and one not yet
            conn.select("INBOX")
            for subject in ("m00", "m29"):
                _typ, found = conn.search(None, "SUBJECT", subject)
                conn.store(found[0].decode(), "+FLAGS", "(\\Deleted)")
            conn.expunge()
        finally:
            conn.logout()
        outcome = sync_folder(sessions, settings, imap, grant_id, inbox)
        while outcome.more:
            outcome = sync_folder(sessions, settings, imap, grant_id, inbox)
        # the next incremental run notices the expunge of a message already reindexed; like
        # any expunge it is held as an orphan for the grace period (it may have moved)
        sync_folder(sessions, settings, imap, grant_id, inbox)
        with session_scope(settings.require_database_url()) as db:
            orphaned = db.scalar(
                text("SELECT orphaned_at IS NOT NULL FROM messages WHERE subject = 'm00'")
            )
            assert orphaned
        later = datetime.now(UTC) + timedelta(seconds=settings.sync.orphan_grace_s + 1)
        sync_folder(sessions, settings, imap, grant_id, inbox, now=later)
    finally:
        imap.close()
    after = message_ids(settings, grant_id)
    expected = {s: i for s, i in before.items() if s not in ("m00", "m29")}
    assert after == expected  # the rest kept their ids
    with session_scope(settings.require_database_url()) as db:
        types = db.scalars(
            text("SELECT type FROM webhook_outbox WHERE grant_id = :g"), {"g": grant_id}
        ).all()
    assert "message.created" not in types  # the reindex itself announces nothing new
    assert types.count("message.deleted") == 2  # only the mail that is really gone
