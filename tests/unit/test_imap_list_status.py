"""LIST-STATUS (RFC 5819): its STATUS lines read, and what a server that misuses it costs."""

from __future__ import annotations

import pytest

from pipeline.errors import ImapLimitError
from pipeline.imap import Endpoint, FolderStatus, open_session
from pipeline.imap.responses import STATUS_LINE, folder_status, unquote_name
from tests.support.fake_imap import CAPABILITIES, FakeImapConfig, FakeImapServer, Hostility


def parse(line: bytes) -> tuple[str, FolderStatus | None] | None:
    match = STATUS_LINE.match(line)
    if match is None:
        return None
    name = unquote_name(match["name"]).decode("latin-1")
    return name, folder_status(match["items"].decode())


def test_quoted_atom_and_escaped_names() -> None:
    assert parse(b'"Old Mail" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 7 UNSEEN 1)') == (
        "Old Mail",
        FolderStatus(messages=2, uidnext=3, uidvalidity=7, unseen=1),
    )
    assert parse(b"INBOX.Sent (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 9 HIGHESTMODSEQ 4)") == (
        "INBOX.Sent",
        FolderStatus(messages=0, uidnext=1, uidvalidity=9, highestmodseq=4),
    )
    escaped = parse(b'"say \\"hi\\" \\\\ there" (UIDVALIDITY 5)')
    assert escaped is not None and escaped[0] == 'say "hi" \\ there'
    assert parse(b"&AOQ-rger (UIDVALIDITY 5)") == (
        "&AOQ-rger",
        FolderStatus(messages=0, uidnext=None, uidvalidity=5),
    )


def test_lines_that_are_not_a_usable_status_are_left_to_a_status_command() -> None:
    assert parse(b'"Trash" (MESSAGES 2 UIDNEXT 3)') == ("Trash", None)  # no UIDVALIDITY
    assert parse(b'"Trash" (MESSAGES x UIDVALIDITY 3)') == ("Trash", None)
    assert parse(b"{5}") is None  # a name sent as a literal
    assert parse(b'"a" (UIDVALIDITY 1) trailing') is None


def endpoint(server: FakeImapServer) -> Endpoint:
    return Endpoint(host="127.0.0.1", port=server.port, tls="plain", username="user", timeout_s=30)


def test_folders_a_list_status_leaves_out_are_asked_one_by_one() -> None:
    """A server that announces LIST-STATUS but answers the LIST without STATUS lines (or
    leaves a folder out) costs a STATUS per folder, never a wrong or missing answer."""
    config = FakeImapConfig(capabilities=CAPABILITIES + " LIST-STATUS")
    with FakeImapServer(config) as server, open_session(endpoint(server), "pw") as imap:
        one_by_one = {name: imap.status(name) for name in ("INBOX", "Sent")}
        start = len(server.command_names())
        assert imap.statuses(["INBOX", "Sent", "Gone"]) == one_by_one
        assert server.command_names()[start:] == ["LIST", "STATUS", "STATUS", "STATUS"]


def test_a_list_status_flood_breaks_the_bound_not_the_worker() -> None:
    config = FakeImapConfig(
        capabilities=CAPABILITIES + " LIST-STATUS", hostile={"LIST": Hostility("flood")}
    )
    with FakeImapServer(config) as server, open_session(endpoint(server), "pw") as imap:
        with pytest.raises(ImapLimitError):
            imap.statuses(["INBOX", "Sent"])
        assert imap.broken
