"""Page tokens, API key checks, attachment decoding and error mapping."""

from __future__ import annotations

import base64
import quopri
from datetime import UTC, datetime

import pytest

from pipeline.api.attachments import content_disposition, media_type
from pipeline.api.auth import KeyRing
from pipeline.api.errors import ApiError, from_pipeline_error
from pipeline.api.pagination import decode_cursor, encode_cursor
from pipeline.drafts.scheduling import DraftBusy
from pipeline.drafts.server import DraftNotReadBack
from pipeline.drafts.service import SavedNotSendable
from pipeline.errors import (
    ConfigurationError,
    GrantNotFound,
    ImapAuthError,
    ImapConnectError,
    ImapFolderError,
    ImapThrottledError,
    InvalidRequest,
    NotFound,
    ServiceError,
)
from pipeline.grants.gate import GateFull, SignInTooSlow
from pipeline.limits import RateLimited
from pipeline.messages.content import decode_part, transfer_encoding
from pipeline.outbound.submit import KeyReused, SendRefused

ID = "0b9f1c1e-8a0e-4d7e-9d2a-3f1f5b7c9d11"


def test_cursor_round_trip_keeps_microseconds() -> None:
    at = datetime(2026, 11, 26, 7, 30, 1, 123456, tzinfo=UTC)
    cursor = decode_cursor(encode_cursor(at, ID))
    assert cursor.at == at
    assert cursor.id == ID


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not base64 at all!",
        base64.urlsafe_b64encode(b"[1,2]").decode(),
        base64.urlsafe_b64encode(b'{"v":2,"t":"2026-01-01T00:00:00+00:00","i":"x"}').decode(),
        base64.urlsafe_b64encode(b'{"v":1,"t":"2026-01-01T00:00:00+00:00","i":"x"}').decode(),
        base64.urlsafe_b64encode(
            ('{"v":1,"t":"2026-01-01T00:00:00","i":"' + ID + '"}').encode()
        ).decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "A" * 600,
    ],
)
def test_invalid_tokens_are_invalid_requests(token: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_cursor(token)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"


def test_key_ring() -> None:
    ring = KeyRing(["alpha", "beta", ""])
    assert len(ring) == 2
    assert ring.accepts("alpha")
    assert ring.accepts("beta")
    assert not ring.accepts("alph")
    assert not ring.accepts("")
    assert not KeyRing([]).accepts("alpha")


def test_transfer_decoding() -> None:
    payload = bytes(range(256)) * 3
    b64 = base64.encodebytes(payload)
    assert (
        transfer_encoding(b"Content-Type: image/png\r\nContent-Transfer-Encoding: BASE64\r\n")
        == "base64"
    )
    assert transfer_encoding(b"Content-Transfer-Encoding:\r\n base64\r\n") == "base64"
    assert transfer_encoding(None) == "7bit"
    assert decode_part(b64, "base64") == payload
    assert decode_part(b64 + b"==garbage!", "base64").startswith(payload[:300])
    text = "Grüße = mehr als genug".encode()
    assert decode_part(quopri.encodestring(text), "quoted-printable") == text
    assert decode_part(b"plain", "8bit") == b"plain"


def test_headers_are_safe() -> None:
    assert media_type("Image/PNG") == "image/png"
    assert media_type("text/plain\r\nX-Evil: 1") == "application/octet-stream"
    disposition = content_disposition('rapport "final"\r\n.pdf', inline=False)
    assert "\r" not in disposition
    assert "\n" not in disposition
    assert disposition.startswith("attachment; filename=")
    assert content_disposition(None, inline=True) == "inline"


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        (GrantNotFound("x"), 404, "not_found_error"),
        (ImapAuthError("x"), 401, "unauthorized"),
        (ImapThrottledError("x"), 429, "rate_limit_error"),
        (ImapFolderError("x"), 404, "not_found_error"),
        (ImapConnectError("x"), 504, "provider_error"),
        (ConfigurationError("x"), 400, "invalid_request_error"),
        (ServiceError("x"), 503, "service_unavailable"),
        (InvalidRequest("x"), 400, "invalid_request_error"),
        (NotFound("x"), 404, "not_found_error"),
        (RateLimited("x", 1.0), 429, "rate_limit_error"),
        (DraftNotReadBack("x"), 502, "provider_error"),
        (DraftBusy("x"), 409, "conflict_error"),
        (SavedNotSendable(InvalidRequest("x")), 400, "invalid_request_error"),
        (SavedNotSendable(NotFound("x")), 404, "not_found_error"),
        (SendRefused(504, "provider_error", "x"), 504, "provider_error"),
        (SendRefused(400, "invalid_request_error", "x"), 400, "invalid_request_error"),
        (KeyReused("x"), 409, "api.invalid_idempotent_request"),
        (GateFull(), 429, "rate_limit_error"),
        (SignInTooSlow(1.0), 504, "provider_error"),
    ],
)
def test_pipeline_errors_map_to_v3_types(error: Exception, status: int, type_: str) -> None:
    mapped = from_pipeline_error(error)  # type: ignore[arg-type]
    assert (mapped.status, mapped.type) == (status, type_)


def test_a_saved_draft_that_cannot_be_sent_says_so_with_the_refusal() -> None:
    refusal = InvalidRequest("This draft cannot be sent: to: List should have at least 1 item.")
    mapped = from_pipeline_error(SavedNotSendable(refusal))
    assert mapped.message == (
        "The draft was saved, but cannot be sent as it now is (This draft cannot be sent: to: "
        "List should have at least 1 item.); its scheduled send is cancelled."
    )


def test_a_refused_token_or_slot_keeps_its_text_and_says_when_to_retry() -> None:
    mapped = from_pipeline_error(RateLimited("All 4 IMAP connections are in use.", 4.2))
    assert mapped.message == "All 4 IMAP connections are in use."
    assert mapped.headers == {"Retry-After": "5"}  # whole seconds, rounded up
    assert from_pipeline_error(RateLimited("x", 0.01)).headers == {"Retry-After": "1"}
