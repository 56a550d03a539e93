"""Failure reasons from skopeo's exit and messages, and the fatal line shown to the user."""

from __future__ import annotations

import pytest

from quaymirror.mirror.worker.reasons import classify, fatal_message
from quaymirror.mirror.worker.skopeo import Result, StopReason


def _fatal(msg: str) -> str:
    escaped = msg.replace('"', '\\"')
    return f'time="2026-01-01T00:00:00Z" level=fatal msg="{escaped}"\n'


@pytest.mark.parametrize(("message", "reason"), [
    (("Error listing repository tags: unable to retrieve auth token: invalid username/password: "
     "unauthorized: authentication required"), "auth_failed"),
    (('Error parsing image name "docker://127.0.0.1:5001/ns/repo:latest": reading manifest latest in '
     "127.0.0.1:5001/ns/repo: unauthorized: authentication required"), "auth_failed"),
    ("Error listing repository tags: fetching tags list: invalid status code from registry 404 (Not Found)",
     "not_found"),
    ("reading manifest nope in 127.0.0.1:5001/ns/repo: manifest unknown: manifest unknown", "not_found"),
    (('pinging container registry 127.0.0.1:5003: Get "https://127.0.0.1:5003/v2/": x509: certificate signed '
     "by unknown authority"), "tls_error"),
    ('Get "https://127.0.0.1:5001/v2/": http: server gave HTTP response to HTTPS client', "tls_error"),
    (('pinging container registry 127.0.0.1:5999: Get "http://127.0.0.1:5999/v2/": dial tcp 127.0.0.1:5999: '
     "connect: connection refused"), "connection_error"),
    ('Get "http://127.0.0.1:5998/v2/": context deadline exceeded', "timeout"),
    ("net/http: TLS handshake timeout", "timeout"),
    ("invalid reference format: repository name must be lowercase", "unknown_error"),
    # Quay's substring rules would call these auth_failed / connection_error; they are not.
    ("copying config: the author field is empty", "unknown_error"),
    ("writing blob: failed to read from destination repository up/app: 500 (Internal Server Error)",
     "unknown_error"),
])
def test_classify_from_skopeo_messages(message, reason):
    assert classify(1, _fatal(message)) == reason


def test_classify_status_and_kills():
    assert classify(0, "") is None
    assert classify(None, "", timed_out=True) == "timeout"
    assert classify(-9, _fatal("dial tcp: connect: connection refused")) == "unknown_error"
    # A process we killed is classified by why we killed it, never by its output.
    stopped = Result("copy", [], -9, "", _fatal("dial tcp: connect: connection refused"), stopped=StopReason.SHUTDOWN)
    assert stopped.reason == "cancelled"
    assert fatal_message("no logrus here\nlast line\n") == "last line"
    assert fatal_message(_fatal('a "quoted" name')) == 'a "quoted" name'
