"""Pure functions of the worker: redaction (Quay's patterns and more), failure reasons, tag rules, the schedule grid."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from quaymirror.mirror.worker.policy import next_start
from quaymirror.mirror.worker.reasons import classify, fatal_message
from quaymirror.mirror.worker.redact import redact
from quaymirror.mirror.worker.skopeo import Result, StopReason, proxy_env
from quaymirror.mirror.worker.tags import filter_tags


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


def test_filter_tags_is_quays_glob_union_in_code_point_order():
    tags = ["latest", "v1.0", "v1.10", "v1.9", "V1.0", "v2.0", "dev-1", "Dev-2", "bad tag", "..x"]
    assert filter_tags(tags, ["v1.*", "latest"]) == ["latest", "v1.0", "v1.10", "v1.9"]
    assert filter_tags(tags, ["[Dd]ev-?"]) == ["Dev-2", "dev-1"]
    assert filter_tags(tags, ["V1.0"]) == ["V1.0"]  # case-sensitive
    assert filter_tags(tags, ["*"]) == sorted(t for t in tags if t not in ("bad tag", "..x"))
    assert filter_tags(tags, ["v1.0", "v1.0", "v1.*"]) == ["v1.0", "v1.10", "v1.9"]
    assert filter_tags(tags, ["[!v]*"]) == ["Dev-2", "V1.0", "dev-1", "latest"]
    assert filter_tags(tags, []) == []


def test_next_start_grid():
    start = datetime(2026, 1, 1, 12, 0, 0)
    now = start + timedelta(seconds=125, microseconds=400)
    assert next_start(start, 60, now) == start + timedelta(seconds=180)
    assert next_start(start, 60, start + timedelta(seconds=120)) == start + timedelta(seconds=180)  # strictly after
    assert next_start(start + timedelta(hours=1), 60, now) == start + timedelta(hours=1)  # future start kept
    assert next_start(start, 0, now) is None
    assert next_start(None, 60, now) == now.replace(microsecond=0) + timedelta(seconds=60)


def test_proxy_env():
    assert proxy_env({}) == {}
    assert proxy_env({"http_proxy": "http://p:3128", "https_proxy": "", "no_proxy": None}) == {
        "HTTP_PROXY": "http://p:3128"}
    assert proxy_env({"https_proxy": "http://p:3128", "no_proxy": "a.example"}, bypass=["dest", "dest:5000"]) == {
        "HTTPS_PROXY": "http://p:3128", "NO_PROXY": "a.example,dest,dest:5000"}
    assert proxy_env(None, bypass=["dest"]) == {}
