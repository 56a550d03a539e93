"""Tests for credential encryption at rest."""

from __future__ import annotations

import pytest

from quaymirror.security.secrets import DecryptionFailed, SecretBox


def test_round_trip() -> None:
    box = SecretBox("app-secret")
    token = box.encrypt("hunter2")
    assert token is not None and token != "hunter2"
    assert box.decrypt(token) == "hunter2"


def test_round_trip_unicode_and_fresh_box() -> None:
    token = SecretBox("k").encrypt("pässwörd☃")
    assert SecretBox("k").decrypt(token) == "pässwörd☃"


def test_none_passthrough() -> None:
    box = SecretBox("app-secret")
    assert box.encrypt(None) is None
    assert box.decrypt(None) is None


def test_empty_string_is_encrypted() -> None:
    box = SecretBox("app-secret")
    token = box.encrypt("")
    assert token
    assert box.decrypt(token) == ""


def test_wrong_key_fails() -> None:
    token = SecretBox("key-one").encrypt("secret-value")
    with pytest.raises(DecryptionFailed):
        SecretBox("key-two").decrypt(token)


def test_corrupt_token_fails() -> None:
    box = SecretBox("app-secret")
    with pytest.raises(DecryptionFailed):
        box.decrypt("not-a-token")
    token = box.encrypt("secret-value")
    assert token is not None
    with pytest.raises(DecryptionFailed):
        box.decrypt(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))


def test_decryption_failed_is_value_error() -> None:
    assert issubclass(DecryptionFailed, ValueError)


def test_ciphertext_does_not_contain_plaintext() -> None:
    plaintext = "super-secret-registry-password"
    token = SecretBox("app-secret").encrypt(plaintext)
    assert token is not None
    assert plaintext not in token


def test_encryption_is_randomised() -> None:
    box = SecretBox("app-secret")
    assert box.encrypt("same") != box.encrypt("same")


@pytest.mark.parametrize("key", ["", None])
def test_empty_key_rejected(key: object) -> None:
    with pytest.raises(ValueError):
        SecretBox(key)  # type: ignore[arg-type]


def test_repr_hides_key() -> None:
    assert "app-secret" not in repr(SecretBox("app-secret"))
