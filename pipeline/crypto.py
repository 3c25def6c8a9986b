"""Encryption of secrets at rest and in task arguments.

Secrets (IMAP/SMTP passwords, webhook secrets) are sealed with Fernet (AES-128-CBC with an
HMAC-SHA256) under the keys in ``IMAP_PIPELINE_ENCRYPTION_KEYS``. The first key encrypts; every
key decrypts, so a new key can be put in front and old ciphertexts re-sealed at leisure
(:meth:`SecretBox.rotate`).
"""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from pipeline.errors import ConfigurationError, CryptoError


def generate_key() -> str:
    """A fresh Fernet key, as text."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Seals and opens secrets with a list of keys (first encrypts, all decrypt)."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigurationError("SecretBox needs at least one encryption key.")
        try:
            self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in keys])
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                "An encryption key is not a valid Fernet key (32 url-safe base64 bytes); "
                "generate one with `imap-pipeline keygen`."
            ) from exc

    def seal(self, plaintext: str) -> str:
        """Encrypt text; the result is ASCII and safe to store or pass as a task argument."""
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, token: str) -> str:
        """Decrypt a token made by :meth:`seal` with any configured key."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            raise CryptoError(
                "A stored secret cannot be decrypted with any key in IMAP_PIPELINE_ENCRYPTION_KEYS "
                "(was the key that sealed it removed?)."
            ) from exc

    def seal_json(self, value: dict[str, str]) -> str:
        """Encrypt a small mapping of secrets."""
        return self.seal(json.dumps(value, separators=(",", ":")))

    def open_json(self, token: str) -> dict[str, str]:
        """Decrypt a mapping sealed by :meth:`seal_json`."""
        value = json.loads(self.open(token))
        if not isinstance(value, dict):
            raise CryptoError("A sealed secret bundle is not a mapping.")
        return {str(k): str(v) for k, v in value.items()}

    def rotate(self, token: str) -> str:
        """Re-seal a token under the current first key."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken as exc:
            raise CryptoError("Cannot rotate a secret no configured key can open.") from exc
