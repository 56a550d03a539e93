"""verify: the upstream asked as a source of its kind asks it (paths, credentials, Quay's messages), through the
SSRF rules, against a stand-in HTTP server on loopback (it stands in for Harbor's, Quay's and a registry's
endpoints; nothing else is ever reached)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from tests.common.loopback import TunnelProxy
from tests.common.org_mirror_api import org_mirror_body

MIRROR = "/api/v1/organization/sellnsmall/mirror"


def configure(client, admin, **overrides) -> None:
    response = client.post(MIRROR, json=org_mirror_body(**overrides), headers=admin)
    assert response.status_code == 201, response.get_data(as_text=True)


class _StandIn(BaseHTTPRequestHandler):
    """A stand-in for an upstream's listing API on loopback: answers ``routes`` (path -> status), records
    the Authorization headers it got."""

    routes: ClassVar[dict[str, int]] = {}
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(self.routes.get(self.path, 404))
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    _StandIn.routes, _StandIn.seen = {}, []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("kind", "routes", "success", "message"), [
    ("harbor", {"/api/v2.0/projects/proj": 200}, True, "Connection successful"),
    ("harbor", {"/api/v2.0/projects/proj": 403}, False, "Access forbidden - check permissions"),
    ("harbor", {}, False, "Project 'proj' not found"),
    ("quay", {"/api/v1/user/": 200, "/api/v1/users/proj": 200}, True, "Connection successful"),
    ("quay", {"/api/v1/user/": 401}, False, "Authentication failed: invalid API token or credentials"),
    ("quay", {"/api/v1/user/": 200}, False, "Namespace 'proj' not found"),
    ("registry", {"/v2/": 200}, True, "Connection successful"),
    ("registry", {"/v2/": 401}, False, "Authentication failed"),
])
def test_verify_asks_the_upstream_as_its_kind_does(client_allowing_loopback, orgs, upstream, kind, routes,
                                                   success, message):
    admin = orgs.headers("ORGADMIN")
    _StandIn.routes = routes
    configure(client_allowing_loopback, admin, external_registry_type=kind, external_registry_url=upstream,
              external_namespace="proj", external_registry_username="bob", external_registry_password="tok")
    response = client_allowing_loopback.post(f"{MIRROR}/verify", headers=admin)
    assert response.status_code == 200
    assert response.get_json() == {"success": success, "message": message}
    expected_auth = "Bearer tok" if kind == "quay" else "Basic Ym9iOnRvaw=="
    assert {auth for _path, auth in _StandIn.seen} == {expected_auth}


def test_verify_refuses_a_url_the_rules_now_block(client_allowing_loopback, client, orgs, upstream):
    """Stored while allowed, refused once the allow list no longer has it: nothing is sent."""
    admin = orgs.headers("ORGADMIN")
    configure(client_allowing_loopback, admin, external_registry_url=upstream)
    response = client.post(f"{MIRROR}/verify", headers=admin)
    assert response.get_json() == {"success": False, "message": "The provided URL is not allowed"}
    assert _StandIn.seen == []


def test_verify_goes_through_the_configured_proxy(client_allowing_loopback, orgs, upstream):
    """A real tunnelling proxy on loopback: verify asks through it, as the discovery does."""
    admin = orgs.headers("ORGADMIN")
    _StandIn.routes = {"/v2/": 200}
    with TunnelProxy() as proxy:
        configure(client_allowing_loopback, admin, external_registry_type="registry", external_registry_url=upstream,
                  external_registry_config={"proxy": {"http_proxy": proxy.url}})
        body = client_allowing_loopback.post(f"{MIRROR}/verify", headers=admin).get_json()
    assert body == {"success": True, "message": "Connection successful"}
    assert [target for target, _ in proxy.connects] == [upstream.removeprefix("http://")]
    assert [path for path, _ in _StandIn.seen] == ["/v2/"]


def test_verify_with_an_unusable_proxy_says_so(client_allowing_loopback, orgs, upstream):
    admin = orgs.headers("ORGADMIN")
    configure(client_allowing_loopback, admin, external_registry_type="registry", external_registry_url=upstream,
              external_registry_config={"proxy": {"https_proxy": "ftp://proxy.example.com:3128"}})
    body = client_allowing_loopback.post(f"{MIRROR}/verify", headers=admin).get_json()
    assert body["success"] is False and body["message"].startswith("Invalid proxy configuration: ")
    assert _StandIn.seen == []


