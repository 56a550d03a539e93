"""A sync whose upstream names a forbidden token realm or redirects a manifest HEAD: refused, and skopeo not run.

Real processes on loopback: docker-registry (with token auth where a realm is
involved), skopeo through the counting wrapper, the worker in-process. Only
127.0.0.1/32 is allow-listed; 127.0.0.2 plays the forbidden host, with a
listener there that must see no connection. The token endpoint is a stand-in
(no token server is installed here): a small HTTP server signing the JWTs the
real registry verifies.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from quaymirror.mirror.worker import reasons
from quaymirror.security import ssrf
from tests.common.images import push_images
from tests.common.loopback import Recorder, Seen, same_port_pair
from tests.common.registry import Registry, yaml_str
from tests.common.worker import skopeo_calls, skopeo_commands, sync_once

USER, PASSWORD = "mirror-user", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SERVICE, ISSUER = "upstream-registry", "test-token-issuer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Signs the bearer tokens distribution's ``auth.token`` accepts (RS256, ``kid`` = libtrust key id)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=1)).sign(self.key, hashes.SHA256()))
        self.cert_path = root / "token-issuer.crt"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        digest = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
        self.kid = ":".join(digest[i:i + 4] for i in range(0, len(digest), 4))

    def token(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        claims = {"iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now - 10,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def answer(self, seen: Seen) -> tuple[int, dict[str, str], bytes]:
        """The token endpoint: a token for the asked scopes to the mirror's credentials, 401 otherwise."""
        if seen.headers.get("authorization") != BASIC:
            return 401, {"WWW-Authenticate": 'Basic realm="token"'}, b""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(seen.path).query)
        token = self.token(query.get("scope", []))
        return 200, {"Content-Type": "application/json"}, json.dumps({"token": token, "expires_in": 300}).encode()


class TokenRegistry(Registry):
    """A docker-registry with ``auth.token``: clients must fetch a bearer token from ``realm``."""

    def __init__(self, root: Path, realm: str, issuer_cert: Path, data_dir: Path | None = None) -> None:
        super().__init__(root, data_dir=data_dir)
        self.realm = realm
        self.issuer_cert = issuer_cert

    def _write_config(self) -> None:
        super()._write_config()
        with self.config_path.open("a") as config:
            config.write("\n".join([
                "auth:",
                "  token:",
                f"    realm: {yaml_str(self.realm)}",
                f"    service: {yaml_str(SERVICE)}",
                f"    issuer: {yaml_str(ISSUER)}",
                f"    rootcertbundle: {yaml_str(self.issuer_cert)}",
            ]) + "\n")


@pytest.fixture
def forbidden() -> Iterator[Recorder]:
    """The forbidden host: a listener on 127.0.0.2 that records every connection."""
    with Recorder("127.0.0.2") as recorder:
        yield recorder


def forwarding(target: Registry, special: dict[tuple[str, str], tuple[int, dict[str, str], bytes]]):
    """A stand-in upstream's answer: ``special`` (method, path) answers, everything else forwarded to ``target``."""

    def answer(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        if (seen.method, seen.path) in special:
            return special[(seen.method, seen.path)]
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
        try:
            conn.putrequest(seen.method, seen.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", target.host)
            for key, value in seen.items:
                if key.lower() not in ("host", "connection", "content-length"):
                    conn.putheader(key, value)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            headers = {k: v for k, v in resp.getheaders()
                       if k.lower() not in ("connection", "transfer-encoding", "content-length")}
            if seen.method == "HEAD":
                headers["Content-Length"] = resp.getheader("Content-Length") or "0"
            return resp.status, headers, body
        finally:
            conn.close()

    return answer


def _copied_tags(log: Path) -> list[str]:
    """The upstream tag of each ``skopeo copy`` the worker started."""
    return sorted(argv[-2].rsplit(":", 1)[1] for _, argv in skopeo_calls(log) if argv[0] == "copy")


# ------------------------------------------------------------------ token realm


def test_a_token_realm_on_a_forbidden_host_fails_the_run_without_skopeo(
        forbidden, tmp_path, mirrors, make_worker, counting_skopeo, markers):
    issuer = TokenIssuer(tmp_path / "issuer")
    with TokenRegistry(tmp_path / "upstream", f"{forbidden.url}/token", issuer.cert_path) as upstream:
        markers.append(upstream.host)
        config_id = mirrors.create("org/app", f"{upstream.host}/up/app", ["*"], username=USER, password=PASSWORD)
        wrapper, log = counting_skopeo
        assert sync_once(make_worker(skopeo_path=str(wrapper))) == 1
    forbidden.stop()
    [run] = mirrors.runs(config_id)
    assert (run.status, run.reason) == ("FAIL", reasons.INVALID_SOURCE)
    assert run.message == (f"refused to connect to {forbidden.authority} (token realm): "
                           "URL points to a private or reserved IP address")
    assert mirrors.tags(run.id) == {}
    assert skopeo_commands(log) == []  # no list-tags fallback: skopeo would have followed the realm
    assert forbidden.connections == []  # so the credentials never left for it either


def test_a_token_realm_on_an_allowed_host_gets_the_credentials(
        registry, tmp_path, mirrors, make_worker, counting_skopeo, markers):
    digests = push_images(registry, "up/app", ["a", "b"], workdir=tmp_path / "images")
    issuer = TokenIssuer(tmp_path / "issuer")
    with Recorder("127.0.0.1", answer=issuer.answer) as realm, \
            TokenRegistry(tmp_path / "upstream", f"{realm.url}/token", issuer.cert_path,
                          data_dir=registry.data_dir) as upstream:  # the same images, behind token auth
        markers.append(upstream.host)
        status, _, _ = upstream.request("GET", "/v2/up/app/tags/list", auth=False)
        assert status == 401
        config_id = mirrors.create("org/app", f"{upstream.host}/up/app", ["*"], username=USER, password=PASSWORD)
        wrapper, log = counting_skopeo
        assert sync_once(make_worker(skopeo_path=str(wrapper))) == 1
    [run] = mirrors.runs(config_id)
    assert (run.status, run.tags_copied) == ("SUCCESS", 2), run.message
    assert {t: r.digest for t, r in mirrors.tags(run.id).items()} == digests
    # The tag list and the HEADs went over HTTP with a token (no list-tags, no inspect); skopeo only copied.
    assert skopeo_commands(log) == ["copy", "copy"]
    assert realm.requests and {seen.headers.get("authorization") for seen in realm.requests} == {BASIC}
    assert any(seen.path.startswith(f"/token?service={SERVICE}&scope=repository%3Aup%2Fapp%3Apull")
               for seen in realm.requests)


# ------------------------------------------------------------------ redirects


def test_a_manifest_head_redirected_to_a_forbidden_host_fails_that_tag_without_skopeo(
        registry, forbidden, tmp_path, mirrors, make_worker, counting_skopeo, markers):
    """A stand-in upstream: distribution does not redirect manifests, so a forwarding server in front of a
    real registry answers 307 for one tag's HEAD."""
    digests = push_images(registry, "up/app", ["ok", "moved"], workdir=tmp_path / "images")
    elsewhere = f"{forbidden.url}/v2/up/app/manifests/moved"
    special = {("HEAD", "/v2/up/app/manifests/moved"): (307, {"Location": elsewhere}, b"")}
    with Recorder("127.0.0.1", answer=forwarding(registry, special)) as upstream:
        markers.append(upstream.authority)
        config_id = mirrors.create("org/app", f"{upstream.authority}/up/app", ["*"], username=USER,
                                   password=PASSWORD)
        wrapper, log = counting_skopeo
        assert sync_once(make_worker(skopeo_path=str(wrapper))) == 1
    forbidden.stop()
    [run] = mirrors.runs(config_id)
    refused = (f"refused to connect to {forbidden.authority} (redirect of HEAD /v2/up/app/manifests/moved): "
               "URL points to a private or reserved IP address")
    assert (run.status, run.reason) == ("FAIL", reasons.INVALID_SOURCE)
    assert run.message == f"1 of 2 tags failed; moved: {refused}"
    tags = mirrors.tags(run.id)
    assert (tags["moved"].outcome, tags["moved"].reason, tags["moved"].output) == (
        "failed", reasons.INVALID_SOURCE, refused)
    assert (tags["ok"].outcome, tags["ok"].digest) == ("copied", digests["ok"])
    assert skopeo_commands(log) == ["copy"] and _copied_tags(log) == ["ok"]  # nothing for "moved"
    assert forbidden.connections == []


def test_a_manifest_head_redirected_to_an_allowed_host_is_followed(
        registry, tmp_path, mirrors, make_worker, counting_skopeo, markers):
    """The same stand-in, redirecting to the real registry itself (another port on 127.0.0.1, allowed)."""
    digests = push_images(registry, "up/app", ["ok", "moved"], workdir=tmp_path / "images")
    special = {("HEAD", "/v2/up/app/manifests/moved"):
               (307, {"Location": f"{registry.url}/v2/up/app/manifests/moved"}, b"")}
    with Recorder("127.0.0.1", answer=forwarding(registry, special)) as upstream:
        markers.append(upstream.authority)
        config_id = mirrors.create("org/app", f"{upstream.authority}/up/app", ["*"])
        wrapper, log = counting_skopeo
        assert sync_once(make_worker(skopeo_path=str(wrapper))) == 1
    [run] = mirrors.runs(config_id)
    assert (run.status, run.tags_copied) == ("SUCCESS", 2), run.message
    assert {t: r.digest for t, r in mirrors.tags(run.id).items()} == digests
    assert skopeo_commands(log) == ["copy", "copy"]  # the digest came from the redirected HEAD, not skopeo inspect


def test_a_manifest_head_that_redirects_forever_fails_that_tag_without_skopeo(
        registry, tmp_path, mirrors, make_worker, counting_skopeo, markers):
    """The same stand-in, answering a HEAD with a redirect to itself: past the client's hop limit the tag
    fails instead of going to skopeo inspect, which would go on following it without the SSRF rules."""
    push_images(registry, "up/app", ["ok", "loop"], workdir=tmp_path / "images")
    special = {("HEAD", "/v2/up/app/manifests/loop"): (307, {"Location": "/v2/up/app/manifests/loop"}, b"")}
    with Recorder("127.0.0.1", answer=forwarding(registry, special)) as upstream:
        markers.append(upstream.authority)
        config_id = mirrors.create("org/app", f"{upstream.authority}/up/app", ["*"])
        wrapper, log = counting_skopeo
        assert sync_once(make_worker(skopeo_path=str(wrapper))) == 1
    [run] = mirrors.runs(config_id)
    tags = mirrors.tags(run.id)
    assert (tags["loop"].outcome, tags["loop"].reason) == ("failed", reasons.INVALID_SOURCE)
    assert "redirects" in tags["loop"].output
    assert tags["ok"].outcome == "copied"
    assert skopeo_commands(log) == ["copy"] and _copied_tags(log) == ["ok"]


# ------------------------------------------------------------------ the upstream's own host


def test_the_upstream_host_is_checked_again_when_the_client_connects(mirrors, make_worker, counting_skopeo):
    """DNS rebinding: the reference's name resolves to an allowed address when the run checks it and to a
    forbidden one when the client connects a moment later. That connect is checked too, so it goes nowhere."""
    allowed, rebound = same_port_pair()
    answers: list[str] = []

    def rebinding(host: str) -> list[str]:
        answers.append(host)
        return ["127.0.0.1"] if len(answers) == 1 else ["127.0.0.2"]

    with allowed, rebound:
        config_id = mirrors.create("org/app", f"rebind.test:{allowed.port}/up/app", ["*"])
        wrapper, log = counting_skopeo
        worker = make_worker(skopeo_path=str(wrapper))
        with ssrf.use_resolver(rebinding):
            assert sync_once(worker) == 1
    [run] = mirrors.runs(config_id)
    assert (run.status, run.reason) == ("FAIL", reasons.INVALID_SOURCE)
    assert run.message == (f"refused to connect to rebind.test:{allowed.port}: "
                           "URL resolves to a private or reserved IP address")
    assert answers == ["rebind.test", "rebind.test"]  # the run's check, then the client's connect
    assert skopeo_commands(log) == []
    assert allowed.connections == rebound.connections == []


def test_a_refused_source_keeps_quays_message_and_the_log_names_the_host(mirrors, make_worker, counting_skopeo,
                                                                         caplog):
    config_id = mirrors.create("org/app", "127.0.0.2:5000/up/app", ["*"])
    wrapper, log = counting_skopeo
    with caplog.at_level("WARNING", logger="quaymirror.mirror.worker.sync"):
        assert sync_once(make_worker(skopeo_path=str(wrapper))) == 1
    [run] = mirrors.runs(config_id)
    assert (run.status, run.reason, run.message) == ("FAIL", reasons.INVALID_SOURCE,
                                                     "Source registry location is not allowed")
    assert skopeo_commands(log) == []
    assert ("mirror org/app: source refused: host 127.0.0.2 refused by the SSRF rules: URL points to a private or "
            "reserved IP address; QUAYMIRROR_SSRF_ALLOWED_HOSTS allows it when it lists 127.0.0.2 or a CIDR "
            "containing it") in [r.getMessage() for r in caplog.records]
