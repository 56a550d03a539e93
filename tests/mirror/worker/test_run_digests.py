"""Cheap digest checks: manifest HEADs instead of ``skopeo inspect``, kept-alive connections, rate limits.

Against real registries (open, htpasswd, TLS): the HEAD digests equal the
sha256 of ``skopeo inspect --raw``; a no-change re-sync runs no skopeo
inspect or copy at all (skopeo is wrapped by a script that logs its argv).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from quaymirror.mirror import status
from quaymirror.mirror.models import RepoMirrorConfig
from quaymirror.mirror.worker.registry_client import RateLimited, RegistryClient
from tests.common.images import push_images
from tests.common.registries import AUTH_PASSWORD, AUTH_USERNAME
from tests.common.registry import Registry
from tests.common.worker import skopeo_commands, sync_once

TAGS = ["a", "b", "c", "d"]  # a and c are 3-platform indexes


def _skopeo_digest(reg: Registry, repo: str, tag: str, creds: bool = False) -> str:
    cmd = ["skopeo", "inspect", "--raw", *reg.skopeo_tls_args()]
    if creds:
        cmd += ["--creds", f"{AUTH_USERNAME}:{AUTH_PASSWORD}"]
    out = subprocess.run([*cmd, f"docker://{reg.host}/{repo}:{tag}"], capture_output=True, timeout=30, check=True)
    return "sha256:" + hashlib.sha256(out.stdout).hexdigest()


def _check(reg: Registry, client: RegistryClient, tmp_path: Path, creds: bool = False) -> None:
    digests = push_images(reg, "ns/r", TAGS, workdir=tmp_path / "img")
    for _ in range(3):  # several rounds on one thread: one connection, reused
        assert {t: client.manifest_digest("ns/r", t) for t in TAGS} == digests
    assert digests == {t: _skopeo_digest(reg, "ns/r", t, creds) for t in TAGS}
    assert len(client._open) == 1
    assert client.manifest_digest("ns/r", "nope") is None
    client.close()
    assert client.manifest_digest("ns/r", "a") == digests["a"]  # re-opens after close


def test_head_digests_equal_skopeo_open(registry, tmp_path):
    _check(registry, RegistryClient(registry.host, tls_verify=False, trust_host=True), tmp_path)


def test_head_digests_equal_skopeo_htpasswd(auth_registry, tmp_path):
    client = RegistryClient(auth_registry.host, username=AUTH_USERNAME, password=AUTH_PASSWORD, tls_verify=False,
                            trust_host=True)
    _check(auth_registry, client, tmp_path, creds=True)


def test_head_digests_equal_skopeo_tls(tls_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.cert_dir / "ca.crt"))
    _check(tls_registry, RegistryClient(tls_registry.host, tls_verify=True, trust_host=True), tmp_path)


def test_kept_alive_connection_survives_a_server_side_close(registry, tmp_path):
    digests = push_images(registry, "ns/r", ["a"], workdir=tmp_path / "img")
    client = RegistryClient(registry.host, tls_verify=False, trust_host=True)
    assert client.manifest_digest("ns/r", "a") == digests["a"]
    [conn] = client._open
    conn.sock.close()  # as if the registry dropped the idle connection
    assert client.manifest_digest("ns/r", "a") == digests["a"]


def _requests(reg: Registry, method: str, path: str) -> int:
    """Requests in the registry's access log with this method and a path starting with ``path``."""
    return sum(f'"{method} {path}' in line for line in reg.log_text(tail=10_000_000).splitlines())


@pytest.mark.parametrize("destination", ["oci", "docker"])
def test_no_change_resync_runs_no_skopeo_inspect_or_copy(destination, auth_registry, database, mirrors,
                                                         make_worker, tmp_path, markers, counting_skopeo,
                                                         request, caplog):
    caplog.set_level(logging.INFO, logger="quaymirror")
    wrapper, log = counting_skopeo
    markers.append(auth_registry.host)
    digests = push_images(auth_registry, "up/app", TAGS, workdir=tmp_path / "img")
    overrides = {"skopeo_path": str(wrapper)}
    if destination == "docker":
        dest = request.getfixturevalue("registry")
        markers.append(dest.host)
        overrides.update(storage=f"docker://{dest.host}", storage_tls_verify=False)
    config_id = mirrors.create("org/app", f"{auth_registry.host}/up/app", ["*"], username=AUTH_USERNAME,
                               password=AUTH_PASSWORD)
    worker = make_worker(**overrides)
    assert sync_once(worker) == 1
    [run] = mirrors.runs(config_id)
    assert (run.status, run.tags_copied) == ("SUCCESS", len(TAGS))
    first = skopeo_commands(log)
    assert "inspect" not in first  # the HEAD gave every digest
    # One copy per tag, plus the one retry the worker makes when distribution answers a transient 500 under
    # concurrent pushes of shared layers (logged "trying again"; seen in CI on PostgreSQL, docker destination).
    retries = sum("trying again" in r.getMessage() for r in caplog.records)
    assert first.count("copy") == len(TAGS) + retries
    if destination == "docker":
        # The empty destination's tag list, read once, said every tag was missing: no HEAD per tag.
        assert _requests(dest, "GET", "/v2/org/app/tags/list") == 1
        assert _requests(dest, "HEAD", "/v2/org/app/manifests/") == 0

    log.unlink()
    with database.transaction() as session:
        assert status.request_sync_now(session, session.get(RepoMirrorConfig, config_id))
    assert sync_once(worker) == 1
    run = mirrors.runs(config_id)[-1]
    assert (run.status, run.tags_copied, run.tags_skipped) == ("SUCCESS", 0, len(TAGS))
    assert {t: r.digest for t, r in mirrors.tags(run.id).items()} == digests
    assert skopeo_commands(log) == []  # tags listed and digests read over HTTP
    if destination == "docker":  # each tag was in the destination's list: its digest is asked for
        assert _requests(dest, "HEAD", "/v2/org/app/manifests/") == len(TAGS)


class _Limited(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        if self.path == "/v2/ns/r/manifests/exhausted":
            self.send_response(429)
            self.send_header("Retry-After", "60")
        else:
            self.send_response(200)
            self.send_header("Docker-Content-Digest", "sha256:" + "0" * 64)
        self.send_header("RateLimit-Remaining", "0;w=21600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_rate_limit_headers_are_honoured():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Limited)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = RegistryClient(f"127.0.0.1:{server.server_port}", tls_verify=False, timeout=5, trust_host=True)
        assert client.manifest_digest("ns/r", "ok") == "sha256:" + "0" * 64
        assert client.rate_limit_remaining == 0
        with pytest.raises(RateLimited, match="429.*Retry-After 60"):
            client.manifest_digest("ns/r", "exhausted")
        client.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _Unlisted(BaseHTTPRequestHandler):
    """A destination that refuses to list tags but answers HEAD: docker-registry lists for whoever may
    pull, so this fault is made with a fake (a registry or proxy that blocks the catalog endpoints)."""

    requests: ClassVar[list[str]]

    def do_GET(self) -> None:
        self.requests.append(f"GET {self.path}")
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.requests.append(f"HEAD {self.path}")
        if self.path == "/v2/org/app/manifests/present":
            self.send_response(200)
            self.send_header("Docker-Content-Digest", "sha256:" + "1" * 64)
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_destination_that_will_not_list_its_tags_is_asked_for_each_tag(settings):
    from quaymirror.mirror.worker.destination import open_repository
    from quaymirror.mirror.worker.skopeo import ProcessGroup, RunFiles, Skopeo

    handler = type("Unlisted", (_Unlisted,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    files = RunFiles()
    try:
        host = f"127.0.0.1:{server.server_port}"
        skopeo = Skopeo("skopeo", timeout=10, group=ProcessGroup(), workdir=files.path)
        repo = open_repository(settings.with_overrides(storage=f"docker://{host}", storage_tls_verify=False),
                               "org", "app", files, skopeo)
        assert repo.digest("present") == "sha256:" + "1" * 64
        assert repo.digest("absent") is None
        assert handler.requests == ["GET /v2/org/app/tags/list?n=1000", "HEAD /v2/org/app/manifests/present",
                                      "HEAD /v2/org/app/manifests/absent"]
    finally:
        files.remove()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
