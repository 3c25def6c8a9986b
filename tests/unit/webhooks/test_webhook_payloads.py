"""The Nylas v3 envelope, its signature and the 1 MB truncation."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

from pipeline.webhooks import payloads
from pipeline.webhooks.signing import new_secret, sign, verify

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _build(
    obj: dict[str, object], *, attempt: int = 1, max_bytes: int = 1_000_000
) -> payloads.Notification:
    return payloads.build(
        notification_id="n-1",
        type="message.created",
        grant_id="g-1",
        occurred_at=WHEN,
        attempt=attempt,
        application_id="app-1",
        obj=obj,
        max_bytes=max_bytes,
    )


def test_envelope_has_the_nylas_v3_shape() -> None:
    n = _build({"id": "m-1", "object": "message", "body": "hi"}, attempt=3)
    assert json.loads(n.body) == {
        "specversion": "1.0",
        "type": "message.created",
        "source": "/imap/emails/incremental",
        "id": "n-1",
        "time": int(WHEN.timestamp()),
        "webhook_delivery_attempt": 3,
        "data": {
            "application_id": "app-1",
            "object": {"id": "m-1", "object": "message", "body": "hi"},
        },
    }
    assert not n.truncated


def test_source_is_what_nylas_sends_for_each_type() -> None:
    assert payloads.source_for("message.created", "g") == "/imap/emails/incremental"
    assert payloads.source_for("folder.deleted", "g") == "/imap/emails/incremental"
    assert payloads.source_for("grant.created", "g") == "/nylas/system"
    assert payloads.source_for("grant.expired", "g") == "/nylas/system"
    assert payloads.source_for("grant.imap_sync_completed", "g") == "/imap/emails/historic"
    assert payloads.source_for("message.created", None) == "/nylas/system"


def test_non_ascii_is_sent_as_utf8_and_signed_as_sent() -> None:
    n = _build({"id": "m", "subject": "Grüße ✉"})
    assert "Grüße ✉".encode() in n.body
    secret = new_secret()
    assert sign(secret, n.body) == hmac.new(secret.encode(), n.body, hashlib.sha256).hexdigest()


def test_signature_is_hex_hmac_sha256_of_the_exact_bytes() -> None:
    secret = new_secret()
    body = b'{"a": 1}'
    signature = sign(secret, body)
    assert len(signature) == 64 and int(signature, 16) >= 0
    assert verify(secret, body, signature)
    assert verify(secret, body, signature.upper())
    assert not verify(secret, b'{"a":1}', signature)  # re-serialised JSON is not the same body
    assert not verify(new_secret(), body, signature)


def test_secrets_are_fresh_and_long() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(len(s) == 64 for s in secrets)


def test_payload_over_the_limit_becomes_truncated_without_body() -> None:
    big = "x" * 2_000_000
    n = _build({"id": "m-1", "subject": "big", "body": big})
    envelope = json.loads(n.body)
    assert n.truncated
    assert envelope["type"] == "message.created.truncated"
    assert envelope["data"]["object"] == {"id": "m-1", "subject": "big"}
    assert envelope["id"] == "n-1"
    assert len(n.body) < 1_000


def test_payload_at_the_limit_is_not_truncated() -> None:
    probe = _build({"id": "m", "body": ""})
    filler = 1_000_000 - len(probe.body)
    n = _build({"id": "m", "body": "y" * filler})
    assert len(n.body) == 1_000_000
    assert not n.truncated
    assert _build({"id": "m", "body": "y" * (filler + 1)}).truncated


def test_id_is_stable_and_attempt_changes_between_attempts() -> None:
    first = json.loads(_build({"id": "m"}, attempt=1).body)
    second = json.loads(_build({"id": "m"}, attempt=2).body)
    assert first["id"] == second["id"]
    assert (first["webhook_delivery_attempt"], second["webhook_delivery_attempt"]) == (1, 2)
