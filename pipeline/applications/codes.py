"""The authorization codes of hosted auth: issued after a sign-in, redeemed once for the grant.

A code is random, stored only as its SHA-256 hash, single-use and valid for ``CODE_TTL_S``; it
is bound to the client id and redirect URI of its sign-in and, with PKCE, to the sign-in's
``code_challenge`` (:func:`verifier_matches`). Nothing here commits: the caller commits an
issued code with its grant, and a redeemed one only when :func:`redeem` accepted it (a refused
redemption is rolled back, so the code stays usable by its owner).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from pipeline.applications.repository import ApplicationRepository
from pipeline.errors import PipelineError

CODE_TTL_S = 10 * 60  # an authorization code must be exchanged within 10 minutes


class CodeRefused(PipelineError):
    """A code cannot be redeemed: unknown, used, expired, another client's, or its PKCE
    verifier does not match (the message says which, without the code)."""


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def issue(
    session: Session, *, grant_id: str, client_id: str, redirect_uri: str, code_challenge: str
) -> str:
    """A new code for ``grant_id`` (expired codes are purged first); returns the code, of
    which only the hash is stored."""
    code = secrets.token_urlsafe(32)
    repo = ApplicationRepository(session)
    repo.purge_auth_codes()
    repo.add_auth_code(
        code_hash=_hash(code),
        grant_id=grant_id,
        client_id=client_id,
        redirect_uri=redirect_uri,
        code_challenge=code_challenge or None,
        expires_at=datetime.now(UTC) + timedelta(seconds=CODE_TTL_S),
    )
    return code


def redeem(
    session: Session, code: str, *, client_id: str, redirect_uri: str, verifier: str | None
) -> str:
    """Use ``code`` once; returns its grant's id.

    Raises:
        CodeRefused: The code is unknown, used, expired, not issued to this client and
            redirect URI, or ``verifier`` does not answer its challenge (roll back then).
    """
    row = ApplicationRepository(session).redeem_auth_code(_hash(code))
    if row is None or row["redirect_uri"] != redirect_uri or row["client_id"] != client_id:
        raise CodeRefused("The code is unknown, used, expired or not yours.")
    challenge = row["code_challenge"]
    if challenge and not verifier_matches(verifier or "", challenge):
        raise CodeRefused("code_verifier does not match.")
    return str(row["grant_id"])


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Whether a PKCE ``code_verifier`` answers the ``code_challenge`` of the sign-in.

    Two S256 spellings are accepted: RFC 7636's base64url(sha256(verifier)) without padding,
    and what the official Nylas SDKs send (and Nylas accepts): base64 of the hex digest,
    without padding. Both are a hash of the verifier; neither lets a code be redeemed without it.
    """
    digest = hashlib.sha256(verifier.encode())
    rfc = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    sdk = base64.b64encode(digest.hexdigest().encode()).rstrip(b"=").decode()
    # both compared, always: the time taken says nothing about which spelling was near
    return hmac.compare_digest(rfc, challenge) | hmac.compare_digest(sdk, challenge)
