"""The grants repository (:mod:`pipeline.grants.repository`) on the rolled-back store: a grant
found by id or by address in any case, the same by the ORM and by the API's Core lookup, and
removed with everything hanging off it, never another grant's."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.grants.repository import GrantRepository, grant_id_and_status
from pipeline.models import Folder, Message, Placement, Thread
from tests.support.stored_mail import mailbox

pytestmark = pytest.mark.services


def test_a_grant_is_found_by_id_or_by_address_in_any_case(
    pg_sessions: sessionmaker[Session], pg_connection: Connection
) -> None:
    ann = mailbox(pg_sessions, pg_connection, user="Ann.Smith").grant_id
    mailbox(pg_sessions, pg_connection, user="bob")
    with pg_sessions.begin() as db:
        GrantRepository(db).set_status(ann, "invalid", "the password changed")
    lookups = {
        ann: ann,
        "ann.smith@example.org": ann,
        "  ANN.SMITH@EXAMPLE.ORG ": ann,
        "ann@example.org": None,
        "not-a-uuid": None,
        "00000000-0000-4000-8000-000000000000": None,
    }
    with pg_sessions() as db:
        repo = GrantRepository(db)
        found = {key: getattr(repo.find(key), "id", None) for key in lookups}
        by_email = [g.id for g in repo.page(limit=10, offset=0, email="ANN.smith@example.org")]
        invalid = [g.id for g in repo.page(limit=10, offset=0, status="invalid")]
    assert found == lookups
    assert by_email == invalid == [ann]
    for key, want in lookups.items():
        if key == "not-a-uuid":
            continue
        row = (
            grant_id_and_status(pg_connection, email=key)
            if "@" in key
            else grant_id_and_status(pg_connection, grant_id=key)
        )
        assert (None if row is None else (str(row.id), row.grant_status)) == (
            None if want is None else (ann, "invalid")
        ), key


def test_removing_a_grant_removes_its_folders_mail_and_threads_only(
    pg_sessions: sessionmaker[Session], pg_connection: Connection
) -> None:
    gone, kept = (mailbox(pg_sessions, pg_connection, user=u) for u in ("gone", "kept"))
    for box in (gone, kept):
        box.add("INBOX", "hello", 10, attachment=True)
        box.add("Archive", "Re: hello", 5)

    with pg_sessions.begin() as db:
        assert GrantRepository(db).remove(gone.grant_id) is True
        assert GrantRepository(db).remove(gone.grant_id) is False

    for model in (Folder, Message, Thread):
        grants = set(map(str, pg_connection.scalars(select(model.grant_id))))  # type: ignore[attr-defined]
        assert grants == {kept.grant_id}, model
    placements = pg_connection.scalar(select(func.count()).select_from(Placement))
    assert placements == 2
    assert kept.ids().keys() == {"hello", "Re: hello"}
