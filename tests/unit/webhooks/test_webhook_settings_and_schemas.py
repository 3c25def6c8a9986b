"""Webhook settings from the environment; request validation; what views show."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from pipeline.config import Settings
from pipeline.config.webhooks import WebhookSettings
from pipeline.webhooks.errors import WebhookPayloadError
from pipeline.webhooks.outbox import emit, ordering_key
from pipeline.webhooks.schemas import (
    TRIGGER_TYPES,
    CreateWebhookRequest,
    UpdateWebhookRequest,
    WebhookDestinationOut,
)


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PIPELINE_WEBHOOK_MAX_ATTEMPTS", "9")
    monkeypatch.setenv("IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8, ::1/128")
    monkeypatch.setenv("IMAP_PIPELINE_WEBHOOK_APPLICATION_ID", "my-app")
    monkeypatch.setenv("IMAP_PIPELINE_DATA_DIR", "/nonexistent")
    s = Settings.load().webhooks
    assert s.max_attempts == 9
    assert s.application_id == "my-app"
    assert s.allowed_networks == [
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    ]


def test_settings_defaults_are_safe() -> None:
    s = WebhookSettings()
    assert s.request_timeout_s == 10.0
    assert s.challenge_timeout_s == 10.0
    assert s.allow_private_destinations is False
    assert s.allowed_networks == []
    assert s.max_payload_bytes == 1_000_000
    assert s.failed_after_s == 72 * 3600


def test_bad_network_is_rejected() -> None:
    with pytest.raises(ValidationError):
        WebhookSettings(allowed_networks="not-a-cidr")  # type: ignore[arg-type]


def test_trigger_types_are_the_nylas_imap_subset() -> None:
    assert "grant.imap_sync_completed" in TRIGGER_TYPES
    assert {"message.send_success", "message.send_failed"} <= TRIGGER_TYPES
    assert len(TRIGGER_TYPES) == 13


def test_create_request_rejects_unknown_triggers_and_deduplicates() -> None:
    with pytest.raises(ValidationError, match=r"calendar\.exploded"):
        CreateWebhookRequest(webhook_url="https://x", trigger_types=["calendar.exploded"])
    # documented by Nylas, never sent here: accepted, as Nylas accepts it
    CreateWebhookRequest(webhook_url="https://x", trigger_types=["calendar.created"])
    with pytest.raises(ValidationError, match="at least one"):
        CreateWebhookRequest(webhook_url="https://x", trigger_types=[])
    req = CreateWebhookRequest(
        webhook_url="https://x", trigger_types=["message.created", "message.created"]
    )
    assert req.trigger_types == ["message.created"]


def test_update_request_accepts_nylas_pause_spelling() -> None:
    assert UpdateWebhookRequest(status="pause").status == "pause"
    with pytest.raises(ValidationError):
        UpdateWebhookRequest(status="failed")  # type: ignore[arg-type]


def test_secret_never_shows_in_repr() -> None:
    view = WebhookDestinationOut(
        id="i",
        description="",
        trigger_types=["message.created"],
        webhook_url="https://x",
        status="active",
        notification_email_addresses=[],
        status_updated_at=1,
        created_at=1,
        updated_at=1,
        webhook_secret="s3cr3t-value",
    )
    assert "s3cr3t-value" not in repr(view)
    assert "s3cr3t-value" not in str(view)
    assert view.model_dump()["webhook_secret"] == "s3cr3t-value"
    assert "webhook_secret" not in view.model_copy(update={"webhook_secret": None}).model_dump(
        exclude_none=True
    )


def test_emit_refuses_unknown_types_and_unserialisable_objects() -> None:
    session = Session()  # never touched: emit validates before any SQL
    with pytest.raises(WebhookPayloadError, match="Unknown webhook trigger type"):
        emit(session, grant_id="g", type="message.exploded", obj={})
    with pytest.raises(WebhookPayloadError, match="not JSON-serializable"):
        emit(session, grant_id="g", type="message.created", obj={"when": object()})
    with pytest.raises(WebhookPayloadError):
        emit(session, grant_id="g", type="message.created", obj={"x": float("nan")})


def test_ordering_key_is_per_grant_and_object_family() -> None:
    assert ordering_key("g", "message.updated", "m1") == "g:message:m1"
    assert ordering_key("g", "message.created", "m1") == ordering_key("g", "message.deleted", "m1")
    assert ordering_key("g", "folder.updated", "m1") != ordering_key("g", "message.updated", "m1")
    assert ordering_key(None, "grant.created", "g") == "-:grant:g"
    assert ordering_key("g", "message.created", None) is None
