"""The local servers from real binaries: Postgres, Redis and Dovecot, checked from the outside.

Each test starts its own servers on free ports in its own folder, so they run side by side with
the session's shared ones.
"""

from __future__ import annotations

import imaplib
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis
import trustme
from imap_tools import MailBox, MailBoxStartTls, MailBoxUnencrypted

from pipeline.dev.dovecot import DOVECOT_BIN, DOVECOT_START_TIMEOUT_S, LocalDovecot
from pipeline.dev.mailgen import GeneratedMessage, generate
from pipeline.dev.ports import free_port, free_ports, port_in_use
from pipeline.dev.postgres import EmbeddedPostgres, find_postgres_bindir
from pipeline.dev.redis import EmbeddedRedis, find_redis_server
from pipeline.dev.seed import append_imap, seed_maildir
from pipeline.errors import ServiceError

pytestmark = pytest.mark.services

SMALL = (2_000, 30_000)  # attachment sizes that keep seeding instant
FETCH_LINE = re.compile(rb"UID (\d+) INTERNALDATE \"([^\"]+)\" FLAGS \(([^)]*)\)")


def require(what: str, check: object) -> None:
    """Fail (CI) or skip (IMAP_PIPELINE_SKIP_SERVICES=1 locally) when a binary is missing."""
    try:
        if callable(check):
            check()
        elif not check:
            raise ServiceError(f"{what} is not installed")
    except ServiceError as exc:
        if os.environ.get("IMAP_PIPELINE_SKIP_SERVICES") == "1" and os.environ.get("CI") != "true":
            pytest.skip(str(exc))
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalDovecot]:
    """A private Dovecot for one test."""
    require("Dovecot", DOVECOT_BIN.is_file())
    dovecot = LocalDovecot(tmp_path / "dovecot", free_port())
    with dovecot:
        yield dovecot


def fetch_dates_and_flags(box: MailBoxUnencrypted) -> list[tuple[datetime, set[str]]]:
    """(INTERNALDATE, FLAGS) of the selected folder, in UID order, read over IMAP."""
    typ, data = box.client.uid("FETCH", "1:*", "(INTERNALDATE FLAGS)")
    assert typ == "OK"
    rows = []
    for line in data:
        assert isinstance(line, bytes)
        match = FETCH_LINE.search(line)
        assert match, line
        stamp = time.mktime(imaplib.Internaldate2tuple(b'INTERNALDATE "' + match[2] + b'"'))
        flags = {f.decode() for f in match[3].split()} - {"\\Recent"}
        rows.append((int(match[1]), datetime.fromtimestamp(stamp, UTC), flags))
    return [(when, flags) for _, when, flags in sorted(rows, key=lambda r: r[0])]


# --- Postgres ---------------------------------------------------------------------------------


def test_embedded_postgres_creates_the_database_keeps_data_and_stops(tmp_path: Path) -> None:
    require("Postgres", find_postgres_bindir)
    port = free_port()
    pg = EmbeddedPostgres(tmp_path / "pg", port)
    with pg, psycopg.connect(pg.conninfo, autocommit=True) as conn:
        assert pg.url == (
            f"postgresql+psycopg://postgres:{pg.password}@127.0.0.1:{port}/imap_pipeline"
        )
        assert conn.execute("SELECT current_database()").fetchone() == ("imap_pipeline",)
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    assert not port_in_use(port)
    again = EmbeddedPostgres(tmp_path / "pg", port)  # no initdb the second time
    with again, psycopg.connect(again.conninfo) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (42,)


def refused_without_password(pg: EmbeddedPostgres) -> bool:
    try:
        psycopg.connect(
            host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres", connect_timeout=5
        ).close()
    except psycopg.OperationalError as exc:
        return "password" in str(exc)
    return False


def test_embedded_postgres_needs_its_password_which_only_its_owner_can_read(
    tmp_path: Path,
) -> None:
    require("Postgres", find_postgres_bindir)
    with EmbeddedPostgres(tmp_path / "pg", free_port()) as pg:
        assert len(pg.password) >= 24
        assert pg.password_path.stat().st_mode & 0o777 == 0o600
        assert pg.password_path.stat().st_uid == os.geteuid()
        # another local user (or this one without the password) is not the superuser
        assert refused_without_password(pg)
        with psycopg.connect(pg.conninfo) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_a_cluster_made_with_trust_gets_a_password_on_its_next_start(tmp_path: Path) -> None:
    require("Postgres", find_postgres_bindir)
    port = free_port()
    with EmbeddedPostgres(tmp_path / "pg", port) as pg:
        pass
    # what earlier versions left behind: trust for everyone, no password
    (pg.pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    pg.password_path.unlink()
    with EmbeddedPostgres(tmp_path / "pg", port) as again:
        assert refused_without_password(again)
        with psycopg.connect(again.conninfo) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_embedded_postgres_says_which_port_is_taken(tmp_path: Path) -> None:
    require("Postgres", find_postgres_bindir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServiceError, match=f"Port {port} is already in use"):
            EmbeddedPostgres(tmp_path / "pg", port).start()


# --- Redis ------------------------------------------------------------------------------------


def test_embedded_redis_keeps_its_data_in_an_append_only_file(tmp_path: Path) -> None:
    require("Redis", find_redis_server)
    port = free_port()
    with EmbeddedRedis(tmp_path / "redis", port) as rd:
        assert rd.url == f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(rd.url, socket_timeout=5)
        client.rpush("queue", "task-1")
        client.close()
    assert not port_in_use(port)
    assert any((tmp_path / "redis").glob("appendonlydir/*.aof"))
    with EmbeddedRedis(tmp_path / "redis", port) as rd:
        client = redis.Redis.from_url(rd.url, socket_timeout=5)
        assert client.lrange("queue", 0, -1) == [b"task-1"]
        client.close()


# --- Dovecot ----------------------------------------------------------------------------------


def test_dovecot_starts_and_users_can_log_in_at_once(tmp_path: Path) -> None:
    require("Dovecot", DOVECOT_BIN.is_file())
    started = time.monotonic()
    with LocalDovecot(tmp_path / "dovecot", free_port()) as dovecot:
        # ready once it greets (0.1-0.9 s here, cold start included): the bound is the start
        # timeout, since how fast it starts is a benchmark's question, not a pass/fail one
        assert time.monotonic() - started < DOVECOT_START_TIMEOUT_S
        for i in range(5):  # no waiting for Dovecot to re-read a shared passwd-file
            dovecot.add_user(f"user{i}", f"pw{i}")
            with MailBoxUnencrypted(dovecot.host, dovecot.port, timeout=10).login(
                f"user{i}", f"pw{i}"
            ) as box:
                assert "IDLE" in box.client.capabilities
        conn = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=10)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login("user0", "wrong")
        conn.logout()
        dovecot.add_user("user0", "changed")  # a new password for an existing user
    assert not port_in_use(dovecot.port)


def test_dovecot_rejects_names_and_passwords_a_passwd_file_cannot_hold(
    server: LocalDovecot,
) -> None:
    with pytest.raises(ValueError):
        server.add_user("a:b", "pw")
    with pytest.raises(ValueError):
        server.add_user("alice", "pw:with:colons")


def test_seeded_maildir_shows_folders_dates_flags_and_counts_over_imap(
    server: LocalDovecot,
) -> None:
    now = datetime.now(UTC)
    messages = list(generate(150, seed=21, now=now, old_fraction=0.2, attachment_sizes=SMALL))
    server.add_user("seeded", "pw")
    assert seed_maildir(server.maildir("seeded"), messages, owner=server.mail_user) == 150
    window_start = (now - timedelta(days=90)).date()

    with MailBoxUnencrypted(server.host, server.port, timeout=30).login("seeded", "pw") as box:
        listed = {f.name: f.flags for f in box.folder.list()}
        for name in ("INBOX", "Sent", "Archive", "Drafts", "Junk", "Reçus", "Entwürfe/Privat"):
            assert name in listed, listed
        assert "\\Sent" in listed["Sent"] and "\\Junk" in listed["Junk"]
        for folder in {m.folder for m in messages}:
            expected = [m for m in messages if m.folder == folder]  # already oldest first
            box.folder.set(folder, readonly=True)
            rows = fetch_dates_and_flags(box)
            assert [when for when, _ in rows] == [m.internaldate for m in expected], folder
            assert [flags for _, flags in rows] == [set(m.flags) for m in expected], folder
            assert server.mailbox_status("seeded", folder)["messages"] == len(expected)
            # SEARCH SINCE compares INTERNALDATE dates in the server's time zone
            typ, data = box.client.uid("SEARCH", "SINCE", window_start.strftime("%d-%b-%Y"))
            assert typ == "OK"
            in_window = [
                m
                for m in expected
                if datetime.fromtimestamp(m.internaldate.timestamp()).date() >= window_start
            ]
            assert len(data[0].split()) == len(in_window), folder
        # fetching did not mark anything read
        box.folder.set("INBOX", readonly=True)
        unseen = sum("\\Seen" not in m.flags for m in messages if m.folder == "INBOX")
        assert server.mailbox_status("seeded", "INBOX")["unseen"] == unseen


def test_mail_seeded_while_a_session_is_open_appears_and_save_delivers(
    server: LocalDovecot,
) -> None:
    server.add_user("live", "pw")
    now = datetime.now(UTC)
    with MailBoxUnencrypted(server.host, server.port, timeout=30).login("live", "pw") as box:
        assert box.folder.status("INBOX")["MESSAGES"] == 0
        seed_maildir(
            server.maildir("live"),
            [GeneratedMessage("INBOX", now, ("\\Seen",), b"Subject: late\r\n\r\nhi\r\n")],
            owner=server.mail_user,
        )
        box.client.noop()  # the selected session learns of new mail at its next command
        assert box.folder.status("INBOX")["MESSAGES"] == 1
        server.save("live", b"Subject: saved\r\n\r\nhello\r\n")
        box.client.noop()
        assert box.folder.status("INBOX")["MESSAGES"] == 2
    status = server.mailbox_status("live", "INBOX")
    assert status["messages"] == 2 and status["uidnext"] == 3 and status["uidvalidity"] > 0


def test_append_imap_keeps_internaldate_flags_and_creates_folders(server: LocalDovecot) -> None:
    server.add_user("appender", "pw")
    messages = list(
        generate(12, seed=5, now=datetime.now(UTC), attachment_sizes=SMALL, folders={"Reçus": 1})
    )
    assert append_imap(server.host, server.port, "appender", "pw", messages) == 12
    with MailBoxUnencrypted(server.host, server.port, timeout=30).login("appender", "pw") as box:
        box.folder.set("Reçus", readonly=True)
        rows = fetch_dates_and_flags(box)
    assert [when for when, _ in rows] == [m.internaldate for m in messages]
    assert [flags for _, flags in rows] == [set(m.flags) for m in messages]


def test_two_dovecots_run_side_by_side_and_stop_independently(tmp_path: Path) -> None:
    require("Dovecot", DOVECOT_BIN.is_file())
    with (
        LocalDovecot(tmp_path / "one", free_port()) as one,
        LocalDovecot(tmp_path / "two", free_port()) as two,
    ):
        one.add_user("alice", "a")
        two.add_user("bob", "b")
        conn = imaplib.IMAP4(two.host, two.port, timeout=10)
        with pytest.raises(imaplib.IMAP4.error):
            conn.login("alice", "a")  # users are per instance
        conn.logout()
        one.stop()
        assert not port_in_use(one.port)
        with MailBoxUnencrypted(two.host, two.port, timeout=10).login("bob", "b"):
            pass
        one.start()  # restarts in the same folder, mail and users kept
        with MailBoxUnencrypted(one.host, one.port, timeout=10).login("alice", "a"):
            pass


def test_dovecot_offers_starttls_and_implicit_tls_with_the_given_certificate(
    tmp_path: Path,
) -> None:
    require("Dovecot", DOVECOT_BIN.is_file())
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    port, imaps_port = free_ports(2)
    with LocalDovecot(
        tmp_path / "dovecot", port, imaps_port=imaps_port, tls_cert=cert, tls_key=key
    ) as dovecot:
        dovecot.add_user("carol", "pw")
        assert dovecot.imaps_port is not None
        with MailBoxStartTls(dovecot.host, dovecot.port, ssl_context=trusting, timeout=10).login(
            "carol", "pw"
        ) as box:
            assert box.client.sock.version() in ("TLSv1.2", "TLSv1.3")
        with MailBox(dovecot.host, dovecot.imaps_port, ssl_context=trusting, timeout=10).login(
            "carol", "pw"
        ) as box:
            assert box.client.sock.version() in ("TLSv1.2", "TLSv1.3")
        with pytest.raises(ssl.SSLCertVerificationError):
            MailBox(dovecot.host, dovecot.imaps_port, ssl_context=ssl.create_default_context())


def test_two_starttls_dovecots_without_implicit_tls_ports_run_side_by_side(
    tmp_path: Path,
) -> None:
    # Dovecot's built-in defaults carry an imaps listener on 993: an instance that asks for no
    # implicit-TLS port must not inherit it, or a second one fails with "Address in use".
    require("Dovecot", DOVECOT_BIN.is_file())
    issued = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    with (
        LocalDovecot(tmp_path / "one", free_port(), tls_cert=cert, tls_key=key) as one,
        LocalDovecot(tmp_path / "two", free_port(), tls_cert=cert, tls_key=key) as two,
    ):
        assert one.running and two.running


def test_tls_settings_must_come_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        LocalDovecot(tmp_path, 1, tls_cert=tmp_path / "cert.pem")
    with pytest.raises(ValueError, match="imaps_port"):
        LocalDovecot(tmp_path, 1, imaps_port=2)
    with pytest.raises(ValueError, match="two listeners need two ports"):
        LocalDovecot(tmp_path, 7, imaps_port=7, tls_cert=tmp_path / "c", tls_key=tmp_path / "k")


def test_free_ports_are_distinct() -> None:
    """One Dovecot's plain and TLS listeners: two ``free_port()`` calls in a row returned the
    same port once (Dovecot refused its config: "duplicate listener")."""
    ports = free_ports(64)
    assert len(set(ports)) == 64
    assert not any(port_in_use(port) for port in ports)
