"""The folder sync state machine on a fake IMAP session and the real store (Postgres).

No mail server: :mod:`tests.support.fake_session` plays the account, and the store is the
session's one database with each test in a transaction rolled back at its end
(:mod:`tests.support.rollback`; the run's own commits are savepoint releases), so each test runs
in milliseconds. What a real server does differently (Dovecot, Cyrus, Courier, hostile ones) is
tested in the sync tests of tests/integration.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from pipeline.errors import ImapProtocolError
from pipeline.folders.state import FolderState
from pipeline.grants.state import GrantSyncState
from pipeline.models import SyncFailure
from tests.support.mail import make_message
from tests.support.sync_account import Account, deliver

pytestmark = pytest.mark.services


def test_initial_sync_stores_the_window_notifies_only_the_grant(account: Account) -> None:
    old = datetime.now(UTC) - timedelta(days=120)
    account.mailbox.deliver("INBOX", make_message("too old", date=old), internaldate=old)
    for subject in ("one", "two", "three"):
        deliver(account, subject)

    outcomes = account.sync()

    assert [(o.state, o.stored) for o in outcomes] == [
        (FolderState.SYNCED, 3),
        (FolderState.SYNCED, 0),
    ]
    assert account.subjects() == ["one", "three", "two"]
    inbox = account.folder("INBOX")
    assert (inbox.state, inbox.uidvalidity, inbox.synced_uid, inbox.to_sync) == ("synced", 1, 5, 3)
    grant = account.grant()
    assert grant.sync_state == GrantSyncState.SYNCED
    assert grant.initial_sync_completed_at is not None
    assert account.types() == ["grant.imap_sync_completed"]  # the historical sync is silent


def test_a_run_stopped_by_its_budget_resumes_without_fetching_twice(account: Account) -> None:
    uids = [deliver(account, f"m{i}") for i in range(5)]
    first = account.sync_folder("INBOX", budget_s=0)  # stops after its first batch
    assert (first.state, first.stored, first.remaining) == (FolderState.SYNCING, 2, 3)
    assert account.folder("INBOX").state == "syncing"

    second = account.sync_folder("INBOX")

    assert (second.state, second.stored) == (FolderState.SYNCED, 3)
    fetched = [
        u for name, args in account.mailbox.calls if name == "fetch_messages" for u in args[0]
    ]
    assert sorted(fetched) == uids  # every message exactly once


def test_new_mail_is_fetched_from_uidnext_and_notified(account: Account) -> None:
    deliver(account, "old")
    account.sync()
    new = deliver(account, "brand new")
    account.mailbox.calls.clear()

    account.sync()

    created = [o for t, o in account.events() if t == "message.created"]
    assert [o["subject"] for o in created] == ["brand new"]
    assert [args for name, args in account.mailbox.calls if name == "fetch_messages"] == [([new],)]


@pytest.mark.parametrize("server", ["plain", "condstore", "qresync"])
def test_a_flag_change_is_message_updated(account: Account, server: str) -> None:
    account.mailbox.condstore = server != "plain"
    account.mailbox.qresync = server == "qresync"
    uid = deliver(account, "to read")
    deliver(account, "untouched")
    account.sync()

    account.mailbox.set_flags("INBOX", uid, ["\\Seen", "\\Flagged"])
    account.sync()

    updated = [o for t, o in account.events() if t == "message.updated"]
    assert [(o["subject"], o["unread"], o["starred"]) for o in updated] == [
        ("to read", False, True)
    ]
    if server == "qresync":  # one command gives flags and expunges, no UID diff
        assert account.mailbox.called("fetch_changes_since") == 1
        assert account.mailbox.called("present_uids") == 0


@pytest.mark.parametrize("server", ["plain", "qresync"])
def test_an_expunge_is_message_deleted(account: Account, server: str) -> None:
    account.mailbox.qresync = account.mailbox.condstore = server == "qresync"
    gone = deliver(account, "gone")
    deliver(account, "kept")
    account.sync()
    gone_id = account.message_ids()

    account.mailbox.expunge("INBOX", gone)
    account.sync()

    assert account.subjects() == ["kept"]
    deleted = [o["id"] for t, o in account.events() if t == "message.deleted"]
    assert deleted == list(gone_id - account.message_ids())


def test_a_uidvalidity_change_reindexes_and_keeps_message_ids(account: Account) -> None:
    for subject in ("one", "two", "three"):
        deliver(account, subject)
    account.sync()
    before = account.message_ids()

    new_validity = account.mailbox.renumber("INBOX")
    outcome = account.sync_folder("INBOX")

    assert (outcome.state, outcome.reindexed, outcome.deleted_message_ids) == (
        FolderState.SYNCED,
        True,
        [],
    )
    inbox = account.folder("INBOX")
    assert (inbox.uidvalidity, inbox.reindex_uidvalidity) == (new_validity, None)
    assert account.message_ids() == before  # identity, not UIDs
    assert account.types()[-1:] == ["folder.updated"]
    assert "message.created" not in account.types()


def test_five_uidvalidity_changes_in_a_row_stop_the_folder(account: Account) -> None:
    deliver(account, "one")
    account.sync()

    states = []
    for _ in range(5):
        account.mailbox.renumber("INBOX")
        states.append(account.sync_folder("INBOX").state)

    assert states == [FolderState.SYNCED] * 4 + [FolderState.STOPPED]
    inbox = account.folder("INBOX")
    assert inbox.state == FolderState.STOPPED
    assert inbox.state_detail is not None and "UIDVALIDITY" in inbox.state_detail
    assert account.grant().sync_state == GrantSyncState.STOPPED  # the Inbox stops the grant
    assert account.types()[-1] == "grant.updated"
    selects = account.mailbox.called("select")
    assert account.sync_folder("INBOX").state == FolderState.STOPPED
    assert account.mailbox.called("select") == selects  # a stopped folder is not even selected


def test_a_message_the_server_cannot_return_is_recorded_and_skipped(account: Account) -> None:
    deliver(account, "one")
    broken = deliver(account, "broken")
    deliver(account, "three")
    # the batch, then the message alone twice, each on a fresh session
    account.mailbox.fail("fetch_messages", ImapProtocolError("BYE corrupt"), uid=broken, times=3)

    outcomes = account.sync()

    assert (outcomes[0].state, outcomes[0].stored, outcomes[0].failed) == (FolderState.SYNCED, 2, 1)
    assert account.subjects() == ["one", "three"]
    with account.sessions() as db:
        failures = db.execute(select(SyncFailure.uid, SyncFailure.error)).all()
    assert [(uid, "could not return" in error) for uid, error in failures] == [(broken, True)]
    account.mailbox.calls.clear()
    account.mailbox.set_flags("INBOX", broken, ["\\Seen"])
    account.sync()
    assert account.mailbox.called("fetch_messages") == 0  # recorded: not fetched again


def test_a_failed_run_leaves_the_folder_failed_and_the_next_resumes(account: Account) -> None:
    deliver(account, "one")
    deliver(account, "two")
    account.mailbox.fail("fetch_messages", ImapProtocolError("connection reset"))

    with pytest.raises(ImapProtocolError):
        account.sync_folder("INBOX")  # no reopen: the error is the run's

    inbox = account.folder("INBOX")
    assert inbox.state == FolderState.FAILED
    assert inbox.state_detail == "The last sync failed: connection reset"
    outcome = account.sync_folder("INBOX")
    assert (outcome.state, outcome.stored) == (FolderState.SYNCED, 2)
