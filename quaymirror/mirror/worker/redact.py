"""Redaction of skopeo output (Quay's patterns, plus a few more shapes) before it is logged or stored.

skopeo never prints the credentials it reads from an authfile, but its
``--debug`` output, proxies with userinfo and registry error bodies can carry
tokens; everything it prints passes through :func:`redact` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[REDACTED]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Quay: "Authorization:" and the rest of the line (the prefix keeps its case).
    (re.compile(r"(authorization:)[ \t]*[^\r\n]*", re.IGNORECASE), r"\1 " + MASK),
    # The same header in JSON or a Go map dump: "Authorization": ["Basic ..."].
    (re.compile(r'("authorization"\s*:\s*)(\[[^\]]*\]|"[^"]*")', re.IGNORECASE), r'\1"' + MASK + '"'),
    # Quay: credentials given as flags, "--creds=u:p" or "--src-creds u:p"; also passwords and tokens.
    (re.compile(r"(--(?:src-|dest-)?(?:creds|password|registry-token))(=|\s+)(\S+)", re.IGNORECASE),
     r"\1\2" + MASK),
    # Quay: "auth": "<base64>" in auth files; also the other secret fields of auth.json and token answers.
    (re.compile(r'("(?:auth|password|identitytoken|registrytoken|token|access_token|refresh_token)"\s*:\s*")'
                r'[^"]*(")', re.IGNORECASE), r"\1" + MASK + r"\2"),
    # Bearer tokens anywhere.
    (re.compile(r"(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE), r"\1" + MASK),
    # Userinfo in URLs (proxies: http://user:pass@proxy:3128).
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+(@)", re.IGNORECASE), r"\1" + MASK + r"\2"),
)

# Known secrets shorter than this are not searched for: they would mangle ordinary text.
MIN_SECRET_LENGTH = 4


def redact(text: str | None, secrets: Iterable[str | None] = ()) -> str | None:
    """Mask credentials in ``text``; also every occurrence of the given known ``secrets``."""
    if not text:
        return text
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
