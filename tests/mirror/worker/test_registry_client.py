"""The registry client's realms and redirects go through the guarded opener; credentials stay with their origin.

The upstreams here are stand-in HTTP servers (tests/common/loopback.py):
distribution never redirects a manifest request nor names a token realm on
another host, and these tests need a registry that does. 127.0.0.2 is the
forbidden host, with only 127.0.0.1/32 allow-listed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from quaymirror.mirror.worker.destination import DestinationError, open_repository
from quaymirror.mirror.worker.registry_client import MAX_REDIRECTS, RegistryClient, RegistryError, next_link
from quaymirror.mirror.worker.skopeo import ProcessGroup, RunFiles, Skopeo
from quaymirror.security.outbound import OutboundRefused
from quaymirror.settings import Settings
from tests.common.images import push_images
from tests.common.loopback import Recorder, Seen

DIGEST = "sha256:" + "4" * 64
BASIC = "Basic " + base64.b64encode(b"mirror-user:s3cret").decode()


def found(_: Seen) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Docker-Content-Digest": DIGEST, "Content-Type": "application/vnd.oci.image.manifest.v1+json"}, b""


def redirect(location: str, status: int = 307):
    return lambda _seen: (status, {"Location": location}, b"")


@pytest.fixture
def forbidden() -> Iterator[Recorder]:
    """A listener on 127.0.0.2 that must see no connection."""
    with Recorder("127.0.0.2", answer=found) as recorder:
        yield recorder


def upstream_client(recorder: Recorder, **options) -> RegistryClient:
    """The client the worker makes for an upstream: nothing trusted, 127.0.0.1/32 allowed."""
    return RegistryClient(recorder.authority, username="mirror-user", password="s3cret", tls_verify=False,
                          timeout=5, allowed_hosts=("127.0.0.1/32",), trust_host=False, **options)


def test_a_redirect_to_an_allowed_host_is_followed_without_the_credentials():
    with Recorder(answer=found) as storage:
        routes = {"/v2/ns/r/manifests/away": redirect(f"{storage.url}/blobs/x?sig=1"),
                  "/v2/ns/r/manifests/here": redirect("/v2/ns/r/manifests/final", 308),
                  "/v2/ns/r/manifests/final": found}
        with Recorder(answer=lambda seen: routes[seen.path](seen)) as upstream:
            client = upstream_client(upstream)
            assert client.manifest_digest("ns/r", "away") == DIGEST
            assert client.manifest_digest("ns/r", "here") == DIGEST  # a relative Location, same origin
            client.close()
    assert [(s.method, s.path, s.headers.get("authorization")) for s in upstream.requests] == [
        ("HEAD", "/v2/ns/r/manifests/away", BASIC),
        ("HEAD", "/v2/ns/r/manifests/here", BASIC),
        ("HEAD", "/v2/ns/r/manifests/final", BASIC),
    ]
    # Another port is another origin: the Authorization header was meant for the registry only.
    assert [(s.method, s.path, s.headers.get("authorization")) for s in storage.requests] == [
        ("HEAD", "/blobs/x?sig=1", None)]


def test_a_redirect_to_a_forbidden_host_is_refused_before_connecting(forbidden):
    with Recorder(answer=redirect(f"{forbidden.url}/v2/ns/r/manifests/t")) as upstream:
        client = upstream_client(upstream)
        with pytest.raises(OutboundRefused) as refused:
            client.manifest_head("ns/r", "t")
        client.close()
    forbidden.stop()
    assert forbidden.connections == []
    assert refused.value.host == "127.0.0.2"
    assert str(refused.value) == (f"refused to connect to {forbidden.authority} (redirect of HEAD "
                                  "/v2/ns/r/manifests/t): URL points to a private or reserved IP address")


def test_redirects_are_bounded():
    with Recorder(answer=redirect("/v2/ns/r/manifests/t", 302)) as upstream:
        client = upstream_client(upstream)
        with pytest.raises(RegistryError, match=f"more than {MAX_REDIRECTS} redirects"):
            client.manifest_head("ns/r", "t")
        client.close()
    assert len(upstream.requests) == MAX_REDIRECTS + 1


def test_a_token_realm_on_a_forbidden_host_is_refused_and_gets_no_credentials(forbidden):
    challenge = f'Bearer realm="{forbidden.url}/token",service="reg"'
    with Recorder(answer=lambda seen: (401, {"WWW-Authenticate": challenge}, b"")) as upstream:
        client = upstream_client(upstream)
        with pytest.raises(OutboundRefused, match=f"{forbidden.authority} \\(token realm\\)"):
            client.tags("ns/r")
        client.close()
    forbidden.stop()
    assert forbidden.connections == []


def test_a_token_realm_on_an_allowed_host_gets_the_credentials():
    token = "t0ken"
    with Recorder(answer=lambda seen: (200, {}, json.dumps({"token": token}).encode())) as realm:
        challenge = f'Bearer realm="{realm.url}/token",service="reg"'

        def registry_answer(seen: Seen):
            if seen.headers.get("authorization") != f"Bearer {token}":
                return 401, {"WWW-Authenticate": challenge}, b""
            return 200, {}, json.dumps({"tags": ["a"]}).encode()

        with Recorder(answer=registry_answer) as upstream:
            client = upstream_client(upstream)
            assert client.tags("ns/r") == ["a"]
            client.close()
    [asked] = realm.requests
    assert asked.path == "/token?service=reg&scope=repository%3Ans%2Fr%3Apull"
    assert asked.headers["authorization"] == BASIC


def test_the_upstream_host_itself_is_checked_at_every_connect():
    """Allowed when the run checked the reference; the client checks again when it connects."""
    with Recorder(answer=found) as upstream:
        client = RegistryClient(upstream.authority, tls_verify=False, timeout=5, allowed_hosts=(),
                                trust_host=False)
        with pytest.raises(OutboundRefused, match=upstream.authority):
            client.manifest_head("ns/r", "t")
        client.close()
    assert upstream.connections == []


@pytest.fixture
def docker_destination(tmp_path):
    """``open_repository`` for ``docker://<host>`` with an empty allow list (no database involved)."""
    files = RunFiles()
    skopeo = Skopeo("skopeo", timeout=30, group=ProcessGroup(), workdir=files.path)

    def make(host: str):
        settings = Settings(instance_path=tmp_path, database_url="sqlite://", secret_key="k",
                            storage=f"docker://{host}", storage_tls_verify=False)
        assert settings.ssrf_allowed_hosts == ()
        return open_repository(settings, "org", "app", files, skopeo)

    yield make
    files.remove()


def test_the_destination_host_needs_no_allow_list_entry(registry, docker_destination, tmp_path):
    digests = push_images(registry, "org/app", ["v1"], workdir=tmp_path / "images")
    repository = docker_destination(registry.host)
    assert repository.digest("v1") == digests["v1"]
    repository.client.close()


def test_the_destination_redirecting_elsewhere_is_checked(forbidden, docker_destination):
    with Recorder(answer=redirect(f"{forbidden.url}/v2/org/app/manifests/v1")) as destination:
        repository = docker_destination(destination.authority)
        # The tag fails as any unreadable destination does (DestinationError), naming the refused host.
        with pytest.raises(DestinationError, match=forbidden.authority):
            repository.digest("v1")
        repository.client.close()
    forbidden.stop()
    assert forbidden.connections == []


def test_catalog_pages_through_a_real_registry(registry, tmp_path):
    """``catalog`` yields the pages of ``/v2/_catalog`` as distribution's ``Link`` headers chain them."""
    for repo in ("a/one", "b/two", "c/three"):
        push_images(registry, repo, ["v1"], multiarch_every=0, workdir=tmp_path / repo)
    client = RegistryClient(registry.host, scheme="http", allowed_hosts=("127.0.0.1/32",))
    seen: list[str] = []

    def attempt(call):
        seen.append("page")
        return call()

    assert list(client.catalog(2, attempt=attempt)) == [["a/one", "b/two"], ["c/three"]]
    assert seen == ["page", "page"]
    client.close()


def test_catalog_without_following_redirects_answers_the_redirect():
    with Recorder(answer=redirect("/v2/_catalog?n=5&last=x")) as upstream:
        client = RegistryClient(upstream.authority, scheme="http", allowed_hosts=("127.0.0.1/32",),
                                follow_redirects=False)
        with pytest.raises(RegistryError) as answered:
            list(client.catalog(5))
        client.close()
    assert answered.value.status == 307
    assert [s.path for s in upstream.requests] == ["/v2/_catalog?n=5"]


@pytest.mark.parametrize(("header", "path"), [
    ('</v2/_catalog?last=b&n=2>; rel="next"', "/v2/_catalog?last=b&n=2"),
    ('<https://h/api?page=1>; rel="prev" , <https://h/api?page=3>; rel="next"', "/api?page=3"),
    ('</x?page=1>; rel="prev"', None),
    ("", None),
    (None, None),
])
def test_next_link(header, path):
    assert next_link(header) == path
