"""The code exchange of hosted auth (``POST /v3/connect/token``), without HTTP: which client may
exchange, which grant type, and the code redeemed once for its grant.

The API authenticates the caller first (``client_secret`` or a Bearer header must be an API
key: :mod:`pipeline.api.auth`), then asks :func:`exchange`, whose refusals carry the OAuth error
(RFC 6749 section 5.2) the API answers with::

    client_id not this application's ──────────────> invalid_client
    grant_type not authorization_code ─────────────> unsupported_grant_type
    the code unknown, used, expired, another client's
      or redirect URI's, or the PKCE verifier wrong ──> invalid_grant (rolled back: the code
                                                        stays usable by its owner)
    redeemed (committed), but its grant deleted since ─> invalid_grant (the code is used)
    redeemed ──> the grant

The client id is compared in constant time; the code's checks are :func:`pipeline.applications
.codes.redeem`'s (PKCE S256 in both spellings: :func:`pipeline.applications.codes
.verifier_matches`).
"""

from __future__ import annotations

import hmac

from sqlalchemy.orm import Session

from pipeline.applications import codes
from pipeline.errors import PipelineError
from pipeline.grants.repository import GrantRepository
from pipeline.models import Grant

GRANT_TYPE = "authorization_code"  # the only grant type: codes of the hosted sign-in


class TokenRefused(PipelineError):
    """The exchange is refused; ``error`` is the OAuth error code (``invalid_client``,
    ``unsupported_grant_type``, ``invalid_grant``), the message its description."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


def exchange(
    db: Session,
    application_id: str,
    *,
    client_id: str,
    grant_type: str,
    code: str,
    redirect_uri: str,
    verifier: str | None,
) -> Grant:
    """Redeem ``code`` (once) for its grant, committing the redemption; a refused code is
    rolled back.

    Raises:
        TokenRefused: Another client_id, another grant type, or a code refused (see the module
            docstring); the message says which, never the code.
    """
    if not hmac.compare_digest(client_id.encode(), application_id.encode()):
        raise TokenRefused("invalid_client", "Unknown client_id: GET /v3/applications shows it.")
    if grant_type != GRANT_TYPE:
        raise TokenRefused("unsupported_grant_type", "Only authorization_code is supported.")
    try:
        grant_id = codes.redeem(
            db, code, client_id=client_id, redirect_uri=redirect_uri, verifier=verifier
        )
    except codes.CodeRefused as exc:
        db.rollback()
        raise TokenRefused("invalid_grant", str(exc)) from exc
    db.commit()
    grant = GrantRepository(db).get(grant_id)
    if grant is None:
        raise TokenRefused("invalid_grant", "The grant of this code was deleted.")
    return grant
