"""Failure reasons, classified from skopeo's exit status and its fatal message (not loose substrings).

skopeo exits 1 on every failure and prints one logrus line,
``level=fatal msg="..."``; the message ends with the registry's or Go's error
text, which is what we match, with patterns anchored on the exact phrases
skopeo 1.9 / containers-image produce against docker-registry (the worker's
tests run them for real). A process we killed is classified by why we killed
it, never by its output. :class:`RunFailed` carries a reason out of a run.
"""

from __future__ import annotations

import re

AUTH_FAILED = "auth_failed"
NOT_FOUND = "not_found"
TLS_ERROR = "tls_error"
CONNECTION_ERROR = "connection_error"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
INVALID_SOURCE = "invalid_source"
# A docker:// destination refused a sparse index (and QUAYMIRROR_SPARSE_FALLBACK is "fail").
SPARSE_REFUSED = "sparse_refused"
UNKNOWN_ERROR = "unknown_error"

_FATAL_RE = re.compile(r'level=fatal msg="((?:[^"\\]|\\.)*)"')

# Checked in this order; the first rule with a matching pattern wins.
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (TIMEOUT, (
        r"context deadline exceeded",          # --command-timeout
        r"net/http: TLS handshake timeout",
        r"\bi/o timeout\b",
        r"Client\.Timeout exceeded",
    )),
    (TLS_ERROR, (
        r"\bx509: ",
        r"\btls: ",
        r"server gave HTTP response to HTTPS client",
        r"remote error: tls",
    )),
    (AUTH_FAILED, (
        r"\bunauthorized: ",                    # distribution error code UNAUTHORIZED
        r"\bdenied: ",                          # distribution error code DENIED
        r"invalid username/password",
        r"requested access to the resource is denied",
        r"invalid status code from registry 40[13]\b",
    )),
    (NOT_FOUND, (
        r"\bmanifest unknown\b",
        r"\bname unknown\b",
        r"\bblob unknown\b",
        r"invalid status code from registry 404\b",
        r"\brepository name not known to registry\b",
    )),
    (CONNECTION_ERROR, (
        r"\bdial tcp\b",
        r"\bconnect: ",
        r"\bno such host\b",
        r"\bconnection reset by peer\b",
        r"\bnetwork is unreachable\b",
        r"\bproxyconnect\b",
        r"\bunexpected EOF\b",
        r": EOF$",
        r"\bbroken pipe\b",
    )),
)
_COMPILED = tuple((reason, tuple(re.compile(p) for p in patterns)) for reason, patterns in _RULES)


def fatal_message(stderr: str | None) -> str:
    """skopeo's fatal message (unescaped), or the last non-empty line of stderr when there is none."""
    if not stderr:
        return ""
    matches = _FATAL_RE.findall(stderr)
    if matches:
        return matches[-1].replace('\\"', '"').replace("\\\\", "\\")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def classify(returncode: int | None, stderr: str | None, *, timed_out: bool = False) -> str | None:
    """The reason of a finished skopeo command; None when it succeeded (a stopped one: ``Result.reason``)."""
    if timed_out:
        return TIMEOUT
    if returncode == 0:
        return None
    if returncode is None or returncode < 0:
        return UNKNOWN_ERROR  # killed by a signal we did not send
    message = fatal_message(stderr)
    for reason, patterns in _COMPILED:
        if any(p.search(message) for p in patterns):
            return reason
    return UNKNOWN_ERROR


class RunFailed(Exception):
    """The run cannot go on: it ends FAIL with this reason (and skopeo's output, when skopeo said why)."""

    def __init__(self, reason: str, message: str, stdout: str | None = None, stderr: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.stdout = stdout
        self.stderr = stderr
