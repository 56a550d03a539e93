"""Encryption at rest for upstream registry credentials.

Credentials are stored encrypted with a Fernet key derived from the app's
SECRET_KEY, so a database dump alone does not leak registry passwords.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["DecryptionFailed", "SecretBox"]

_HKDF_INFO = b"quaymirror-credentials"


class DecryptionFailed(ValueError):
    """The token is corrupt or was encrypted under a different key."""


class SecretBox:
    """Symmetric encrypt/decrypt of short secrets with a derived Fernet key."""

    def __init__(self, key: str) -> None:
        """Derive the Fernet key via HKDF-SHA256 so any secret string works."""
        if not isinstance(key, str) or not key:
            raise ValueError("SecretBox requires a non-empty secret key")
        raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
            key.encode("utf-8")
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(raw))

    def __repr__(self) -> str:
        """Never expose key material in logs or tracebacks."""
        return "SecretBox(<redacted>)"

    def encrypt(self, value: str | None) -> str | None:
        """Encrypt ``value``; ``None`` stays ``None`` (no credential stored)."""
        if value is None:
            return None
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str | None) -> str | None:
        """Decrypt ``token``; raise DecryptionFailed if it can't be authenticated."""
        if token is None:
            return None
        try:
            data = self._fernet.decrypt(token.encode("utf-8"))
            return data.decode("utf-8")
        except (InvalidToken, UnicodeError, TypeError, ValueError) as exc:
            raise DecryptionFailed("Stored credential could not be decrypted") from exc
