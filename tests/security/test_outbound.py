"""The guarded opener: every connect is resolved once, checked, and pinned to the checked address.

127.0.0.1 plays the allowed registry and 127.0.0.2 the forbidden host (only
127.0.0.1/32 is allow-listed); names resolve through the tests' resolver hook,
never through DNS.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator

import pytest

from quaymirror.security import ssrf
from quaymirror.security.outbound import OutboundRefused, Policy, Proxies, Proxy, connection
from tests.common.loopback import Recorder, TunnelProxy, same_port_pair
from tests.common.registries import require_tools
from tests.common.registry import Registry

LOOPBACK_ONLY = Policy.of(["127.0.0.1/32"])


@pytest.fixture
def forbidden() -> Iterator[Recorder]:
    """A listener on 127.0.0.2 that must see no connection."""
    with Recorder("127.0.0.2") as recorder:
        yield recorder


def status(conn: http.client.HTTPConnection) -> int:
    """The status of ``GET /v2/`` on ``conn``."""
    conn.request("GET", "/v2/")
    response = conn.getresponse()
    response.read()
    return response.status


def get(scheme: str, host: str, port: int, policy: Policy, context: ssl.SSLContext | None = None) -> int:
    return status(connection(scheme, host, port, policy=policy, timeout=5, context=context))


def test_a_forbidden_address_is_refused_before_connecting(forbidden):
    with pytest.raises(OutboundRefused) as refused:
        get("http", "127.0.0.2", forbidden.port, LOOPBACK_ONLY)
    forbidden.stop()
    assert forbidden.connections == []
    assert (refused.value.host, refused.value.port) == ("127.0.0.2", forbidden.port)
    assert str(refused.value) == (f"refused to connect to 127.0.0.2:{forbidden.port}: "
                                  "URL points to a private or reserved IP address")


def test_a_name_is_checked_on_what_it_resolves_to(forbidden):
    with ssrf.use_resolver({"evil.test": ["127.0.0.2"], "mixed.test": ["127.0.0.1", "127.0.0.2"]}):
        for name in ("evil.test", "mixed.test"):  # one forbidden answer among several is enough
            with pytest.raises(OutboundRefused, match=f"{name}:{forbidden.port}: URL resolves to a private"):
                get("http", name, forbidden.port, LOOPBACK_ONLY)
    forbidden.stop()
    assert forbidden.connections == []


def test_the_connection_goes_to_the_checked_address_and_keeps_the_name():
    """DNS rebinding: the name answers an allowed address when checked, a forbidden one afterwards."""
    allowed, other = same_port_pair()
    answers: list[str] = []

    def rebinding(host: str) -> list[str]:
        answers.append(host)
        return ["127.0.0.1"] if len(answers) == 1 else ["127.0.0.2"]

    with allowed, other, ssrf.use_resolver(rebinding):
        assert get("http", "pinned.test", allowed.port, LOOPBACK_ONLY) == 200
    assert answers == ["pinned.test"]  # resolved once: no second look-up to rebind
    assert [seen.headers["host"] for seen in allowed.requests] == [f"pinned.test:{allowed.port}"]
    assert other.connections == []


def test_every_reconnect_is_checked_again(forbidden):
    """A kept-alive connection that the server closed reconnects: the new connect is checked anew."""
    closing = Recorder("127.0.0.1", answer=lambda seen: (200, {"Connection": "close"}, b""))
    answers = iter([["127.0.0.1"], ["127.0.0.2"]])
    with closing, ssrf.use_resolver(lambda host: next(answers)):
        conn = connection("http", "moving.test", closing.port, policy=LOOPBACK_ONLY, timeout=5)
        assert status(conn) == 200
        with pytest.raises(OutboundRefused, match="moving.test"):
            status(conn)
    assert len(closing.connections) == 1


def test_a_trusted_name_skips_the_rules_not_the_pinning():
    with Recorder("127.0.0.1") as registry, ssrf.use_resolver({"registry.corp": ["127.0.0.1"]}):
        with pytest.raises(OutboundRefused):
            get("http", "registry.corp", registry.port, Policy.of())
        assert get("http", "registry.corp", registry.port, Policy.of(trusted=["Registry.Corp"])) == 200
    assert len(registry.connections) == 1


def test_an_unresolvable_name_is_a_connection_error_not_a_refusal():
    with ssrf.use_resolver({}), pytest.raises(socket.gaierror, match="Cannot resolve hostname 'nowhere.test'"):
        get("http", "nowhere.test", 1, LOOPBACK_ONLY)


def test_a_malformed_host_is_refused():
    with pytest.raises(OutboundRefused, match="valid registry hostname"):
        get("http", "bad_host", 1, LOOPBACK_ONLY)


def test_a_refusal_is_not_a_network_or_value_error():
    """Callers fall back to skopeo on OSError and ValueError; skopeo would follow what was refused."""
    assert not issubclass(OutboundRefused, OSError | ValueError)


def test_tls_is_verified_against_the_name_while_connecting_to_the_checked_address(tls_registry: Registry):
    """The harness certificate names localhost and 127.0.0.1: a name it does not hold fails verification."""
    require_tools("openssl")
    context = tls_registry.ssl_context()
    with ssrf.use_resolver({"localhost": ["127.0.0.1"], "other.test": ["127.0.0.1"]}):
        assert get("https", "localhost", tls_registry.port, LOOPBACK_ONLY, context) == 200
        with pytest.raises(ssl.SSLCertVerificationError, match="other.test"):
            get("https", "other.test", tls_registry.port, LOOPBACK_ONLY, context)


# ------------------------------------------------------------------------------ through a proxy (CONNECT)
def proxies(proxy: TunnelProxy, **more: str) -> Proxies:
    return Proxies.of({"http_proxy": proxy.url, "https_proxy": proxy.url, **more})


def test_a_tunnel_names_the_checked_address_to_the_proxy_and_keeps_the_name():
    """The proxy is told the address the rules checked, never the name (its own DNS could answer another);
    the request's Host header still carries the name."""
    with Recorder("127.0.0.1") as registry, TunnelProxy() as proxy, \
            ssrf.use_resolver({"upstream.test": ["127.0.0.1"]}):
        url = proxy.url.replace("http://", "http://bob:s%40cret@")
        conn = connection("http", "upstream.test", registry.port, policy=LOOPBACK_ONLY, timeout=5,
                          proxies=Proxies.of({"http_proxy": url}))
        assert status(conn) == 200
        assert status(conn) == 200  # one tunnel, kept alive
        conn.close()
    assert proxy.connects == [(f"127.0.0.1:{registry.port}", "Basic Ym9iOnNAY3JldA==")]
    assert [seen.headers["host"] for seen in registry.requests] == [f"upstream.test:{registry.port}"] * 2


def test_tls_through_a_tunnel_is_verified_against_the_name(tls_registry: Registry):
    context = tls_registry.ssl_context()
    with TunnelProxy() as proxy, ssrf.use_resolver({"localhost": ["127.0.0.1"], "other.test": ["127.0.0.1"]}):
        conn = connection("https", "localhost", tls_registry.port, policy=LOOPBACK_ONLY, timeout=5,
                          context=context, proxies=proxies(proxy))
        assert status(conn) == 200
        with pytest.raises(ssl.SSLCertVerificationError, match="other.test"):
            status(connection("https", "other.test", tls_registry.port, policy=LOOPBACK_ONLY, timeout=5,
                              context=context, proxies=proxies(proxy)))
    assert [target for target, _auth in proxy.connects] == [f"127.0.0.1:{tls_registry.port}"] * 2


def test_a_forbidden_target_is_refused_before_the_proxy_hears_of_it(forbidden):
    with TunnelProxy() as proxy, pytest.raises(OutboundRefused, match="127.0.0.2"):
        status(connection("http", "127.0.0.2", forbidden.port, policy=LOOPBACK_ONLY, timeout=5,
                          proxies=proxies(proxy)))
    forbidden.stop()
    assert proxy.connections == [] and forbidden.connections == []


def test_a_forbidden_proxy_is_refused_before_connecting_to_it():
    with (Recorder("127.0.0.1") as registry, TunnelProxy("127.0.0.2") as proxy,
          pytest.raises(OutboundRefused, match=r"127\.0\.0\.2")):
        status(connection("http", "127.0.0.1", registry.port, policy=LOOPBACK_ONLY, timeout=5,
                          proxies=proxies(proxy)))
    assert proxy.connections == [] and registry.connections == []


def test_no_proxy_hosts_and_other_schemes_go_direct():
    with Recorder("127.0.0.1") as registry, TunnelProxy() as proxy:
        for chosen in (proxies(proxy, no_proxy="example.com,127.0.0.1"), Proxies.of({"https_proxy": proxy.url})):
            assert status(connection("http", "127.0.0.1", registry.port, policy=LOOPBACK_ONLY, timeout=5,
                                     proxies=chosen)) == 200
    assert proxy.connections == [] and len(registry.connections) == 2


def test_a_proxy_refusing_the_tunnel_is_a_connection_error():
    with (Recorder("127.0.0.1") as registry, TunnelProxy(refuse=407) as proxy,
          pytest.raises(OSError, match=r"refused the tunnel to 127\.0\.0\.1: HTTP 407 Refused")):
        status(connection("http", "127.0.0.1", registry.port, policy=LOOPBACK_ONLY, timeout=5,
                          proxies=proxies(proxy)))
    assert registry.connections == []


@pytest.mark.parametrize(("url", "parsed"), [
    ("http://proxy.corp:3128", Proxy("proxy.corp", 3128)),
    ("proxy.corp", Proxy("proxy.corp", 80)),
    ("http://u:p%3Aw@[::1]:8080/", Proxy("::1", 8080, "Basic dTpwOnc=")),
])
def test_proxy_urls(url, parsed):
    assert Proxy.parse(url) == parsed


@pytest.mark.parametrize("url", ["https://proxy.corp:3128", "socks5://p:1080", "http://p:x", "http://p/path",
                                 "http://"])
def test_unusable_proxy_urls(url):
    with pytest.raises(ValueError):
        Proxy.parse(url)


def test_which_proxy_a_host_takes():
    chosen = Proxies.of({"http_proxy": "http://h:1", "https_proxy": "", "no_proxy": " .corp, 10.0.0.1"})
    assert chosen.choose("http", "registry.example.com") == Proxy("h", 1)
    assert chosen.choose("https", "registry.example.com") is None
    assert chosen.choose("http", "a.corp") is None and chosen.choose("http", "corp") is None
    assert chosen.choose("http", "10.0.0.1") is None and chosen.choose("http", "notcorp") == Proxy("h", 1)
    assert Proxies.of({"no_proxy": "*"}).choose("http", "x") is None
    assert not Proxies.of({}) and Proxies.of({"https_proxy": "h:1"})
    assert "s3cret" not in repr(Proxy.parse("http://u:s3cret@h:1"))
