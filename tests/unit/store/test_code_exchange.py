"""The code exchange's decisions (pipeline.applications.token.exchange), without HTTP: which
client, which grant type, the code redeemed once and bound to its redirect URI and PKCE
challenge (both S256 spellings), a refusal that leaves the code usable by its owner, and a
code whose grant was deleted (its code goes with it).
tests/integration/api/test_api_hosted_auth.py drives the same through the SDK and the route."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from pipeline.applications import codes
from pipeline.applications.token import TokenRefused, exchange
from pipeline.models import Grant
from tests.support.store import offline_grant

pytestmark = pytest.mark.services

APP = "the-app"
CALLBACK = "https://app.example.test/callback"
VERIFIER = "v" * 50
RFC_CHALLENGE = (
    base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
)
SDK_CHALLENGE = (  # what the Nylas SDKs send: base64 of the hex digest
    base64.b64encode(hashlib.sha256(VERIFIER.encode()).hexdigest().encode()).rstrip(b"=").decode()
)


def _code(sessions: sessionmaker[Session], challenge: str = "") -> tuple[str, str]:
    grant_id, _ = offline_grant(sessions, "exchange")
    with sessions() as db:
        code = codes.issue(
            db, grant_id=grant_id, client_id=APP, redirect_uri=CALLBACK, code_challenge=challenge
        )
        db.commit()
    return grant_id, code


def _exchange(db: Session, issued: str, **changed: Any) -> Grant:
    asked: dict[str, Any] = {
        "client_id": APP,
        "grant_type": "authorization_code",
        "code": issued,
        "redirect_uri": CALLBACK,
        "verifier": None,
    }
    return exchange(db, APP, **{**asked, **changed})


@pytest.mark.parametrize(
    ("changed", "error"),
    [
        ({"client_id": "other-app"}, "invalid_client"),
        ({"client_id": APP + "x"}, "invalid_client"),
        ({"grant_type": "refresh_token"}, "unsupported_grant_type"),
        ({"redirect_uri": CALLBACK + "/other"}, "invalid_grant"),
        ({"code": "not-a-code"}, "invalid_grant"),
    ],
)
def test_a_refused_exchange_says_why_and_leaves_the_code_usable(
    pg_sessions: sessionmaker[Session], changed: dict[str, Any], error: str
) -> None:
    grant_id, code = _code(pg_sessions)
    with pg_sessions() as db:
        with pytest.raises(TokenRefused) as refused:
            _exchange(db, code, **changed)
        assert refused.value.error == error
        assert code not in str(refused.value)
    with pg_sessions() as db:
        assert _exchange(db, code).id == grant_id


def test_a_code_is_exchanged_once(pg_sessions: sessionmaker[Session]) -> None:
    grant_id, code = _code(pg_sessions)
    with pg_sessions() as db:
        assert _exchange(db, code).id == grant_id
    with pg_sessions() as db, pytest.raises(TokenRefused) as again:
        _exchange(db, code)
    assert again.value.error == "invalid_grant"


@pytest.mark.parametrize("challenge", [RFC_CHALLENGE, SDK_CHALLENGE])
def test_a_pkce_code_needs_its_verifier_in_either_s256_spelling(
    pg_sessions: sessionmaker[Session], challenge: str
) -> None:
    grant_id, code = _code(pg_sessions, challenge)
    for wrong in (None, "", VERIFIER + "x", challenge):
        with pg_sessions() as db, pytest.raises(TokenRefused) as refused:
            _exchange(db, code, verifier=wrong)
        assert refused.value.error == "invalid_grant"
    with pg_sessions() as db:
        assert _exchange(db, code, verifier=VERIFIER).id == grant_id


def test_a_code_whose_grant_was_deleted_is_refused(
    pg_sessions: sessionmaker[Session],
) -> None:
    grant_id, code = _code(pg_sessions)
    with pg_sessions() as db:
        db.execute(delete(Grant).where(Grant.id == grant_id))
        db.commit()
    with pg_sessions() as db, pytest.raises(TokenRefused) as gone:
        _exchange(db, code)
    assert gone.value.error == "invalid_grant"
