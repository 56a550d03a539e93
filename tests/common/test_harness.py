"""Tests of the harness itself, against a real docker-registry and skopeo."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.common.images import ARCHES, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, build_layout, push_images
from tests.common.registries import AUTH_PASSWORD, AUTH_USERNAME
from tests.common.registry import Registry, authfile, hung_server

TAGS = ["v1", "v2", "v3", "latest"]  # v1 and v3 are multi-arch (index 0 and 2)


_MISSING = [tool for tool in ("docker-registry", "skopeo") if shutil.which(tool) is None]
needs_tools = pytest.mark.skipif(
    bool(_MISSING), reason=f"required tool(s) not on PATH: {', '.join(_MISSING)}"
)


def skopeo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["skopeo", *args], check=False, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
    )


def assert_pushed(reg: Registry, repo: str, digests: dict[str, str], *skopeo_args: str) -> None:
    assert set(reg.tags(repo)) == set(digests)
    for tag, digest in digests.items():
        assert reg.manifest_digest(repo, tag) == digest
        assert reg.manifest_digest(repo, digest) == digest
        raw = skopeo("inspect", "--raw", *skopeo_args, f"docker://{reg.host}/{repo}:{tag}")
        assert raw.returncode == 0, raw.stderr
        assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == digest


# ---------------------------------------------------------------- offline
def test_build_layout_is_deterministic(tmp_path: Path) -> None:
    a = build_layout(tmp_path / "a", TAGS)
    b = build_layout(tmp_path / "b", TAGS)
    assert a == b
    assert sorted(p.name for p in (tmp_path / "a/blobs/sha256").iterdir()) == sorted(
        p.name for p in (tmp_path / "b/blobs/sha256").iterdir()
    )
    for blob in (tmp_path / "a/blobs/sha256").iterdir():
        data = blob.read_bytes()
        assert hashlib.sha256(data).hexdigest() == blob.name
        assert len(data) < 1024

    index = json.loads((tmp_path / "a/index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == TAGS
    assert [m["mediaType"] for m in index["manifests"]] == [
        INDEX_MEDIA_TYPE,
        MANIFEST_MEDIA_TYPE,
        INDEX_MEDIA_TYPE,
        MANIFEST_MEDIA_TYPE,
    ]
    top = json.loads((tmp_path / "a/blobs/sha256" / a["v1"].split(":")[1]).read_text())
    assert [m["platform"]["architecture"] for m in top["manifests"]] == list(ARCHES)

    moved = build_layout(tmp_path / "c", TAGS, seed="moved")
    assert all(moved[t] != a[t] for t in TAGS)
    single = build_layout(tmp_path / "d", TAGS, multiarch_every=0)
    assert single["v2"] == a["v2"] and single["v1"] != a["v1"]
    with pytest.raises(ValueError):
        build_layout(tmp_path / "e", ["Bad/Tag"])


# ------------------------------------------------------------ registries
@needs_tools
def test_open_registry_push_and_digests(registry: Registry, tmp_path: Path) -> None:
    assert registry.url == f"http://{registry.host}"
    assert registry.ca_cert is None
    assert registry.tags("ns/repo") == []
    assert registry.manifest_digest("ns/repo", "v1") is None

    digests = push_images(registry, "ns/repo", TAGS, workdir=tmp_path / "img")
    assert_pushed(registry, "ns/repo", digests, "--tls-verify=false")

    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/ns/repo:v1")
    index = json.loads(raw.stdout)
    assert index["mediaType"] == INDEX_MEDIA_TYPE
    assert {m["platform"]["architecture"] for m in index["manifests"]} == set(ARCHES)
    for child in index["manifests"]:
        assert registry.manifest_digest("ns/repo", child["digest"]) == child["digest"]

    # An upstream that moved: same tags, new digests, in parallel this time.
    moved = push_images(registry, "ns/repo", TAGS, seed="moved", workdir=tmp_path / "img2", jobs=4)
    assert all(moved[t] != digests[t] for t in TAGS)
    assert_pushed(registry, "ns/repo", moved, "--tls-verify=false")


@needs_tools
def test_auth_registry(auth_registry: Registry, tmp_path: Path) -> None:
    reg = auth_registry
    status, headers, _ = reg.request("GET", "/v2/", auth=False)
    assert status == 401 and "realm=" in headers.get("WWW-Authenticate", "")
    assert reg.request("GET", "/v2/")[0] == 200

    digests = push_images(reg, "ns/private", TAGS, workdir=tmp_path / "img")
    with authfile(reg) as good:
        assert (good.stat().st_mode & 0o777) == 0o600
        assert (good.parent.stat().st_mode & 0o777) == 0o700
        assert_pushed(reg, "ns/private", digests, "--tls-verify=false", "--authfile", str(good))
        ok = skopeo(
            "list-tags", "--tls-verify=false", "--authfile", str(good), f"docker://{reg.host}/ns/private"
        )
        assert ok.returncode == 0, ok.stderr
        assert set(json.loads(ok.stdout)["Tags"]) == set(TAGS)
    assert not good.exists()

    with authfile(extra={reg.host: (AUTH_USERNAME, "wrong")}) as bad:
        res = skopeo(
            "list-tags", "--tls-verify=false", "--authfile", str(bad), f"docker://{reg.host}/ns/private"
        )
    assert res.returncode != 0
    assert b"unauthorized" in res.stderr
    assert AUTH_PASSWORD.encode() not in res.stderr + res.stdout

    # Live rotation: the registry re-reads htpasswd when its mtime changes.
    reg.set_password(AUTH_USERNAME, "rotated:pass")
    assert reg.auth == (AUTH_USERNAME, "rotated:pass")
    assert set(reg.tags("ns/private")) == set(TAGS)
    with authfile(extra={reg.host: (AUTH_USERNAME, AUTH_PASSWORD)}) as old:
        res = skopeo(
            "list-tags", "--tls-verify=false", "--authfile", str(old), f"docker://{reg.host}/ns/private"
        )
    assert res.returncode != 0 and b"unauthorized" in res.stderr


@needs_tools
def test_tls_registry(tls_registry: Registry, tmp_path: Path) -> None:
    reg = tls_registry
    assert reg.url == f"https://{reg.host}"
    assert reg.ca_cert is not None and reg.ca_cert.exists()
    assert reg.cert_dir is not None and (reg.cert_dir / "ca.crt").exists()

    ctx = ssl.create_default_context(cafile=str(reg.ca_cert))
    with urllib.request.urlopen(f"{reg.url}/v2/", context=ctx, timeout=5) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(f"{reg.url}/v2/", context=ssl.create_default_context(), timeout=5)
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
    with urllib.request.urlopen(f"https://localhost:{reg.port}/v2/", context=ctx, timeout=5) as resp:
        assert resp.status == 200  # SAN has DNS:localhost too

    digests = push_images(reg, "ns/tls", TAGS[:2], workdir=tmp_path / "img")
    assert_pushed(reg, "ns/tls", digests, *reg.skopeo_tls_args())

    # skopeo verifies the cert by default and fails without the CA.
    res = skopeo("list-tags", f"docker://{reg.host}/ns/tls")
    assert res.returncode != 0 and b"certificate signed by unknown authority" in res.stderr


@needs_tools
def test_shared_data_dir_tls_port(registry: Registry, tmp_path: Path) -> None:
    digests = push_images(registry, "ns/shared", TAGS[:2], workdir=tmp_path / "img")
    with Registry(tmp_path / "tls-front", tls=True, data_dir=registry.data_dir) as front:
        assert front.port != registry.port
        assert set(front.tags("ns/shared")) == set(digests)
        for tag, digest in digests.items():
            assert front.manifest_digest("ns/shared", tag) == digest
    assert not front.running


@needs_tools
def test_kill_then_connection_error_and_restart(registry: Registry, tmp_path: Path) -> None:
    digests = push_images(registry, "ns/repo", ["a"], workdir=tmp_path / "img")
    port = registry.port
    registry.kill()
    assert not registry.running
    with pytest.raises(ConnectionError):
        registry.tags("ns/repo")
    registry.kill()
    registry.stop()  # idempotent after kill

    registry.start()  # same port, same data
    assert registry.port == port
    assert registry.manifest_digest("ns/repo", "a") == digests["a"]
    t0 = time.monotonic()
    registry.stop()
    registry.stop()
    assert time.monotonic() - t0 < 5
    assert not registry.running
    with pytest.raises(ConnectionError):
        registry.tags("ns/repo")


@needs_tools
def test_registry_log_and_config(registry: Registry) -> None:
    cfg = registry.config_path.read_text()
    assert f'addr: "{registry.host}"' in cfg
    assert "draintimeout: 1s" in cfg and "uploadpurging" in cfg
    assert "listening on" in registry.log_text()


def test_hung_server_accepts_and_never_answers() -> None:
    with hung_server() as addr:
        host, port = addr.rsplit(":", 1)
        assert host == "127.0.0.1"
        t0 = time.monotonic()
        with pytest.raises((TimeoutError, urllib.error.URLError)) as err:
            urllib.request.urlopen(f"http://{addr}/v2/", timeout=0.5)
        elapsed = time.monotonic() - t0
        if isinstance(err.value, urllib.error.URLError):
            assert isinstance(err.value.reason, TimeoutError)
        assert 0.4 < elapsed < 3

        # The connection really is accepted (not refused) and stays silent.
        with socket.create_connection((host, int(port)), timeout=1) as sock:
            sock.settimeout(0.2)
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(TimeoutError):
                sock.recv(1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=1).close()


def test_hung_server_bounded_lifetime() -> None:
    with hung_server(max_lifetime=0.3) as addr:
        host, port = addr.rsplit(":", 1)
        time.sleep(0.6)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=1).close()
