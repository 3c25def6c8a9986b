"""The UIDVALIDITY sweep's stop rule (:func:`pipeline.maintenance.sweep.check_grant`) on the fake
IMAP session and the rolled-back store: a folder renumbered on every look is stopped after
``UIDVALIDITY_STOP_AFTER`` changes in a row (only the folder, unless it is the Inbox), looked
at again after its back-off, and resumed when the server kept the value it last showed.

Reindexing on real servers after a sweep, and the sweep's polls, are
tests/integration/maintenance/test_uidvalidity_sweep.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.folders.state import FolderState
from pipeline.grants.state import GrantSyncState
from pipeline.maintenance.sweep import (
    STOPPED_DETAIL,
    STOPPED_RETRY_S,
    UIDVALIDITY_STOP_AFTER,
    SweepReport,
    check_grant,
)
from pipeline.sync.run import sync_folder
from tests.support.mail import make_message
from tests.support.sync_account import Account, deliver

pytestmark = pytest.mark.services


def sweep(account: Account, now: datetime | None = None) -> SweepReport:
    """One grant check on a fresh session, as the beat task runs it; returns what it found."""
    enqueued: list[str] = []
    imap = account.mailbox.session()
    report = check_grant(
        account.sessions,
        imap,  # type: ignore[arg-type]
        account.grant_id,
        now=now or datetime.now(UTC),
        enqueue_sync=enqueued.append,
    )
    assert sorted(enqueued) == sorted(report.changed + report.resumed + report.polled)
    return report


def resync(account: Account, folder_id: str) -> None:
    """What the enqueued ``pipeline.sync.folder`` task does, inline, on a fresh session."""
    imap = account.mailbox.session()
    outcome = sync_folder(account.sessions, account.settings, imap, account.grant_id, folder_id)  # type: ignore[arg-type]
    while outcome.more:
        outcome = sync_folder(account.sessions, account.settings, imap, account.grant_id, folder_id)  # type: ignore[arg-type]


def test_a_folder_renumbered_on_every_sweep_is_stopped_then_retried(account: Account) -> None:
    account.mailbox.add_folder("Work")
    account.mailbox.deliver("Work", make_message("w"))
    deliver(account, "inbox 0")
    account.sync()
    work = account.folder("Work").id
    report = SweepReport.empty()
    for n in range(1, UIDVALIDITY_STOP_AFTER + 1):
        account.mailbox.renumber("Work", 3000000 + n)
        report = sweep(account)
        if n < UIDVALIDITY_STOP_AFTER:
            assert report.changed == [work]
            resync(account, work)
    assert report.stopped == [work]
    assert not report.grant_stopped  # not the Inbox: only the folder stops
    row = account.folder("Work")
    assert (row.state, row.state_detail) == (FolderState.STOPPED, STOPPED_DETAIL)
    assert row.retry_at is not None
    assert row.retry_at - datetime.now(UTC) > timedelta(seconds=STOPPED_RETRY_S - 60)
    assert account.grant().sync_state == GrantSyncState.SYNCED
    others = sorted(account.folder(name).id for name in ("INBOX", "Sent"))
    assert sorted(sweep(account).same) == others  # the stopped one is not asked

    # hours later the server has kept the value it last showed: the folder resumes
    later = datetime.now(UTC) + timedelta(seconds=STOPPED_RETRY_S + 1)
    report = sweep(account, now=later)
    assert report.resumed == [work]
    assert account.folder("Work").state == FolderState.SYNCING
