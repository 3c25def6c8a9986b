"""Connecting accounts and managing grants through the API, driven by the nylas SDK."""

from __future__ import annotations

import pytest
from api_support import ApiServer, connect_body
from nylas.models.errors import NylasApiError
from sqlalchemy import func, select

from pipeline.db import session_scope
from pipeline.models import Grant
from tests.support.services import MailUser

pytestmark = pytest.mark.services


def grant_count(api: ApiServer) -> int:
    with session_scope(api.settings.require_database_url()) as db:
        return int(db.scalar(select(func.count()).select_from(Grant)) or 0)


def test_custom_auth_creates_a_grant_and_enqueues_its_sync(
    api: ApiServer, mail_user: MailUser
) -> None:
    client = api.nylas()
    response = client.auth.custom_authentication(connect_body(mail_user))  # type: ignore[arg-type]
    grant = response.data
    assert response.request_id
    assert grant.provider == "imap"
    assert grant.email == mail_user.email
    assert grant.grant_status == "valid"
    assert grant.settings is not None
    assert grant.settings["imap_host"] == "127.0.0.1"
    assert "imap_password" not in grant.settings
    assert mail_user.password not in str(grant)
    # committed before the sync was enqueued, on the provider's queue family
    assert api.enqueued == [(grant.id, "generic")]
    assert api.enqueued_uncommitted == []
    assert api.outbox() == [("grant.created", grant.id)]
    assert api.kicks == 1
    assert grant_count(api) == 1


def test_custom_auth_answers_201_then_reauthenticates_the_same_address(
    api: ApiServer, mail_user: MailUser
) -> None:
    with api.http() as http:
        first = http.post("/v3/connect/custom", json=connect_body(mail_user))
        again = http.post("/v3/connect/custom", json=connect_body(mail_user))
    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert first.json()["data"]["id"] == again.json()["data"]["id"]
    assert first.json()["request_id"] != again.json()["request_id"]
    assert grant_count(api) == 1


def test_wrong_password_stores_nothing_and_says_why(api: ApiServer, mail_user: MailUser) -> None:
    client = api.nylas()
    with pytest.raises(NylasApiError) as caught:
        client.auth.custom_authentication(connect_body(mail_user, password="not-the-password"))  # type: ignore[arg-type]
    error = caught.value
    assert error.status_code == 401
    assert error.type == "unauthorized"
    assert "refused the login" in error.args[0]
    assert "not-the-password" not in error.args[0]
    assert grant_count(api) == 0
    assert api.enqueued == []


def test_unreachable_host_is_a_provider_error(api: ApiServer, mail_user: MailUser) -> None:
    from pipeline.dev.ports import free_port

    body = connect_body(mail_user)
    body["settings"]["imap_port"] = free_port()  # type: ignore[index]
    with api.http() as http:
        r = http.post("/v3/connect/custom", json=body)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "provider_error"
    assert grant_count(api) == 0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"provider": "google", "settings": {}}, "provider"),
        ({"provider": "imap"}, "settings"),
        ({"provider": "imap", "settings": {"imap_username": "x@y.z"}}, "imap_password"),
        (
            {"provider": "imap", "settings": {"imap_username": "nobody", "imap_password": "p"}},
            "settings.email",
        ),
        (
            {
                "provider": "imap",
                "settings": {"imap_username": "a@b.c", "imap_password": "p", "imap_port": 70000},
            },
            "imap_port",
        ),
        (
            {
                "provider": "imap",
                "settings": {"imap_username": "a@unknown.invalid", "imap_password": "p"},
            },
            "No IMAP host",
        ),
    ],
)
def test_bad_connect_bodies_are_400(api: ApiServer, body: dict[str, object], needle: str) -> None:
    with api.http() as http:
        r = http.post("/v3/connect/custom", json=body)
    assert r.status_code == 400, r.text
    payload = r.json()
    assert payload["error"]["type"] == "invalid_request_error"
    assert needle in payload["error"]["message"]
    assert payload["request_id"]


def test_grants_list_get_by_id_and_email_update_delete(api: ApiServer, mail_user: MailUser) -> None:
    client = api.nylas()
    grant = client.auth.custom_authentication(connect_body(mail_user)).data  # type: ignore[arg-type]

    listed = client.grants.list()
    assert [g.id for g in listed.data] == [grant.id]
    assert client.grants.find(grant.id).data.email == mail_user.email
    with api.http() as http:
        by_email = http.get(f"/v3/grants/{mail_user.email}")
        filtered = http.get("/v3/grants", params={"email": "nobody@example.test"})
    assert by_email.status_code == 200
    assert by_email.json()["data"]["id"] == grant.id
    assert filtered.json()["data"] == []

    # a PATCH logs in with the merged settings before storing them
    with pytest.raises(NylasApiError) as caught:
        client.grants.update(grant.id, {"settings": {"imap_password": "wrong"}})
    assert caught.value.status_code == 401
    updated = client.grants.update(grant.id, {"settings": {"smtp_host": "smtp.example.test"}})
    assert updated.data.settings is not None
    assert updated.data.settings["smtp_host"] == "smtp.example.test"

    kicks = api.kicks
    client.grants.destroy(grant.id)
    assert api.kicks == kicks + 1
    assert api.outbox()[-1] == ("grant.deleted", grant.id)
    with pytest.raises(NylasApiError) as gone:
        client.grants.find(grant.id)
    assert gone.value.status_code == 404
    assert gone.value.type == "not_found_error"
    assert grant_count(api) == 0


def test_unknown_grant_is_404_for_every_grant_route(api: ApiServer) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    with api.http() as http:
        for path in (
            f"/v3/grants/{missing}",
            "/v3/grants/not-a-uuid",
            "/v3/grants/nobody@example.test",
            f"/v3/grants/{missing}/messages",
            f"/v3/grants/{missing}/folders",
            f"/v3/grants/{missing}/threads",
            f"/v3/grants/{missing}/attachments/{missing}",
        ):
            r = http.get(path)
            assert r.status_code == 404, (path, r.text)
            assert r.json()["error"]["type"] == "not_found_error"


def test_connectors_and_provider_detection(api: ApiServer) -> None:
    client = api.nylas()
    created = client.connectors.create({"provider": "imap"})  # type: ignore[typeddict-item]
    assert created.data.provider == "imap"
    assert [c.provider for c in client.connectors.list().data] == ["imap", "icloud", "yahoo"]
    assert client.connectors.find("imap").data.provider == "imap"
    with api.http() as http:
        other = http.post("/v3/connectors", json={"provider": "google"})
        yahoo = http.post("/v3/providers/detect", params={"email": "someone@yahoo.com"})
        unknown = http.post("/v3/providers/detect", params={"email": "a@unknown.example"})
        bad = http.post("/v3/providers/detect", params={"email": "not an address"})
    assert other.status_code == 400
    assert yahoo.status_code == 200
    data = yahoo.json()["data"]
    assert data["detected"] is True
    assert data["type"] == "yahoo"
    assert data["settings"]["imap_host"] == "imap.mail.yahoo.com"
    assert unknown.json()["data"]["detected"] is False
    assert bad.status_code == 400
