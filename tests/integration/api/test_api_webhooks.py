"""Webhook destinations through the API, driven by the nylas SDK."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from api_support import ApiServer, Receiver
from nylas.models.errors import NylasApiError

from pipeline.db import session_scope
from pipeline.dev.ports import free_port
from pipeline.webhooks import repository

pytestmark = pytest.mark.services


def test_webhook_destinations_life_cycle(api: ApiServer, receiver: Receiver) -> None:
    client = api.nylas()
    created = client.webhooks.create(
        {
            "webhook_url": receiver.url,
            "trigger_types": ["message.created", "message.updated"],  # type: ignore[list-item]
            "description": "test hook",
        }
    ).data
    assert created.webhook_secret
    assert created.status == "active"
    assert created.created_at > 0
    assert created.status_updated_at > 0

    listed = client.webhooks.list().data
    assert [w.id for w in listed] == [created.id]
    found = client.webhooks.find(created.id).data
    assert found.webhook_url == receiver.url
    with api.http() as http:
        raw = http.get(f"/v3/webhooks/{created.id}").json()["data"]
    assert "webhook_secret" not in raw

    updated = client.webhooks.update(created.id, {"description": "renamed"}).data
    assert updated.description == "renamed"

    rotated = client.webhooks.rotate_secret(created.id).data  # PUT .../rotate-secret
    assert rotated.webhook_secret
    assert rotated.webhook_secret != created.webhook_secret
    with api.http() as http:
        again = http.post(f"/v3/webhooks/rotate-secret/{created.id}")
        assert again.status_code == 200, again.text
        secret = again.json()["data"]["webhook_secret"]
        assert secret not in (rotated.webhook_secret, created.webhook_secret)

        test = http.post(
            "/v3/webhooks/send-test-event",
            json={"trigger_type": "message.created", "webhook_url": receiver.url},
        )
    assert test.status_code == 200, test.text
    assert test.json()["data"] == "success"  # api/webhook-notifications/send_test_event
    headers, body = receiver.received[-1]
    # Nylas: "The secret used is `mock-webhook-secret`", not the destination's
    expected = hmac.new(b"mock-webhook-secret", body, hashlib.sha256).hexdigest()
    assert headers["x-nylas-signature"] == expected
    assert json.loads(body)["type"] == "message.created"

    deleted = client.webhooks.destroy(created.id)
    assert deleted.request_id
    with pytest.raises(NylasApiError) as gone:
        client.webhooks.find(created.id)
    assert gone.value.status_code == 404


def test_bad_webhook_requests_are_4xx(api: ApiServer, receiver: Receiver) -> None:
    with api.http() as http:
        unknown_trigger = http.post(
            "/v3/webhooks", json={"webhook_url": receiver.url, "trigger_types": ["nope"]}
        )
        private = http.post(
            "/v3/webhooks",
            json={"webhook_url": "http://10.1.2.3/hook", "trigger_types": ["message.created"]},
        )
        no_challenge = http.post(
            "/v3/webhooks",
            json={
                "webhook_url": f"http://127.0.0.1:{free_port()}/nobody-listens",
                "trigger_types": ["message.created"],
            },
        )
        missing = http.get("/v3/webhooks/00000000-0000-4000-8000-000000000000")
        not_uuid = http.delete("/v3/webhooks/abc")
        # a URL no destination has is tested all the same (before any webhook is created)
        test_unconfigured = http.post(
            "/v3/webhooks/send-test-event",
            json={"trigger_type": "message.created", "webhook_url": receiver.url},
        )
        test_private = http.post(
            "/v3/webhooks/send-test-event",
            json={"trigger_type": "message.created", "webhook_url": "http://10.1.2.3/hook"},
        )
        test_refused = http.post(
            "/v3/webhooks/send-test-event",
            json={
                "trigger_type": "message.created",
                "webhook_url": f"http://127.0.0.1:{free_port()}/nobody-listens",
            },
        )
        listed = http.get("/v3/webhooks")
    for response in (unknown_trigger, private, no_challenge):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert "challenge" in no_challenge.json()["error"]["message"]
    for response in (missing, not_uuid):
        assert response.status_code == 404, response.text
    assert test_unconfigured.status_code == 200, test_unconfigured.text
    assert test_unconfigured.json()["data"] == "success"
    for response in (test_private, test_refused):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert listed.json()["data"] == []


def test_a_failing_destination_says_why(api: ApiServer, receiver: Receiver) -> None:
    client = api.nylas()
    created = client.webhooks.create(
        {"webhook_url": receiver.url, "trigger_types": ["message.created"]}  # type: ignore[list-item]
    ).data
    with api.http() as http:
        healthy = http.get(f"/v3/webhooks/{created.id}").json()["data"]
    assert "failure_reason" not in healthy
    reason = "DeadlineExceeded: no complete response headers within 10 s"
    with session_scope(api.settings.require_database_url()) as db:  # as a failed batch does
        repository.mark_failing(db, created.id, 3600.0, reason=reason)
    with api.http() as http:
        failing = http.get(f"/v3/webhooks/{created.id}").json()["data"]
        listed = http.get("/v3/webhooks").json()["data"]
    assert failing["status"] == "failing"
    assert failing["failure_reason"] == reason
    assert listed[0]["failure_reason"] == reason
    assert client.webhooks.find(created.id).data.status == "failing"  # the SDK reads it as ever
