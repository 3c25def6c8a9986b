"""UID SEARCH of the server path against the scriptable fake server: folders, deadline."""

from __future__ import annotations

import time

import pytest

from pipeline.errors import ImapError
from pipeline.imap import Endpoint, open_session
from pipeline.search import criteria, server
from tests.support.fake_imap import FakeImapConfig, FakeImapServer, Hostility

DEADLINE_S = 1.0


def _endpoint(port: int) -> Endpoint:
    return Endpoint("127.0.0.1", port, "plain", "alice", timeout_s=30)


def test_each_folder_is_searched_and_a_vanished_one_matches_nothing() -> None:
    folders = [server.FolderRef("f1", "INBOX"), server.FolderRef("f2", "Gone-Away")]
    with (
        FakeImapServer(FakeImapConfig()) as fake,
        open_session(_endpoint(fake.port), "secret") as imap,
    ):
        found = server.search_uids(imap, folders, criteria.parse("ALL"), deadline_s=10)
    assert set(found) == {"f1"}
    uidvalidity, uids = found["f1"]
    assert uidvalidity > 0 and uids  # the fake's INBOX holds sample messages


def test_a_server_that_never_answers_the_search_costs_the_deadline_only() -> None:
    hang = FakeImapConfig(hostile={"SEARCH": Hostility("hang")})
    with FakeImapServer(hang) as fake:
        imap = open_session(_endpoint(fake.port), "secret")
        started = time.monotonic()
        with pytest.raises(ImapError):
            server.search_uids(
                imap,
                [server.FolderRef("f1", "INBOX")],
                criteria.parse("TEXT x"),
                deadline_s=DEADLINE_S,
            )
        assert time.monotonic() - started < DEADLINE_S + 2
        imap.close()
