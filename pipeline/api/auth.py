"""API keys: ``Authorization: Bearer <key>``, checked against SHA-256 hashes in constant time.

The plaintext keys are read once from settings at start-up, hashed, and dropped; the app keeps
only the hashes. Every configured key is compared (no early exit), so timing tells nothing about
which key came close.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pipeline.api.errors import ApiError

# the credentials of the Authorization header (also read by the lean list routes: pipeline.api.lean)
bearer = HTTPBearer(auto_error=False, description="An API key from IMAP_PIPELINE_API_KEYS.")


def hash_key(key: str) -> bytes:
    """The SHA-256 digest an API key is stored as."""
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """The hashes of the configured API keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._hashes = tuple(hash_key(k) for k in keys if k)

    def __len__(self) -> int:
        return len(self._hashes)

    def accepts(self, presented: str) -> bool:
        """Whether ``presented`` is one of the configured keys (constant time per key)."""
        digest = hash_key(presented)
        matched = False
        for known in self._hashes:
            matched |= hmac.compare_digest(digest, known)
        return matched


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


async def require_api_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
) -> None:
    """FastAPI dependency: a valid API key or a 401 in the v3 envelope.

    ``async``: it never blocks (one SHA-256 per request), and a plain ``def`` dependency costs a
    hop to the threadpool and back on every request.

    Raises:
        ApiError: 401 ``unauthorized`` when the header is missing, malformed or wrong.
    """
    ring: KeyRing = request.app.state.api.keys
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("Missing API key: send the header `Authorization: Bearer <api key>`.")
    if not len(ring):
        raise _unauthorized("No API keys are configured: set IMAP_PIPELINE_API_KEYS.")
    if not ring.accepts(credentials.credentials):
        raise _unauthorized("The API key is not valid.")
