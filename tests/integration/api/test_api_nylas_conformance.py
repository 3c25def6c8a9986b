"""Differences from Nylas v3 that a client written for Nylas trips over, driven by the nylas SDK.

Each test names the Nylas reference it checks against (developer.nylas.com, ``/docs/reference``).
"""

from __future__ import annotations

import pytest
from api_support import ApiServer, connect_and_sync, connect_body

from pipeline.webhooks import payloads
from tests.support.services import MailUser

pytestmark = pytest.mark.services


def test_grant_notifications_have_the_nylas_object(api: ApiServer, mail_user: MailUser) -> None:
    """notifications/grants/grant-created, -updated, -deleted: ``grant_id``, ``code``,
    ``integration_id``, ``provider``; source ``/nylas/system``."""
    client = api.nylas()
    grant = client.auth.custom_authentication(connect_body(mail_user)).data  # type: ignore[arg-type]
    client.auth.custom_authentication(connect_body(mail_user))  # type: ignore[arg-type]
    client.grants.update(grant.id, {"settings": {"smtp_host": "smtp.example.test"}})
    client.grants.destroy(grant.id)

    objects = api.outbox_objects()
    assert [t for t, _ in objects] == [
        "grant.created",
        "grant.updated",
        "grant.updated",
        "grant.deleted",
    ]
    created, reauthenticated, updated, deleted = (o for _, o in objects)
    common = {"grant_id": grant.id, "integration_id": "imap", "provider": "imap"}
    assert created == {**common, "code": 25012, "email": mail_user.email, "scope": []}
    assert reauthenticated == {
        **common,
        "code": 25027,
        "email": mail_user.email,
        "reauthentication_flag": True,
    }
    assert updated == {
        **common,
        "code": 25014,
        "email": mail_user.email,
        "reauthentication_flag": False,
    }
    assert deleted == {**common, "code": 25013, "email": mail_user.email}
    assert {payloads.source_for(t, grant.id) for t, _ in objects} == {"/nylas/system"}


def test_sync_completed_has_the_nylas_object(api: ApiServer, mail_user: MailUser) -> None:
    """notifications/grants/grant-imap_sync_completed: source ``/imap/emails/historic``."""
    grant_id = connect_and_sync(api, mail_user)
    (completed,) = [o for t, o in api.outbox_objects() if t == "grant.imap_sync_completed"]
    assert completed == {
        "code": 25012,
        "grant_id": grant_id,
        "integration_id": "imap",
        "provider": "imap",
        "type": "grant.imap_sync_completed",
    }
    assert payloads.source_for("grant.imap_sync_completed", grant_id) == "/imap/emails/historic"
