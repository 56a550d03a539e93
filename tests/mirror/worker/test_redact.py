"""Redaction of what skopeo prints: Quay's patterns (credentials, auth headers, tokens) and more."""

from __future__ import annotations

import pytest

from quaymirror.mirror.worker.redact import redact


@pytest.mark.parametrize(("text", "expected"), [
    (None, None),
    ("", ""),
    ('time="x" level=fatal msg="manifest unknown"', 'time="x" level=fatal msg="manifest unknown"'),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: [REDACTED]"),
    ("authorization: Bearer abc.def.ghi", "authorization: [REDACTED]"),
    ("--src-creds=user:password123 x", "--src-creds=[REDACTED] x"),
    ("--dest-creds user:password123", "--dest-creds [REDACTED]"),
    ("--creds=u:p", "--creds=[REDACTED]"),
    ('{"auth": "dXNlcjpwYXNz"}', '{"auth": "[REDACTED]"}'),
    ('"Authorization": ["Basic dXNlcjpwYXNz"]', '"Authorization": "[REDACTED]"'),
    ("proxyconnect tcp: http://bob:s3cret@proxy:3128 refused", "proxyconnect tcp: http://bob:[REDACTED]@proxy:3128 refused"),
    ('{"token": "eyJhbGciOi", "expires_in": 300}', '{"token": "[REDACTED]", "expires_in": 300}'),
    ("line one\nAuthorization: Bearer xyz\nline three", "line one\nAuthorization: [REDACTED]\nline three"),
])
def test_redact(text, expected):
    assert redact(text) == expected


def test_redact_known_secrets():
    assert redact("wrong password hunter22 for u", ["hunter22", None, "ab"]) == "wrong password [REDACTED] for u"
    assert redact("a short ab secret stays", ["ab"]) == "a short ab secret stays"
