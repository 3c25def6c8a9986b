"""Secrets and signatures of webhook notifications.

``X-Nylas-Signature`` is the hex HMAC-SHA256 of the exact raw request body, keyed with the
destination's own secret. Receivers must verify over the bytes they received, before parsing
(and, for a destination with ``compressed_delivery``, before inflating: the body sent is the
gzip of the JSON, with ``Content-Encoding: gzip``; see :func:`encode`).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import secrets
from dataclasses import dataclass

SIGNATURE_HEADER = "X-Nylas-Signature"
SECRET_BYTES = 32  # 256-bit secrets, shown as 64 hex characters
GZIP_LEVEL = 6  # zlib's default: most of the gain at a fraction of level 9's CPU


@dataclass(frozen=True)
class Encoded:
    """A notification body as it goes on the wire, and its ``Content-Encoding`` (None: plain)."""

    body: bytes
    content_encoding: str | None = None


def encode(body: bytes, *, compressed: bool) -> Encoded:
    """The bytes to POST: the JSON itself, or its gzip for ``compressed_delivery`` (no file
    name, time 0: the same JSON always gives the same bytes, so a retry is signed the same)."""
    if not compressed:
        return Encoded(body)
    return Encoded(gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0), "gzip")


def new_secret() -> str:
    """A fresh signing secret (64 hex characters)."""
    return secrets.token_hex(SECRET_BYTES)


def sign(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``body`` keyed with ``secret``."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is the signature of ``body`` (constant-time comparison)."""
    return hmac.compare_digest(sign(secret, body), signature.strip().lower())
