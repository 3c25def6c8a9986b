"""SELECT on servers that leave out [UIDNEXT] (Courier-IMAP sends it only with STATUS)."""

from __future__ import annotations

from pipeline.imap import Endpoint, open_session
from tests.support.fake_imap import FakeFolder, FakeImapConfig, FakeImapServer, sample_message


def endpoint(server: FakeImapServer) -> Endpoint:
    return Endpoint(host="127.0.0.1", port=server.port, tls="plain", username="user", timeout_s=30)


def test_uidnext_missing_from_select_comes_from_a_status_sent_before_the_select() -> None:
    folders = [FakeFolder(b"INBOX", [sample_message(1), sample_message(2)]), FakeFolder(b"Sent")]
    config = FakeImapConfig(folders=folders, select_uidnext=False)
    with FakeImapServer(config) as server, open_session(endpoint(server), "pw") as imap:
        start = len(server.command_names())
        assert imap.select("INBOX").uidnext is None  # who does not ask pays nothing more
        first = imap.select("INBOX", want_uidnext=True)
        inbox = imap.select("INBOX", want_uidnext=True)
        sent = imap.select("Sent", want_uidnext=True)
        names = server.command_names()[start:]
    assert (first.uidnext, inbox.uidnext, sent.uidnext) == (3, 3, 1)
    # The first such SELECT of a session learns that UIDNEXT is missing and is sent again
    # after its STATUS; from then on the STATUS goes first, so mail arriving between the two
    # gets a UID at or above the UIDNEXT returned and a "synced up to UIDNEXT" mark after a
    # search of the selected folder cannot skip it.
    assert names == [
        "EXAMINE",
        "EXAMINE", "STATUS", "EXAMINE",
        "STATUS", "EXAMINE",
        "STATUS", "EXAMINE",
    ]  # fmt: skip


def test_a_server_sending_uidnext_with_select_costs_no_status() -> None:
    with FakeImapServer(FakeImapConfig()) as server, open_session(endpoint(server), "pw") as imap:
        start = len(server.command_names())
        info = imap.select("INBOX", want_uidnext=True)
        names = server.command_names()[start:]
    assert info.uidnext is not None
    assert names == ["EXAMINE"]
