"""Discovery: the repositories of an upstream namespace, listed as Quay's organization-mirror worker lists them.

``quay`` and ``harbor`` run against stand-in HTTP servers on 127.0.0.1 (tests/common/loopback.py's
recorders, answering Quay's repository list API and Harbor's project repositories API as Quay's worker
reads them): neither Quay nor Harbor can run here. They record every request, so the exact paths, query
parameters and Authorization headers are asserted. ``registry`` runs against a real ``docker-registry``.
127.0.0.2 plays the forbidden host, with only 127.0.0.1/32 allow-listed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quaymirror.orgmirror import discovery, upstream
from quaymirror.orgmirror.discovery import DiscoveryFailed, Source, list_repositories
from quaymirror.orgmirror.models import OrgMirrorConfig, SourceRegistryType
from quaymirror.settings import Settings
from tests.common.images import build_layout, push_layout
from tests.common.loopback import Recorder, Seen, TunnelProxy
from tests.common.ports import free_port
from tests.common.registries import AUTH_PASSWORD, AUTH_USERNAME
from tests.common.registry import hung_server

QUAY, HARBOR, REGISTRY = SourceRegistryType.QUAY, SourceRegistryType.HARBOR, SourceRegistryType.REGISTRY
BASIC = "Basic Ym9iOnMzY3JldA=="  # bob:s3cret
Reply = tuple[int, dict[str, str], bytes]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch) -> None:
    """Quay's back-off waits 0, 2 and 4 s between tries; the retry tests count tries, not seconds."""
    monkeypatch.setattr(upstream, "BACKOFF_FACTOR", 0.0)


@pytest.fixture
def loopback_settings(tmp_path: Path) -> Settings:
    """Only 127.0.0.1/32 is allowed (discovery touches no database)."""
    return Settings(instance_path=tmp_path, database_url="sqlite://", secret_key="k",
                    ssrf_allowed_hosts=("127.0.0.1/32",))


def answer(table: dict[str, Reply | Callable[[Seen], Reply]]) -> Callable[[Seen], Reply]:
    """A stand-in's answers: the request's path (query included) looked up; anything else is a 404."""
    def respond(seen: Seen) -> Reply:
        found = table.get(seen.path, (404, {}, b'{"error": "not found"}'))
        return found(seen) if callable(found) else found
    return respond


def page(status: int = 200, headers: dict[str, str] | None = None, **body: object) -> Reply:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


def harbor_page(names: list[str], headers: dict[str, str] | None = None) -> Reply:
    return 200, {"Content-Type": "application/json", **(headers or {})}, json.dumps(
        [{"name": name, "id": i} for i, name in enumerate(names)]).encode()


def repositories(*names: str) -> list[dict[str, object]]:
    return [{"namespace": "ns", "name": name, "is_public": True} for name in names]


def source(kind: SourceRegistryType, url: str, namespace: str = "ns", **fields: Any) -> Source:
    return Source(kind, url, namespace, **fields)


def requests(recorder: Recorder) -> list[tuple[str, str | None]]:
    return [(seen.path, seen.headers.get("authorization")) for seen in recorder.requests]


def failure(src: Source, settings: Settings) -> str:
    with pytest.raises(DiscoveryFailed) as failed:
        list_repositories(src, settings)
    return failed.value.message


QUAY_OK = {"/api/v1/user/": page(username="bob"), "/api/v1/organization/ns": page(name="ns")}
LIST = "/api/v1/repository?namespace=ns"


# ------------------------------------------------------------------------------------------------- quay
def test_quay_with_a_token_tests_the_connection_then_pages_by_next_page(loopback_settings):
    table = {**QUAY_OK,
             LIST: page(repositories=repositories("alpha", "beta"), next_page="tok2"),
             f"{LIST}&next_page=tok2": page(repositories=repositories("gamma", "alpha"), next_page="tok3"),
             f"{LIST}&next_page=tok3": page(repositories=repositories("delta"), next_page="")}
    with Recorder(answer=answer(table)) as quay:
        names = list_repositories(source(QUAY, quay.url + "/", username="ignored", password="tok"),
                                  loopback_settings)
    assert names == ["alpha", "beta", "gamma", "delta"]
    assert requests(quay) == [("/api/v1/user/", "Bearer tok"), ("/api/v1/organization/ns", "Bearer tok"),
                              (LIST, "Bearer tok"), (f"{LIST}&next_page=tok2", "Bearer tok"),
                              (f"{LIST}&next_page=tok3", "Bearer tok")]


def test_quay_without_a_token_asks_for_public_repositories_of_a_user_namespace(loopback_settings):
    table = {"/api/v1/users/ns": page(username="ns"),
             f"{LIST}&public=true": page(repositories=repositories("one"), next_page="n2"),
             f"{LIST}&public=true&next_page=n2": page(repositories=repositories("two"))}
    with Recorder(answer=answer(table)) as quay:
        names = list_repositories(source(QUAY, quay.url, username="bob"), loopback_settings)
    assert names == ["one", "two"]
    assert requests(quay) == [("/api/v1/organization/ns", None), ("/api/v1/users/ns", None),
                              (f"{LIST}&public=true", None), (f"{LIST}&public=true&next_page=n2", None)]


def test_quay_under_a_path_prefix_keeps_it(loopback_settings):
    table = {f"/quay{path}": reply for path, reply in QUAY_OK.items()}
    table[f"/quay{LIST}"] = page(repositories=repositories("x"))
    with Recorder(answer=answer(table)) as quay:
        assert list_repositories(source(QUAY, f"{quay.url}/quay//", password="tok"), loopback_settings) == ["x"]


@pytest.mark.parametrize(("table", "message"), [
    ({"/api/v1/user/": page(401)}, "Authentication failed: invalid API token or credentials"),
    ({"/api/v1/user/": page(403)}, "Authentication failed: insufficient permissions"),
    ({"/api/v1/user/": page(200)}, "Namespace 'ns' not found"),
])
def test_quay_fails_with_verify_s_message_when_the_connection_test_fails(loopback_settings, table, message):
    with Recorder(answer=answer(table)) as quay:
        assert failure(source(QUAY, quay.url, password="tok"), loopback_settings) == message
    assert not any(path.startswith("/api/v1/repository") for path, _ in requests(quay))


@pytest.mark.parametrize(("status", "message"), [
    (404, "Namespace 'ns' not found on Quay registry"),
    (401, "Authentication failed: invalid credentials"),
    (403, "Access forbidden to namespace 'ns'"),
    (418, "Quay API returned error: 418"),
])
def test_quay_listing_errors_in_quay_s_words(loopback_settings, status, message):
    with Recorder(answer=answer({**QUAY_OK, LIST: page(status)})) as quay:
        assert failure(source(QUAY, quay.url, password="tok"), loopback_settings) == message
    assert [path for path, _ in requests(quay)].count(LIST) == 1  # a 4xx is not retried


def test_a_redirect_is_answered_not_followed(loopback_settings):
    with Recorder(answer=answer({LIST: page(repositories=repositories("stolen"))})) as elsewhere:
        moved = (302, {"Location": f"{elsewhere.url}{LIST}"}, b"")
        with Recorder(answer=answer({**QUAY_OK, LIST: moved})) as quay:
            assert failure(source(QUAY, quay.url, password="tok"), loopback_settings) == (
                "Registry returned redirect (302)")
        with Recorder(answer=answer({"/api/v2.0/projects/ns/repositories?page=1&page_size=100": moved})) as harbor:
            assert failure(source(HARBOR, harbor.url), loopback_settings) == "Registry returned redirect (302)"
        with Recorder(answer=answer({"/v2/_catalog?n=100": (307, {"Location": f"{elsewhere.url}/v2/_catalog"},
                                                            b"")})) as registry:
            assert failure(source(REGISTRY, registry.url), loopback_settings) == "Registry returned redirect (307)"
    assert elsewhere.requests == []


def test_a_503_is_retried_until_the_page_comes(loopback_settings):
    answers = iter([page(503), page(503), page(repositories=repositories("late"))])
    with Recorder(answer=answer({**QUAY_OK, LIST: lambda _seen: next(answers)})) as quay:
        assert list_repositories(source(QUAY, quay.url, password="tok"), loopback_settings) == ["late"]
    assert [path for path, _ in requests(quay)].count(LIST) == 3


def test_a_request_left_unanswered_is_retried_on_a_new_connection(loopback_settings, monkeypatch):
    monkeypatch.setattr(upstream, "TIMEOUT_SECONDS", 0.3)
    unanswered: list[str] = []

    def silent_first(seen: Seen) -> Reply:
        if not unanswered:
            unanswered.append(seen.path)
            raise ConnectionAbortedError("the stand-in says nothing")  # the connection stays open, silent
        return harbor_page(["ns/a"])
    with Recorder(answer=answer({harbor_path(1, 100): silent_first})) as harbor:
        assert list_repositories(source(HARBOR, harbor.url), loopback_settings) == ["a"]
    assert len(harbor.requests) == 2 and len(harbor.connections) == 2


def test_a_500_that_stays_is_tried_four_times_then_reported(loopback_settings):
    with Recorder(answer=answer({**QUAY_OK, LIST: page(500)})) as quay:
        assert failure(source(QUAY, quay.url, password="tok"), loopback_settings) == "Quay API returned error: 500"
    assert [path for path, _ in requests(quay)].count(LIST) == 4


@pytest.mark.parametrize("body", [b"<html>not json</html>", b'{"repositories": "x"}', b'["x"]',
                                  b'{"repositories": [{"name": 7}]}', b'{"repositories": [], "next_page": 3}'])
def test_quay_answering_something_else_than_its_api_is_our_message(loopback_settings, body):
    with Recorder(answer=answer({**QUAY_OK, LIST: (200, {}, body)})) as quay:
        assert failure(source(QUAY, quay.url, password="tok"), loopback_settings) == (
            "Unexpected response from Quay registry")


# ----------------------------------------------------------------------------------------------- harbor
def harbor_path(number: int, size: int = 2, project: str = "ns") -> str:
    return f"/api/v2.0/projects/{project}/repositories?page={number}&page_size={size}"


def test_harbor_follows_link_next_and_cuts_the_project_off(loopback_settings):
    nxt = {"Link": f'<{harbor_path(1)}>; rel="prev" , <{harbor_path(3)}>; rel="next"'}
    table = {harbor_path(1): harbor_page(["ns/a", "ns/b"], {"Link": f'<{harbor_path(2)}>; rel="next"'}),
             harbor_path(2): harbor_page(["ns/c/d"], nxt),  # short, but Link says there is more
             harbor_path(3): harbor_page(["ns/e", "ns/a"], {"Link": f'<{harbor_path(2)}>; rel="prev"'}),
             harbor_path(4): harbor_page([])}
    with Recorder(answer=answer(table)) as harbor:
        names = list_repositories(source(HARBOR, harbor.url, username="bob", password="s3cret", page_size=2),
                                  loopback_settings)
    assert names == ["a", "b", "c/d", "e"]
    assert requests(harbor) == [(harbor_path(n), BASIC) for n in (1, 2, 3, 4)]  # page 3 was full: page 4 is asked, empty


def test_harbor_without_link_goes_on_while_pages_are_full(loopback_settings):
    table = {harbor_path(1): harbor_page(["ns/a", "ns/b"]), harbor_path(2): harbor_page(["ns/c", "ns/d"]),
             harbor_path(3): harbor_page([])}
    with Recorder(answer=answer(table)) as harbor:
        names = list_repositories(source(HARBOR, harbor.url, username="bob", page_size=2), loopback_settings)
    assert names == ["a", "b", "c", "d"]
    assert requests(harbor) == [(harbor_path(n), None) for n in (1, 2, 3)]  # no password: no basic auth


def test_harbor_stops_at_a_short_page_without_link(loopback_settings):
    with Recorder(answer=answer({harbor_path(1, 100, "my%20proj"): harbor_page(["my proj/x"])})) as harbor:
        assert list_repositories(source(HARBOR, harbor.url, namespace="my proj", password="only"),
                                 loopback_settings) == ["x"]
    assert requests(harbor) == [(harbor_path(1, 100, "my%20proj"), None)]


@pytest.mark.parametrize(("status", "message"), [
    (404, "Project 'ns' not found on Harbor registry"),
    (401, "Authentication failed: invalid credentials"),
    (403, "Access forbidden to project 'ns'"),
    (400, "Harbor API returned error: 400"),
    (502, "Harbor API returned error: 502"),
])
def test_harbor_errors_in_quay_s_words(loopback_settings, status, message):
    with Recorder(answer=answer({harbor_path(1): page(status)})) as harbor:
        assert failure(source(HARBOR, harbor.url, page_size=2), loopback_settings) == message


@pytest.mark.parametrize("body", [b"nope", b'{"name": "ns/a"}', b'[{"id": 1}]', b'["ns/a"]'])
def test_harbor_answering_something_else_than_its_api_is_our_message(loopback_settings, body):
    with Recorder(answer=answer({harbor_path(1): (200, {}, body)})) as harbor:
        assert failure(source(HARBOR, harbor.url, page_size=2), loopback_settings) == (
            "Unexpected response from Harbor registry")


def test_a_page_larger_than_the_cap_is_refused(loopback_settings, monkeypatch):
    monkeypatch.setattr(upstream, "MAX_BODY", 64)
    with Recorder(answer=answer({harbor_path(1): harbor_page([f"ns/r{i}" for i in range(5)])})) as harbor:
        assert failure(source(HARBOR, harbor.url, page_size=2), loopback_settings) == (
            "Unexpected response from Harbor registry")


# ------------------------------------------------------------------------------------------------ bounds
def test_a_listing_that_never_ends_is_stopped(loopback_settings, monkeypatch):
    monkeypatch.setattr(discovery, "MAX_PAGES", 3)
    endless = {f"{LIST}&public=true": page(repositories=repositories("r0"), next_page="1")}
    endless.update({f"{LIST}&public=true&next_page={n}": page(repositories=repositories(f"r{n}"),
                                                             next_page=str(n + 1)) for n in range(1, 10)})
    with Recorder(answer=answer({"/api/v1/organization/ns": page(), **endless})) as quay:
        assert failure(source(QUAY, quay.url), loopback_settings) == (
            "The upstream listing has more than 3 pages: discovery stopped")
    assert len(quay.requests) == 1 + 3


def test_too_many_names_are_refused(loopback_settings, monkeypatch):
    monkeypatch.setattr(discovery, "MAX_NAMES", 3)
    with Recorder(answer=answer({harbor_path(1, 100): harbor_page([f"ns/r{i}" for i in range(4)])})) as harbor:
        assert failure(source(HARBOR, harbor.url), loopback_settings) == (
            "The upstream namespace has more than 3 repositories: discovery stopped")


# -------------------------------------------------------------------------------------------- connection
@pytest.mark.parametrize(("kind", "registry"), [(QUAY, "Quay registry"), (HARBOR, "Harbor registry"),
                                                (REGISTRY, "registry")])
def test_nothing_listening_is_a_connection_failure(loopback_settings, kind, registry):
    base = f"http://127.0.0.1:{free_port()}"
    message = failure(source(kind, base + "/", password="tok"), loopback_settings)
    assert message.startswith(f"Failed to connect to {registry} at {base}: ")
    assert "refused" in message.lower()


def test_an_upstream_that_never_answers_times_out(loopback_settings, monkeypatch):
    monkeypatch.setattr(upstream, "TIMEOUT_SECONDS", 0.2)
    with hung_server() as authority:
        assert failure(source(HARBOR, f"http://{authority}"), loopback_settings) == (
            f"Connection to http://{authority} timed out")


@pytest.mark.parametrize("kind", [HARBOR, REGISTRY])
def test_an_unverified_certificate_fails_and_verify_tls_false_lets_it_through(loopback_settings, tls_registry,
                                                                            kind):
    message = failure(source(kind, tls_registry.url), loopback_settings)
    assert message.startswith(f"SSL certificate verification failed for {tls_registry.url}: ")
    assert "certificate" in message.lower()
    if kind == REGISTRY:
        assert list_repositories(source(kind, tls_registry.url, verify_tls=False), loopback_settings) == []


# ------------------------------------------------------------------------------------------------- SSRF
@pytest.mark.parametrize("kind", list(SourceRegistryType))
def test_a_forbidden_host_is_refused_before_any_connection(loopback_settings, kind):
    with Recorder("127.0.0.2", answer=answer({})) as forbidden:
        message = failure(source(kind, forbidden.url, username="bob", password="s3cret"), loopback_settings)
    assert message == "The provided registry URL is not allowed"
    assert forbidden.connections == [] and forbidden.requests == []


# ------------------------------------------------------------------------------------------------ proxy
def test_discovery_goes_through_the_proxy_of_the_url_s_scheme(loopback_settings):
    """A real tunnelling proxy on loopback: the listing goes through it, and ``no_proxy`` hosts or another
    scheme's proxy go direct, as requests decides for Quay."""
    with (Recorder(answer=answer({harbor_path(1, 100): harbor_page(["ns/a"])})) as harbor,
          TunnelProxy() as proxy):
        authority = harbor.url.removeprefix("http://")
        assert list_repositories(source(HARBOR, harbor.url, proxy={"http_proxy": proxy.url}),
                                 loopback_settings) == ["a"]
        assert proxy.connects == [(authority, None)]
        for direct in ({"https_proxy": proxy.url}, {"http_proxy": proxy.url, "no_proxy": "example.com, 127.0.0.1"}):
            assert list_repositories(source(HARBOR, harbor.url, proxy=direct), loopback_settings) == ["a"]
    assert len(proxy.connects) == 1 and len(harbor.requests) == 3


def test_the_registry_catalog_goes_through_the_proxy(loopback_settings, registry, one_image):
    push_layout(one_image, registry, "team/app")
    with TunnelProxy() as proxy:
        assert list_repositories(source(REGISTRY, registry.url, namespace="team", proxy={"http_proxy": proxy.url}),
                                 loopback_settings) == ["app"]
    assert [target for target, _ in proxy.connects] == [registry.host]


def test_a_proxy_the_rules_forbid_is_refused_before_connecting(loopback_settings):
    with Recorder(answer=answer({})) as harbor, TunnelProxy("127.0.0.2") as proxy:
        assert failure(source(HARBOR, harbor.url, proxy={"http_proxy": proxy.url}), loopback_settings) == (
            "The provided registry URL is not allowed")
    assert proxy.connections == [] and harbor.connections == []


def test_an_unusable_proxy_is_said_so(loopback_settings):
    with Recorder(answer=answer({})) as harbor:
        message = failure(source(HARBOR, harbor.url, proxy={"http_proxy": "https://u:s3cret@proxy.test:3128"}),
                          loopback_settings)
    assert message.startswith("Invalid proxy configuration: a proxy is http://host:port")
    assert "s3cret" not in message and harbor.connections == []


# --------------------------------------------------------------------------------------------- registry
@pytest.fixture
def one_image(tmp_path: Path) -> Path:
    layout = tmp_path / "layout"
    build_layout(layout, ["v1"], multiarch_every=0)
    return layout


CATALOG = ["other/x", "team/a", "team/b", "team/c/d", "teamx/y"]


def test_registry_catalog_is_paged_and_kept_to_the_namespace(loopback_settings, registry, one_image):
    for repo in CATALOG:
        push_layout(one_image, registry, repo)
    names = list_repositories(source(REGISTRY, registry.url, namespace="team", page_size=2), loopback_settings)
    assert names == ["a", "b", "c/d"]  # five names in three pages of two; teamx/ is not team/


def test_registry_with_htpasswd_needs_the_credentials(loopback_settings, auth_registry, one_image):
    push_layout(one_image, auth_registry, "team/app")
    good = source(REGISTRY, auth_registry.url, namespace="team", username=AUTH_USERNAME, password=AUTH_PASSWORD)
    assert list_repositories(good, loopback_settings) == ["app"]
    for username, password in ((AUTH_USERNAME, "wrong"), (None, None)):
        bad = source(REGISTRY, auth_registry.url, namespace="team", username=username, password=password)
        assert failure(bad, loopback_settings) == "Authentication failed: invalid credentials"


def test_registry_catalog_through_a_bearer_token_challenge(loopback_settings):
    """A stand-in registry with a token realm (distribution's htpasswd mode has none): the client answers
    the challenge with the basic credentials and sends the token on the catalog request."""
    def catalog(seen: Seen) -> Reply:
        if seen.headers.get("authorization") != "Bearer t0k":
            return 401, {"WWW-Authenticate": f'Bearer realm="{realm.url}/token",service="reg"'}, b""
        return page(repositories=["team/a", "zzz/b"])
    token = "/token?service=reg&scope=registry%3Acatalog%3A%2A"
    with (Recorder(answer=answer({token: page(token="t0k")})) as realm,
          Recorder(answer=answer({"/v2/_catalog?n=100": catalog})) as registry):
        names = list_repositories(source(REGISTRY, registry.url, namespace="team", username="bob",
                                         password="s3cret"), loopback_settings)
    assert names == ["a"]
    assert [(s.path, s.headers.get("authorization")) for s in realm.requests] == [
        (token, BASIC)]


@pytest.mark.parametrize(("reply", "message", "tries"), [
    (page(404), "Registry does not serve a catalog (/v2/_catalog: 404)", 1),
    (page(403), "Registry returned error: 403", 1),
    (page(503), "Registry returned error: 503", 4),
    (page(429), "Registry returned error: 429", 4),
    ((200, {}, b"[]"), "Unexpected response from registry", 1),
])
def test_registry_errors(loopback_settings, reply, message, tries):
    with Recorder(answer=answer({"/v2/_catalog?n=100": reply})) as registry:
        assert failure(source(REGISTRY, registry.url), loopback_settings) == message
    assert len(registry.requests) == tries


# -------------------------------------------------------------------------------------------- pure parts
def config(**registry_config: object) -> OrgMirrorConfig:
    row = OrgMirrorConfig(external_registry_type=int(HARBOR), external_registry_url="https://harbor.example.com/",
                          external_namespace="proj")
    row.external_registry_config = registry_config
    return row


def test_a_source_is_built_from_the_configuration():
    built = Source.of(config(verify_tls=False, page_size=250,
                             proxy={"https_proxy": "http://p:3128", "no_proxy": "", "other": "x", "http_proxy": 5}),
                      "bob", "s3cret")
    assert built == Source(HARBOR, "https://harbor.example.com/", "proj", "bob", "s3cret", False,
                           {"https_proxy": "http://p:3128"}, 250)
    assert built.base == "https://harbor.example.com"
    assert "s3cret" not in repr(built)
    assert Source.of(config(), "", "") == Source(HARBOR, "https://harbor.example.com/", "proj")


@pytest.mark.parametrize(("value", "size"), [(1, 1), (1000, 1000), (0, 100), (1001, 100), ("50", 100),
                                             (True, 100), (None, 100), (2.0, 100)])
def test_page_size_is_an_integer_from_1_to_1000(value, size):
    assert discovery.page_size({"page_size": value}) == size


def test_names_are_stripped_of_their_project_or_namespace():
    assert [discovery.strip_project(n) for n in ("proj/a", "proj/a/b/c", "alone")] == ["a", "a/b/c", "alone"]
    assert list(discovery.under_namespace(["team/a", "team", "team/", "teamx/b", "team/c/d", "x/team/e"],
                                          "team")) == ["a", "c/d"]


def test_quay_s_backoff_is_0_2_4_seconds(monkeypatch):
    monkeypatch.setattr(upstream, "BACKOFF_FACTOR", 1.0)
    assert [upstream.backoff(n) for n in (1, 2, 3)] == [0.0, 2.0, 4.0]

