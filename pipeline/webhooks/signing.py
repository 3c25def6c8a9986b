"""Secrets and signatures of webhook notifications.

``X-Nylas-Signature`` is the hex HMAC-SHA256 of the exact raw request body, keyed with the
destination's own secret. Receivers must verify over the bytes they received, before parsing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SIGNATURE_HEADER = "X-Nylas-Signature"
SECRET_BYTES = 32  # 256-bit secrets, shown as 64 hex characters


def new_secret() -> str:
    """A fresh signing secret (64 hex characters)."""
    return secrets.token_hex(SECRET_BYTES)


def sign(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``body`` keyed with ``secret``."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is the signature of ``body`` (constant-time comparison)."""
    return hmac.compare_digest(sign(secret, body), signature.strip().lower())
