"""The fake IMAP server (tests/support/fake_imap.py) behaves as a normal server for ordinary
clients (imaplib, imap-tools), and each hostile script does what it says."""

from __future__ import annotations

import imaplib
import socket
import ssl
import time

import pytest
from imap_tools import AND, MailBox, MailBoxStartTls, MailBoxUnencrypted

from tests.support.fake_imap import (
    SCRIPTS,
    FakeFolder,
    FakeImapConfig,
    FakeImapProcess,
    FakeImapServer,
    Hostility,
    Step,
    config_from_args,
    many_folders,
    sample_message,
)
from tests.support.services import TlsFiles

TIMEOUT_S = 30


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("fake-imap-tls"))


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    return sock


def _read_at_least(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_imap_tools_syncs_the_default_mailbox() -> None:
    with FakeImapServer() as server, MailBoxUnencrypted("127.0.0.1", server.port, TIMEOUT_S) as box:
        box.login("user", "anything", initial_folder=None)
        assert [f.name for f in box.folder.list()] == ["INBOX", "Sent"]
        box.folder.set("INBOX", readonly=True)
        messages = list(box.fetch(AND(all=True), mark_seen=False))
        assert [m.subject for m in messages] == [f"Fake message {i}" for i in (1, 2, 3)]
        assert [int(m.uid or 0) for m in messages] == [1, 2, 3]
        status = box.folder.status("INBOX")
        assert status["MESSAGES"] == 3
        assert status["UIDNEXT"] == 4
        box.idle.start()
        assert box.idle.poll(timeout=0.1) == []
        box.idle.stop()
    assert "LOGOUT" in server.command_names()


def test_imaplib_select_search_fetch_and_append() -> None:
    with FakeImapServer() as server:
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        conn.login("user", "secret")
        typ, data = conn.select('"INBOX"', readonly=True)
        assert (typ, data) == ("OK", [b"3"])
        assert conn.response("UIDVALIDITY") == ("UIDVALIDITY", [b"1000"])
        assert conn.response("UIDNEXT")[1] == [b"4"]
        assert conn.uid("SEARCH", "UID", "2:*") == ("OK", [b"2 3"])
        assert conn.uid("SEARCH", "SINCE", "1-Jan-2000") == ("OK", [b"1 2 3"])
        typ, data = conn.uid("FETCH", "2", "(UID RFC822.SIZE INTERNALDATE FLAGS BODY.PEEK[])")
        assert typ == "OK"
        assert isinstance(data[0], tuple)
        assert data[0][1] == sample_message(2)
        assert b"RFC822.SIZE %d" % len(sample_message(2)) in data[0][0]
        assert conn.append('"Sent"', None, None, b"Subject: x\r\n\r\nhi\r\n")[0] == "OK"
        assert conn.status('"Sent"', "(MESSAGES UIDNEXT UIDVALIDITY)")[1] == [
            b'"Sent" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1000 UNSEEN 0)'
        ]
        assert conn.noop()[0] == "OK"
        conn.logout()


def test_a_configured_password_is_enforced() -> None:
    with FakeImapServer(FakeImapConfig(password="right")) as server:
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login("user", "wrong")
        assert conn.login("user", "right")[0] == "OK"
        conn.logout()


def test_implicit_tls_and_starttls(tls: TlsFiles) -> None:
    ctx = ssl.create_default_context(cafile=str(tls.ca_file))
    ssl_config = FakeImapConfig(tls="ssl", cert_file=tls.cert_file, key_file=tls.key_file)
    with (
        FakeImapServer(ssl_config) as server,
        MailBox("127.0.0.1", server.port, TIMEOUT_S, ssl_context=ctx) as box,
    ):
        box.login("user", "pw", initial_folder="INBOX")
        assert len(box.uids()) == 3
    starttls = FakeImapConfig(tls="starttls", cert_file=tls.cert_file, key_file=tls.key_file)
    with (
        FakeImapServer(starttls) as server,
        MailBoxStartTls("127.0.0.1", server.port, TIMEOUT_S, ssl_context=ctx) as box,
    ):
        box.login("user", "pw", initial_folder="INBOX")
        assert len(box.uids()) == 3


def test_eight_bit_folder_names_round_trip_as_bytes() -> None:
    name = b"Caf\xe9 \xc3\xa9t\xc3\xa9"
    config = FakeImapConfig(folders=[FakeFolder(b"INBOX"), FakeFolder(name, [sample_message(1)])])
    with FakeImapServer(config) as server:
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        conn.login("user", "pw")
        assert conn.list()[1][1] == b'(\\HasNoChildren) "/" "' + name + b'"'
        assert conn.select(b'"' + name + b'"', readonly=True) == ("OK", [b"1"])  # type: ignore[arg-type]
        conn.logout()


def test_uidvalidity_can_change_every_session_and_folders_can_be_many() -> None:
    config = FakeImapConfig(uidvalidity_per_session=True)
    seen = set()
    with FakeImapServer(config) as server:
        for _ in range(3):
            conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
            conn.login("user", "pw")
            conn.select("INBOX")
            seen.add(conn.response("UIDVALIDITY")[1][0])
            conn.logout()
    assert len(seen) == 3
    with FakeImapServer(FakeImapConfig(folders=many_folders(10_000))) as server:
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        conn.login("user", "pw")
        assert len(conn.list()[1]) == 10_000
        conn.logout()


def test_greeting_literal_announces_two_gigabytes_and_streams() -> None:
    config = FakeImapConfig(greeting=Hostility("literal", 2**31))
    with FakeImapServer(config) as server:
        sock = _raw(server.port)
        data = _read_at_least(sock, 1_000_000)
        sock.close()
    assert data.startswith(b"* OK {2147483648}\r\naaaa")
    assert len(data) >= 1_000_000


def test_flood_answers_a_command_with_endless_untagged_lines() -> None:
    with FakeImapServer(FakeImapConfig(hostile={"SEARCH": Hostility("flood")})) as server:
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        conn.login("user", "pw")
        conn.select("INBOX")
        sock = conn.socket()
        sock.sendall(b"X1 UID SEARCH ALL\r\n")
        data = _read_at_least(sock, 5_000_000)
        sock.close()
    assert data.startswith(b"* SEARCH 1 2 3")
    assert data.count(b"\r\n") > 1000
    assert b"X1 " not in data  # never completed


def test_trickle_sends_one_byte_then_waits_its_interval() -> None:
    # An interval far longer than any scheduling stall: the first read can only ever see one
    # byte, however loaded the machine (a 1 ms interval let a late reader see several).
    config = FakeImapConfig(hostile={"NOOP": Hostility("trickle", 60.0)})
    with FakeImapServer(config) as server:
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        sock = conn.socket()
        sock.sendall(b"T1 NOOP\r\n")
        assert sock.recv(100) == b"T"
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):  # the second byte is a minute away
            sock.recv(100)
        sock.close()


def test_trickle_sends_the_whole_normal_answer_paced() -> None:
    answer = b"T1 OK NOOP completed\r\n"
    interval_s = 0.01
    config = FakeImapConfig(hostile={"NOOP": Hostility("trickle", interval_s)})
    with FakeImapServer(config) as server:
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        sock = conn.socket()
        started = time.monotonic()
        sock.sendall(b"T1 NOOP\r\n")
        data = _read_at_least(sock, len(answer))
        took = time.monotonic() - started
        sock.close()
    assert data == answer
    # a lower bound only (load can only make it slower): one interval after every byte
    assert took >= (len(answer) - 1) * interval_s


def test_unrequested_fetch_nested_and_malformed() -> None:
    config = FakeImapConfig(
        hostile={
            "FETCH": Hostility("unrequested", 5),
            "STATUS": Hostility("nested", 1000),
            "NOOP": Hostility("malformed"),
        }
    )
    with FakeImapServer(config) as server:
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        conn.login("user", "pw")
        conn.select("INBOX")
        typ, data = conn.uid("FETCH", "1", "(UID BODY.PEEK[])")
        assert typ == "OK"
        uids = [item[0].split(b" ")[2] for item in data if isinstance(item, tuple)]
        assert uids == [b"900000", b"900001", b"900002", b"900003", b"900004", b"1"]
        sock = conn.socket()
        sock.sendall(b"S1 STATUS INBOX (MESSAGES)\r\n")
        nested = _read_at_least(sock, 2000)
        assert b"(" * 1000 in nested
        conn.shutdown()
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        sock = conn.socket()
        sock.sendall(b"N1 NOOP\r\n")
        garbage = b""
        while b"N1 OK" not in garbage:
            chunk = sock.recv(65536)
            assert chunk
            garbage += chunk
        assert b"* \xff\xfe\x00 binary\r\n" in garbage
        conn.shutdown()


def test_a_separate_process_serves_a_script() -> None:
    with FakeImapProcess(script="eight-bit-folder") as server:
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        conn.login("user", "pw")
        assert len(conn.list()[1]) == 3
        conn.logout()
    assert server.process is not None and server.process.returncode is not None


def test_every_script_and_command_line_spec_builds_a_configuration() -> None:
    for name in SCRIPTS:
        config, port = config_from_args(["--script", name])
        assert port == 0
        assert isinstance(config, FakeImapConfig)
    config, _ = config_from_args(["--on", "fetch=trickle:5@INBOX", "--greeting", "literal:10"])
    assert config.hostile["FETCH"] == Hostility("trickle", 5.0, b"INBOX")
    assert config.greeting == Hostility("literal", 10)


def test_pushed_lines_and_dropped_connections_reach_every_client() -> None:
    condstore = FakeImapConfig(capabilities="IMAP4rev1 IDLE CONDSTORE", password="good")
    with FakeImapServer(condstore) as server:
        conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=TIMEOUT_S)
        try:
            with pytest.raises(imaplib.IMAP4.error):
                conn.login("user", "bad")
            conn.login("user", "good")
            assert server.logins == 2
            conn.select("INBOX", readonly=True)
            assert conn.response("HIGHESTMODSEQ") == ("HIGHESTMODSEQ", [b"1"])
            server.pending_noop.append(b"* 7 EXISTS")
            conn.noop()
            assert conn.response("EXISTS") == ("EXISTS", [b"3", b"7"])  # SELECT's, then NOOP's
            server.push(b"* 8 EXISTS")
            assert conn.readline() == b"* 8 EXISTS\r\n"
            server.drop_all()
            assert conn.sock.recv(100) == b""  # closed by the server
        finally:
            conn.shutdown()


def test_idle_misbehaves_after_its_continuation_and_done_is_recorded() -> None:
    flood = Hostility.parse("+flood:* 9 EXISTS")
    assert flood == Hostility("flood", b"* 9 EXISTS", idling=True)
    with FakeImapServer(FakeImapConfig(hostile={"IDLE": flood})) as server:
        sock = _raw(server.port)
        sock.sendall(b"a1 IDLE\r\n")
        data = _read_at_least(sock, 1000)
        assert data.split(b"\r\n")[1:4] == [b"+ idling", b"* 9 EXISTS", b"* 9 EXISTS"]
        sock.close()
    with FakeImapServer() as server:
        sock = _raw(server.port)
        sock.sendall(b"a1 IDLE\r\nDONE\r\na2 LOGOUT\r\n")
        _read_at_least(sock, 10_000)
        sock.close()
        assert server.command_names() == ["IDLE", "DONE", "LOGOUT"]


def test_drop_answers_then_closes_and_bye_says_its_text() -> None:
    drop = FakeImapConfig(hostile={"EXAMINE": Hostility("drop")})
    with FakeImapServer(drop) as server:
        sock = _raw(server.port)
        sock.sendall(b"a1 EXAMINE INBOX\r\n")
        assert _read_at_least(sock, 10_000).endswith(b"a1 OK [READ-ONLY] EXAMINE completed\r\n")
        sock.close()
    bye = FakeImapConfig(greeting=Hostility.parse("bye:Too many connections"))
    with FakeImapServer(bye) as server:
        sock = _raw(server.port)
        assert _read_at_least(sock, 10_000) == b"* BYE Too many connections\r\n"
        sock.close()


def test_a_script_is_played_verbatim_and_answers_late_when_told() -> None:
    script = [Step(None, b"* OK hi\r\n"), Step("NOOP", b"{tag} OK {1}\r\n", then=b"x")]
    with FakeImapServer(FakeImapConfig(script=script)) as server:
        sock = _raw(server.port)
        sock.sendall(b"t7 NOOP\r\n")
        assert _read_at_least(sock, 100_000).startswith(b"* OK hi\r\nt7 OK {1}\r\nxxxx")
        sock.close()
    with FakeImapServer(FakeImapConfig(answer_delay_s=0.3)) as server:
        sock = _raw(server.port)
        sock.recv(1000)  # the greeting
        started = time.monotonic()
        sock.sendall(b"a1 NOOP\r\n")
        assert _read_at_least(sock, 5) == b"a1 OK NOOP completed\r\n"
        assert time.monotonic() - started >= 0.3
        sock.close()
