"""The rolling retention purge on real Postgres, with mail synced from a real Dovecot: what needs
two connections (a row a sync holds). What a purge removes is tests/unit/store/test_purge.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.maintenance.purge import purge
from pipeline.models import Message
from pipeline.sync.run import sync_grant_inline
from tests.support.grants import connect
from tests.support.mail import append, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services

NOW = datetime.now(UTC)


def count(settings: Settings, model: type) -> int:
    with session_scope(settings.require_database_url()) as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


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
        result = purge(
            sessions, retention_days=settings.sync.retention_days, now=NOW + timedelta(11)
        )
        assert result.messages == 1  # the free one; the held one is skipped, not waited for
        assert locked.subject == "d95.0"
    finally:
        holder.rollback()
        holder.close()
    assert purge(sessions, retention_days=90, now=NOW + timedelta(11)).messages == 1
    assert count(settings, Message) == 0
