"""What readers see while a folder is reindexed (its UIDVALIDITY changed), on the fake IMAP
session and the rolled-back store: the old view, whole and once, until the new one is complete;
then the new one, with the same message ids.

The reindex's steps on real servers (Dovecot, Courier) are tests/integration/test_reindex.py.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Connection

from pipeline.folders.repository import FolderRepository
from pipeline.folders.state import FolderState
from pipeline.messages.filters import MessageFilter
from pipeline.messages.queries import list_messages
from pipeline.search import criteria, store
from tests.support.sync_account import Account, deliver

pytestmark = pytest.mark.services


def listed(
    account: Account, conn: Connection, folder_id: str, query: str | None = None
) -> list[str]:
    """The ids the INBOX's message list gives (with ``search_query_native`` ``query``)."""
    search = None
    if query is not None:
        search = store.condition(criteria.parse(query), [folder_id], grant_id=account.grant_id)
    flt = MessageFilter(folder_ids=[folder_id], search=search)
    return [str(row.id) for row in list_messages(conn, account.grant_id, flt, 50, None)]


def test_readers_see_the_old_view_until_the_new_one_is_complete(
    account: Account, pg_connection: Connection
) -> None:
    for i in range(5):
        deliver(account, f"m{i}")
    account.sync()
    before = account.message_ids()
    inbox = account.folder("INBOX").id
    assert sorted(listed(account, pg_connection, inbox, "UID 1:5")) == sorted(before)

    account.mailbox.renumber("INBOX")  # the same five messages at UIDs 6..10
    partial = account.sync_folder("INBOX", budget_s=0)  # one batch of two, then it stops

    assert partial.more and account.folder("INBOX").state == FolderState.REINDEXING
    during = listed(account, pg_connection, inbox)
    assert sorted(during) == sorted(before)  # whole, and each message once
    assert sorted(listed(account, pg_connection, inbox, "UID 1:5")) == sorted(before)
    assert listed(account, pg_connection, inbox, "UID 6:10") == []
    with account.sessions() as db:
        assert FolderRepository(db).totals([inbox])[inbox].total == 5

    while account.sync_folder("INBOX").more:
        pass

    assert sorted(listed(account, pg_connection, inbox)) == sorted(before)
    assert listed(account, pg_connection, inbox, "UID 1:5") == []
    assert sorted(listed(account, pg_connection, inbox, "UID 6:10")) == sorted(before)
