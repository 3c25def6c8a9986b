"""Destinations: the challenge handshake, the SSRF guard, secrets shown once and stored sealed.
Requests refused before any of that are tests/unit/webhooks/test_webhook_requests.py."""

from __future__ import annotations

import functools
import json
import time
from contextlib import AbstractContextManager

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from webhook_receiver import Receiver

from pipeline.config.webhooks import WebhookSettings
from pipeline.crypto import SecretBox
from pipeline.webhooks.errors import (
    ChallengeFailed,
    DestinationRefused,
    WebhookNotFound,
)
from pipeline.webhooks.models import WebhookDestination
from pipeline.webhooks.sender import Sender
from pipeline.webhooks.service import WebhookService
from pipeline.webhooks.signing import verify

pytestmark = pytest.mark.services

Uow = functools.partial[AbstractContextManager[Session]]
TRIGGERS = ["message.created", "message.updated"]


def _count(uow: Uow) -> int:
    with uow() as s:
        return len(s.scalars(select(WebhookDestination)).all())


def test_create_verifies_with_the_challenge_and_shows_the_secret_once(
    uow: Uow, service: WebhookService, receiver: Receiver, box: SecretBox
) -> None:
    with uow() as s:
        created = service.create(
            s,
            {
                "webhook_url": receiver.url("/hook"),
                "trigger_types": TRIGGERS,
                "description": "crm",
                "notification_email_addresses": ["ops@example.com"],
            },
        )
    assert receiver.challenges() == ["/hook"]
    assert created.webhook_secret and len(created.webhook_secret) == 64
    assert created.status == "active"
    assert created.trigger_types == TRIGGERS
    assert created.created_at <= int(time.time()) <= created.created_at + 60
    assert created.status_updated_at == created.created_at
    with uow() as s:
        listed = service.list(s)
        fetched = service.get(s, created.id)
        sealed = s.scalars(select(WebhookDestination.secret_sealed)).one()
        raw_row = json.dumps(
            [str(v) for v in s.execute(text("SELECT * FROM webhook_destinations")).one()]
        )
    assert [d.id for d in listed] == [created.id]
    assert fetched.webhook_secret is None and listed[0].webhook_secret is None
    assert "webhook_secret" not in fetched.model_dump(exclude_none=True)
    assert created.webhook_secret not in raw_row  # stored sealed only
    assert box.open(sealed) == created.webhook_secret


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"challenge": "wrong"}, "body was not the challenge value"),
        ({"challenge": "404"}, "HTTP 404"),
        ({"challenge": "echo", "challenge_delay_s": 3.0}, "within 2 s"),
    ],
)
def test_a_failed_challenge_stores_nothing(
    uow: Uow, service: WebhookService, receiver: Receiver, route: dict[str, object], message: str
) -> None:
    receiver.route("/hook", **route)
    with pytest.raises(ChallengeFailed, match=message), uow() as s:
        service.create(s, {"webhook_url": receiver.url("/hook"), "trigger_types": TRIGGERS})
    assert _count(uow) == 0


def test_an_unreachable_destination_fails_the_challenge(
    uow: Uow, service: WebhookService, receiver: Receiver
) -> None:
    url = receiver.url("/hook")
    receiver.stop()
    with pytest.raises(ChallengeFailed, match="could not be reached"), uow() as s:
        service.create(s, {"webhook_url": url, "trigger_types": TRIGGERS})
    assert _count(uow) == 0


def test_loopback_is_refused_by_default_without_any_request(
    uow: Uow, receiver: Receiver, box: SecretBox
) -> None:
    settings = WebhookSettings()  # the defaults: no private destinations
    with (
        Sender(settings) as sender,
        pytest.raises(DestinationRefused, match="loopback"),
        uow() as s,
    ):
        WebhookService(settings, box, sender=sender).create(
            s, {"webhook_url": receiver.url("/hook"), "trigger_types": TRIGGERS}
        )
    assert receiver.challenges() == []
    assert _count(uow) == 0


def test_rotate_secret_changes_the_key_and_shows_it_once(
    uow: Uow, service: WebhookService, receiver: Receiver, box: SecretBox
) -> None:
    with uow() as s:
        created = service.create(s, {"webhook_url": receiver.url(), "trigger_types": TRIGGERS})
    with uow() as s:
        rotated = service.rotate_secret(s, created.id)
    assert rotated.webhook_secret and rotated.webhook_secret != created.webhook_secret
    with uow() as s:
        assert (
            box.open(s.get_one(WebhookDestination, created.id).secret_sealed)
            == rotated.webhook_secret
        )
        assert service.get(s, created.id).webhook_secret is None


def test_update_changes_fields_and_reverifies_a_new_url(
    uow: Uow, service: WebhookService, receiver: Receiver
) -> None:
    with uow() as s:
        created = service.create(
            s, {"webhook_url": receiver.url("/one"), "trigger_types": TRIGGERS}
        )
    receiver.route("/bad", challenge="404")
    with pytest.raises(ChallengeFailed), uow() as s:
        service.update(s, created.id, {"webhook_url": receiver.url("/bad")})
    with uow() as s:
        updated = service.update(
            s,
            created.id,
            {
                "webhook_url": receiver.url("/two"),
                "trigger_types": ["folder.created"],
                "description": "x",
            },
        )
    assert receiver.challenges() == ["/one", "/bad", "/two"]
    assert (updated.webhook_url, updated.trigger_types, updated.description) == (
        receiver.url("/two"),
        ["folder.created"],
        "x",
    )
    with uow() as s:
        paused = service.update(s, created.id, {"status": "pause"})
    assert paused.status == "pause" and paused.status_updated_at >= updated.status_updated_at
    with uow() as s:
        assert service.update(s, created.id, {"status": "active"}).status == "active"


def test_get_and_delete_unknown_ids(uow: Uow, service: WebhookService, receiver: Receiver) -> None:
    with uow() as s:
        created = service.create(s, {"webhook_url": receiver.url(), "trigger_types": TRIGGERS})
    with uow() as s:
        service.delete(s, created.id)
    for bad in (created.id, "not-a-uuid"):
        with pytest.raises(WebhookNotFound), uow() as s:
            service.get(s, bad)
        with pytest.raises(WebhookNotFound), uow() as s:
            service.delete(s, bad)


def test_send_test_event_is_signed_with_nylas_mock_secret(
    uow: Uow, service: WebhookService, receiver: Receiver
) -> None:
    """api/webhook-notifications/send_test_event: to the URL given, configured or not, signed
    with the secret ``mock-webhook-secret``, as Nylas signs its test events."""
    with uow() as s:
        result = service.send_test_event(
            s, trigger_type="message.created", webhook_url=receiver.url()
        )
    assert result.success and result.status_code == 200
    (got,) = receiver.received()
    assert verify("mock-webhook-secret", got.body, got.headers["x-nylas-signature"])
    assert got.json()["type"] == "message.created"
    with uow() as s:
        created = service.create(s, {"webhook_url": receiver.url(), "trigger_types": TRIGGERS})
    with uow() as s:
        service.send_test_event(s, trigger_type="folder.created", webhook_url=receiver.url())
    got = receiver.received()[-1]
    assert got.json()["type"] == "folder.created"
    assert created.webhook_secret is not None
    assert not verify(created.webhook_secret, got.body, got.headers["x-nylas-signature"])
    assert verify("mock-webhook-secret", got.body, got.headers["x-nylas-signature"])
    receiver.route("/hook", status=500)
    with uow() as s:
        failed = service.send_test_event(
            s, trigger_type="grant.expired", webhook_url=receiver.url()
        )
    assert not failed.success and failed.error == "HTTP 500"
