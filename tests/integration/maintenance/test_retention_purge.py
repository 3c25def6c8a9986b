"""The rolling retention purge on real Postgres, with mail synced from a real Dovecot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from pipeline.config import Settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.maintenance.purge import SYNC_FAILURE_RETENTION_DAYS, purge
from pipeline.models import Attachment, Folder, Message, Placement, SyncFailure, Thread
from pipeline.sync.run import sync_grant_inline
from tests.support.grants import connect
from tests.support.mail import append, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services

NOW = datetime.now(UTC)


def count(settings: Settings, model: type) -> int:
    with session_scope(settings.require_database_url()) as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def test_mail_that_just_crossed_the_window_goes_with_everything_hanging_off_it(
    settings: Settings, mail_user: MailUser
) -> None:
    server, name, pw = mail_user.server, mail_user.name, mail_user.password
    mail = [
        ("old root", 89.0, "<root@example.test>", None),
        ("Re: old root", 30.0, "<reply@example.test>", "<root@example.test>"),
        ("old alone", 88.5, "<alone@example.test>", None),
        ("recent", 1.0, "<recent@example.test>", None),
    ]
    for subject, days, msgid, parent in mail:
        when = NOW - timedelta(days=days)
        raw = make_message(subject, date=when, message_id=msgid, in_reply_to=parent)
        append(server, name, pw, raw, when=when)
    grant_id = connect(settings, mail_user)
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
    with session_scope(settings.require_database_url()) as db:
        ids = {s: i for s, i in db.execute(select(Message.subject, Message.id))}
        threads = {s: t for s, t in db.execute(select(Message.subject, Message.thread_id))}
        assert threads["old root"] == threads["Re: old root"]
        folder = db.scalars(select(Folder)).one()
        db.add(
            Attachment(
                message_id=ids["old alone"],
                grant_id=grant_id,
                filename="a.pdf",
                content_type="application/pdf",
                size=10,
                part_path="2",
            )
        )
        db.add(
            SyncFailure(
                grant_id=grant_id, folder_id=folder.id, uidvalidity=1, uid=99, error="broken"
            )
        )
        db.add(
            SyncFailure(
                grant_id=grant_id, folder_id=folder.id, uidvalidity=1, uid=98, error="old",
                recorded_at=NOW - timedelta(days=SYNC_FAILURE_RETENTION_DAYS + 1),
            )
        )  # fmt: skip
        outbox_before = db.scalar(text("SELECT count(*) FROM webhook_outbox"))

    # two days later the two oldest messages are past the 90-day window
    result = purge(
        sessionmaker_for(settings.require_database_url()),
        retention_days=settings.retention_days,
        now=NOW + timedelta(days=2),
        batch_rows=1,  # many batches
    )
    assert (result.messages, result.threads, result.sync_failures) == (2, 1, 1)
    assert result.complete and result.batches == 3
    with session_scope(settings.require_database_url()) as db:
        assert sorted(db.scalars(select(Message.subject))) == ["Re: old root", "recent"]
        assert db.scalar(select(func.count()).select_from(Placement)) == 2
        assert db.scalar(select(func.count()).select_from(Attachment)) == 0
        # the thread the reply still belongs to stays, the emptied one is gone
        assert db.get(Thread, threads["Re: old root"]) is not None
        assert db.get(Thread, threads["old alone"]) is None
        assert db.scalars(select(SyncFailure.error)).all() == ["broken"]
        # no notification for purged mail
        assert db.scalar(text("SELECT count(*) FROM webhook_outbox")) == outbox_before

    again = purge(
        sessionmaker_for(settings.require_database_url()),
        retention_days=settings.retention_days,
        now=NOW + timedelta(days=2),
    )
    assert (again.messages, again.threads, again.sync_failures) == (0, 0, 0)
    assert count(settings, Message) == 2


def test_a_purge_never_waits_for_a_row_a_sync_holds(
    settings: Settings, mail_user: MailUser
) -> None:
    for days in (95.0, 96.0):
        when = NOW - timedelta(days=days - 10)
        append(mail_user.server, mail_user.name, mail_user.password, make_message(f"d{days}"),
               when=when)  # fmt: skip
    grant_id = connect(settings, mail_user)
    sessions = sessionmaker_for(settings.require_database_url())
    sync_grant_inline(sessions, settings, grant_id)
    assert count(settings, Message) == 2
    holder = sessions()
    try:
        locked = holder.scalars(
            select(Message).where(Message.subject == "d95.0").with_for_update()
        ).one()
        result = purge(sessions, retention_days=settings.retention_days, now=NOW + timedelta(11))
        assert result.messages == 1  # the free one; the held one is skipped, not waited for
        assert locked.subject == "d95.0"
    finally:
        holder.rollback()
        holder.close()
    assert purge(sessions, retention_days=90, now=NOW + timedelta(11)).messages == 1
    assert count(settings, Message) == 0
