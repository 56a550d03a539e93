"""Tests for external registry reference validation (SSRF protection).

DNS is always replaced by a fixed table, so these tests never hit the network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

import pytest

from quaymirror.security import ssrf
from quaymirror.security.ssrf import (
    AllowList,
    ReferenceBlocked,
    ReferenceInvalid,
    ReferenceRejected,
    ReferenceUnresolvable,
    check_external_reference,
    registry_host,
    resolve_host,
    set_resolver,
    use_resolver,
)

REQUIRED = "External registry reference is required"
WHITESPACE = "External registry reference must not include whitespace"
SCHEME = "External registry reference must not include a URL scheme"
INVALID_CHAR = "External registry reference contains an invalid character"
PATH = "External registry reference must include a repository path"
AUTHORITY = "External registry reference contains an invalid registry authority"
PORT = "External registry reference contains an invalid registry port"
HOSTNAME = "External registry reference must include a valid registry hostname"
TAG = "External registry reference must not include a tag or digest"
IP_LITERAL = "URL points to a private or reserved IP address"
IP_RESOLVED = "URL resolves to a private or reserved IP address"

DNS = {
    "quay.io": ["34.224.196.162"],
    "registry.example.com": ["93.184.216.34"],
    "private.example.com": ["10.0.0.1"],
    "mixed.example.com": ["93.184.216.34", "192.168.1.10"],
    "v6private.example.com": ["fd00::1"],
    "localhost": ["127.0.0.1"],
    "registry.internal": ["10.1.2.3"],
    "registry.corp.local": ["10.1.2.4"],
    "metadata.google.internal": ["169.254.169.254"],
    "public.internal": ["93.184.216.34"],
}


@pytest.fixture(autouse=True)
def fake_dns() -> Iterator[None]:
    with use_resolver(DNS):
        yield


def rejection(
    reference: object, allowed: tuple[str, ...] | list[str] = (), *, resolve: bool = True
) -> ReferenceRejected:
    with pytest.raises(ReferenceRejected) as info:
        check_external_reference(reference, allowed, resolve=resolve)
    return info.value


# ---------------------------------------------------------------- valid


@pytest.mark.parametrize(
    "reference",
    [
        "quay.io/projectquay/quay",
        "registry.example.com:5000/team/repository",
        "registry.example.com/team/sub/repository",
        "Registry.Example.COM/team/repository",
        "93.184.216.34/team/repository",
        "93.184.216.34:443/team/repository",
        "[2606:2800:220:1:248:1893:25c8:1946]/team/repository",
        "[2606:2800:220:1:248:1893:25c8:1946]:5000/team/repository",
        "quay.io:65535/a/b",
        "quay.io:1/a",
    ],
)
def test_valid_references(reference: str) -> None:
    check_external_reference(reference)
    check_external_reference(reference, resolve=False)


def test_public_ip_literal_needs_no_dns() -> None:
    with use_resolver({}):
        check_external_reference("93.184.216.34/team/repository")
        check_external_reference("[2606:2800:220:1:248:1893:25c8:1946]:5000/team/repository")


def test_resolve_false_skips_dns() -> None:
    with use_resolver({}):
        check_external_reference("unknown.example.org/a/b", resolve=False)


# ---------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("", REQUIRED),
        ("   ", REQUIRED),
        ("\t\n", REQUIRED),
        (None, REQUIRED),
        (123, REQUIRED),
        (b"quay.io/a/b", REQUIRED),
        (" quay.io/a/b", WHITESPACE),
        ("quay.io/a/b ", WHITESPACE),
        ("quay.io/project repo", WHITESPACE),
        ("quay.io/a\tb", WHITESPACE),
        ("https://quay.io/project/repository", SCHEME),
        ("quay.io/a://b", SCHEME),
        ("quay.io?#/project/repository", INVALID_CHAR),
        ("quay.io/repository?query=value", INVALID_CHAR),
        ("quay.io/repository#fragment", INVALID_CHAR),
        ("quay.io\\repository", INVALID_CHAR),
        ("quay.io/%2e%2e", INVALID_CHAR),
        ("quay.io", PATH),
        ("quay.io/", PATH),
        ("/project/repository", PATH),
        ("/a/b", PATH),
        ("quay.io:bad/repository", AUTHORITY),
        ("quay.io:70000/repository", AUTHORITY),
        ("quay.io:65536/repository", AUTHORITY),
        ("quay.io:-1/repository", AUTHORITY),
        ("quay.io:+80/repository", AUTHORITY),
        ("quay.io:5000:1/repository", AUTHORITY),
        ("::1/a/b", AUTHORITY),
        ("[::1/a/b", AUTHORITY),
        ("[::1]x/a/b", AUTHORITY),
        ("[::1]5000/a/b", AUTHORITY),
        ("quay[.io/a", AUTHORITY),
        ("quay].io/a", AUTHORITY),
        ("quay.io:/repository", PORT),
        ("[2606:2800:220:1:248:1893:25c8:1946]:/repository", PORT),
        ("quay.io:0/repository", PORT),
        ("quay.io:000/repository", PORT),
        ("user@quay.io/a", HOSTNAME),
        ("[]/a/b", HOSTNAME),
        (":5000/a/b", HOSTNAME),
        ("quay.io./a", HOSTNAME),
        ("quay_io/a", HOSTNAME),
        ("-quay.io/a", HOSTNAME),
        ("quay-.io/a", HOSTNAME),
        ("quay..io/a", HOSTNAME),
        (".quay.io/a", HOSTNAME),
        ("a" * 64 + ".example.com/a", HOSTNAME),
        (".".join(["a" * 63] * 4) + "/a", HOSTNAME),
        ("bücher.de/a", HOSTNAME),
        ("[not-an-ip]/a", HOSTNAME),
        ("[10.0.0.1]/a", HOSTNAME),
        ("quay.io/a:tag", TAG),
        ("quay.io/a@sha256:abc", TAG),
        ("quay.io/ns/repo:latest", TAG),
        ("quay.io:5000/ns/repo@sha256:abc", TAG),
    ],
)
def test_format_errors(reference: object, message: str) -> None:
    error = rejection(reference)
    assert isinstance(error, ReferenceInvalid)
    assert str(error) == message
    # Format errors never depend on DNS or the allow-list.
    error = rejection(reference, ["0.0.0.0/0", "::/0", "quay.io"], resolve=False)
    assert isinstance(error, ReferenceInvalid)
    assert str(error) == message


def test_label_limits_accepted() -> None:
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(host) == 253
    check_external_reference(f"{host}/a", resolve=False)
    check_external_reference("a-b.example.com/a", resolve=False)


def test_colon_allowed_in_non_final_path_segment() -> None:
    check_external_reference("quay.io/ns:x/repo", resolve=False)


def test_allow_list_does_not_bypass_scheme_or_userinfo() -> None:
    allowed = ["quay.io", "localhost", "0.0.0.0/0"]
    assert str(rejection("https://quay.io/a/b", allowed)) == SCHEME
    assert str(rejection("user@quay.io/a", allowed)) == HOSTNAME
    assert str(rejection("user@localhost/a", allowed, resolve=False)) == HOSTNAME


# ---------------------------------------------------------------- blocked (no DNS needed)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("localhost/project/repository", "Hostname 'localhost' is not allowed"),
        ("LOCALHOST:5000/a/b", "Hostname 'LOCALHOST' is not allowed"),
        ("metadata/a/b", "Hostname 'metadata' is not allowed"),
        ("metadata.google.internal/a", "Hostname 'metadata.google.internal' is not allowed"),
        ("metadata.azure.internal/a", "Hostname 'metadata.azure.internal' is not allowed"),
        ("kubernetes/a", "Hostname 'kubernetes' is not allowed"),
        ("kubernetes.default/a", "Hostname 'kubernetes.default' is not allowed"),
        ("kubernetes.default.svc/a", "Hostname 'kubernetes.default.svc' is not allowed"),
        (
            "kubernetes.default.svc.cluster.local/a",
            "Hostname 'kubernetes.default.svc.cluster.local' is not allowed",
        ),
        ("foo.internal/a", "Hostname 'foo.internal' is not allowed"),
        ("printer.local/a", "Hostname 'printer.local' is not allowed"),
        ("127.0.0.1/x/y", IP_LITERAL),
        ("127.0.0.1:5000/x/y", IP_LITERAL),
        ("169.254.169.254/latest/meta-data", IP_LITERAL),
        ("10.0.0.1/x/y", IP_LITERAL),
        ("172.16.0.1/x/y", IP_LITERAL),
        ("192.168.1.1/x/y", IP_LITERAL),
        ("0.0.0.0/x/y", IP_LITERAL),
        ("100.64.0.1/a/b", IP_LITERAL),
        ("224.0.0.1/a/b", IP_LITERAL),
        ("240.0.0.1/a/b", IP_LITERAL),
        ("255.255.255.255/a/b", IP_LITERAL),
        ("198.18.0.1/a/b", IP_LITERAL),
        ("192.0.2.1/a/b", IP_LITERAL),
        ("[::1]:5000/x/y", IP_LITERAL),
        ("[::1]/x/y", IP_LITERAL),
        ("[::]/x/y", IP_LITERAL),
        ("[::ffff:127.0.0.1]/a/b", IP_LITERAL),
        ("[::ffff:93.184.216.34]/a/b", IP_LITERAL),
        ("[64:ff9b::10.0.0.1]/a/b", IP_LITERAL),
        ("[64:ff9b::127.0.0.1]/a/b", IP_LITERAL),
        ("[fe80::1]/a/b", IP_LITERAL),
        ("[fc00::1]/a/b", IP_LITERAL),
        ("[fd12:3456::1]/a/b", IP_LITERAL),
        ("[fec0::1]/a/b", IP_LITERAL),
        ("[ff02::1]/a/b", IP_LITERAL),
        ("[2001:db8::1]/a/b", IP_LITERAL),
        ("[100::1]/a/b", IP_LITERAL),
        ("2130706433/a/b", IP_LITERAL),
        ("0177.0.0.1/a/b", IP_LITERAL),
        ("0x7f.1/a/b", IP_LITERAL),
        ("0x7f000001/a/b", IP_LITERAL),
        ("127.1/a/b", IP_LITERAL),
        ("127.000.0.1/a/b", IP_LITERAL),
        ("1.2.3.4.5/a/b", IP_LITERAL),
    ],
)
def test_blocked_without_dns(reference: str, message: str) -> None:
    with use_resolver({}):
        for resolve in (False, True):
            error = rejection(reference, resolve=resolve)
            if message.startswith("Hostname") and resolve:
                # Resolution happens first, so an unknown name is unresolvable.
                assert isinstance(error, ReferenceUnresolvable)
                continue
            assert isinstance(error, ReferenceBlocked), reference
            assert str(error) == message


def test_hex_looking_names_are_still_names() -> None:
    check_external_reference("cafe.be/a", resolve=False)
    check_external_reference("dead.beef.example.com/a", resolve=False)


# ---------------------------------------------------------------- DNS


def test_dns_to_private_is_blocked() -> None:
    error = rejection("private.example.com/team/repo")
    assert isinstance(error, ReferenceBlocked)
    assert str(error) == IP_RESOLVED


def test_dns_mixed_public_private_is_blocked() -> None:
    error = rejection("mixed.example.com/team/repo")
    assert isinstance(error, ReferenceBlocked)
    assert str(error) == IP_RESOLVED


def test_dns_to_private_ipv6_is_blocked() -> None:
    assert str(rejection("v6private.example.com/team/repo")) == IP_RESOLVED


def test_dns_failure() -> None:
    error = rejection("nowhere.example.org/team/repo")
    assert isinstance(error, ReferenceUnresolvable)
    assert str(error) == "Cannot resolve hostname 'nowhere.example.org'"


def test_resolution_before_name_block_list() -> None:
    error = rejection("foo.internal/a")
    assert isinstance(error, ReferenceUnresolvable)
    assert str(error) == "Cannot resolve hostname 'foo.internal'"


def test_resolving_blocked_name_is_blocked() -> None:
    assert str(rejection("localhost/a/b")) == "Hostname 'localhost' is not allowed"
    assert str(rejection("public.internal/a/b")) == "Hostname 'public.internal' is not allowed"
    assert str(rejection("registry.corp.local/a")) == "Hostname 'registry.corp.local' is not allowed"


def test_resolver_errors_and_empty_results_are_unresolvable() -> None:
    def broken(host: str) -> list[str]:
        raise OSError("boom")

    with use_resolver(broken):
        assert isinstance(rejection("quay.io/a/b"), ReferenceUnresolvable)
    with use_resolver({"quay.io": []}):
        assert str(rejection("quay.io/a/b")) == "Cannot resolve hostname 'quay.io'"


def test_garbage_resolver_answer_is_blocked() -> None:
    with use_resolver({"quay.io": ["not-an-ip"]}):
        assert str(rejection("quay.io/a/b")) == IP_RESOLVED


# ---------------------------------------------------------------- allow-list


def test_allow_cidr_for_ip_literal() -> None:
    check_external_reference("10.0.0.1/team/repository", ["10.0.0.0/8"])
    check_external_reference("10.0.0.1/team/repository", ["10.0.0.1"])
    check_external_reference("[::1]:5000/a/b", ["::1"])
    check_external_reference("[fd00::5]/a/b", ["[fd00::/8]"])


def test_allow_name_localhost_without_resolve() -> None:
    check_external_reference("localhost/project/repository", ["localhost"], resolve=False)
    check_external_reference("LocalHost:5000/project/repository", ["LOCALHOST"], resolve=False)


def test_allow_name_still_needs_to_resolve() -> None:
    check_external_reference("localhost/project/repository", ["localhost"])
    check_external_reference("private.example.com/a", ["private.example.com"])
    error = rejection("ghost.internal/a", ["ghost.internal"])
    assert isinstance(error, ReferenceUnresolvable)


def test_allow_cidr_for_resolved_ip() -> None:
    check_external_reference("private.example.com/team/repo", ["10.0.0.0/8"])
    check_external_reference("registry.internal/team/repo", ["10.0.0.0/8"])
    check_external_reference("mixed.example.com/team/repo", ["192.168.0.0/16"])


def test_non_matching_cidr_still_blocks() -> None:
    assert str(rejection("private.example.com/team/repo", ["192.168.0.0/16"])) == IP_RESOLVED
    assert str(rejection("10.0.0.1/team/repository", ["192.168.0.0/16"])) == IP_LITERAL
    assert str(rejection("[::1]/a/b", ["10.0.0.0/8"])) == IP_LITERAL
    assert (
        str(rejection("registry.internal/a", ["192.168.0.0/16"]))
        == "Hostname 'registry.internal' is not allowed"
    )


def test_name_allow_does_not_cover_other_names() -> None:
    assert str(rejection("private.example.com/a", ["quay.io"])) == IP_RESOLVED


@pytest.mark.parametrize("entry", [
    "127.0.0.1/33", "10.0.0.0/8x", "10.0.0.0/", "bad host", "-x-", "registry.internal:5000", "quay.io.",
    "[10.0.0.1]", "[fd00::1", "2130706433", "0x7f.1", "127.1", "127.000.0.1", "300.1.1.1", "_x.example",
])
def test_invalid_allow_entries_are_errors_not_names(entry: str) -> None:
    """A typo read as a host name would allow nothing, silently: it is refused, naming the entry."""
    with pytest.raises(ValueError, match=re.escape(repr(entry))):
        AllowList(["localhost", f" {entry} "])
    with pytest.raises(ValueError, match=re.escape(repr(entry))):
        check_external_reference("localhost/a", ["localhost", entry], resolve=False)


def test_allow_list_parses_each_entry_once() -> None:
    allow = AllowList([" Registry.Internal ", "10.0.0.0/8", "", "10.1.2.3", "[fd00::/8]", "::1", "[::2]"])
    assert allow == ("Registry.Internal", "10.0.0.0/8", "10.1.2.3", "[fd00::/8]", "::1", "[::2]")
    assert allow.names == {"registry.internal"}
    assert [str(net) for net in allow.networks] == ["10.0.0.0/8", "10.1.2.3/32", "fd00::/8", "::1/128", "::2/128"]
    assert AllowList.of(allow) is allow
    assert AllowList.of(["10.0.0.0/8"]).networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert AllowList("localhost").names == {"localhost"}  # one entry given as a string
    with pytest.raises(TypeError):
        AllowList([None])  # type: ignore[list-item]


# ---------------------------------------------------------------- helpers


def test_registry_host() -> None:
    assert registry_host("quay.io:5000/a/b") == "quay.io:5000"
    assert registry_host("quay.io/a/b") == "quay.io"
    assert registry_host("[::1]:5000/a") == "[::1]:5000"
    with pytest.raises(ReferenceInvalid):
        registry_host("quay.io")
    with pytest.raises(ReferenceInvalid):
        registry_host("")


def test_exception_hierarchy() -> None:
    for cls in (ReferenceInvalid, ReferenceBlocked, ReferenceUnresolvable):
        assert issubclass(cls, ReferenceRejected)
        assert issubclass(cls, ValueError)


def test_use_resolver_table_is_case_insensitive_and_restores() -> None:
    with use_resolver({"Example.ORG": ["93.184.216.34"]}):
        assert resolve_host("example.org") == ["93.184.216.34"]
        with use_resolver({}), pytest.raises(ReferenceUnresolvable):
            resolve_host("example.org")
        assert resolve_host("EXAMPLE.org") == ["93.184.216.34"]
    assert resolve_host("quay.io") == DNS["quay.io"]


def test_set_resolver_and_default_restore() -> None:
    original = ssrf._resolver
    try:
        set_resolver(lambda host: ["93.184.216.34"])
        assert resolve_host("anything.example") == ["93.184.216.34"]
        set_resolver(None)
        assert ssrf._resolver is ssrf._default_resolver
    finally:
        ssrf._resolver = original


def test_default_resolver_dedupes(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def fake_getaddrinfo(host: str, port: object) -> list[tuple[object, ...]]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0)),
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("93.184.216.34", 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", 0, 0, 2)),
        ]

    monkeypatch.setattr(ssrf.socket, "getaddrinfo", fake_getaddrinfo)
    assert ssrf._default_resolver("x.example") == ["93.184.216.34", "fe80::1"]


def test_default_resolver_failure_is_unresolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def failing(host: str, port: object) -> list[tuple[object, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(ssrf.socket, "getaddrinfo", failing)
    with use_resolver(ssrf._default_resolver):
        error = rejection("quay.io/a/b")
    assert str(error) == "Cannot resolve hostname 'quay.io'"


# ---------------------------------------------------------------- hosts of outbound connections


def test_check_host_returns_the_checked_addresses() -> None:
    assert ssrf.check_host("quay.io") == ["34.224.196.162"]
    assert ssrf.check_host("93.184.216.34") == ["93.184.216.34"]
    assert ssrf.check_host("private.example.com", ["10.0.0.0/8"]) == ["10.0.0.1"]
    assert ssrf.check_host("::1", ["::1"]) == ["::1"]
    assert ssrf.check_host("localhost", ["localhost"]) == ["127.0.0.1"]


def test_check_host_refuses_like_a_reference_and_says_what_for_the_log() -> None:
    with pytest.raises(ReferenceBlocked) as info:
        ssrf.check_host("mixed.example.com")
    assert (str(info.value), info.value.host, info.value.address) == (
        IP_RESOLVED, "mixed.example.com", "192.168.1.10")
    assert info.value.explain() == (
        "host mixed.example.com (192.168.1.10) refused by the SSRF rules: URL resolves to a private or reserved IP "
        "address; QUAYMIRROR_SSRF_ALLOWED_HOSTS allows it when it lists mixed.example.com or a CIDR containing "
        "192.168.1.10")
    with pytest.raises(ReferenceBlocked, match=IP_LITERAL):
        ssrf.check_host("127.0.0.2", ["127.0.0.1/32"])
    with pytest.raises(ReferenceBlocked, match="Hostname 'registry.internal' is not allowed"):
        ssrf.check_host("registry.internal")
    with pytest.raises(ReferenceInvalid):
        ssrf.check_host("bad_host")
    with pytest.raises(ReferenceUnresolvable):
        ssrf.check_host("nowhere.example.org")
