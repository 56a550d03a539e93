"""Validation of external registry references and of outbound hosts (SSRF protection).

As in Quay, a reference such as ``quay.io/namespace/repo`` is checked for
format first, then its registry host is checked so a mirror can't be pointed
at loopback, link-local, cloud-metadata or cluster-internal endpoints.  One
deliberate extra rule refuses tags/digests in the path because they break
skopeo references.

The same host rules apply to every connection quaymirror opens
(:func:`check_host`, used by :mod:`quaymirror.security.outbound`), and the
allow list (``QUAYMIRROR_SSRF_ALLOWED_HOSTS``) is parsed strictly, once, into
an :class:`AllowList`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Self

__all__ = [
    "ALLOW_LIST_VARIABLE",
    "BLOCKED_HOSTNAMES",
    "BLOCKED_NETWORKS",
    "NOTHING_ALLOWED",
    "AllowList",
    "ReferenceBlocked",
    "ReferenceInvalid",
    "ReferenceRejected",
    "ReferenceUnresolvable",
    "Resolver",
    "check_external_reference",
    "check_host",
    "registry_host",
    "resolve_host",
    "set_resolver",
    "use_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]

MSG_REQUIRED = "External registry reference is required"
MSG_WHITESPACE = "External registry reference must not include whitespace"
MSG_SCHEME = "External registry reference must not include a URL scheme"
MSG_INVALID_CHAR = "External registry reference contains an invalid character"
MSG_PATH = "External registry reference must include a repository path"
MSG_AUTHORITY = "External registry reference contains an invalid registry authority"
MSG_PORT = "External registry reference contains an invalid registry port"
MSG_HOSTNAME = "External registry reference must include a valid registry hostname"
MSG_TAG = "External registry reference must not include a tag or digest"
MSG_IP_LITERAL = "URL points to a private or reserved IP address"
MSG_IP_RESOLVED = "URL resolves to a private or reserved IP address"

ALLOW_LIST_VARIABLE = "QUAYMIRROR_SSRF_ALLOWED_HOSTS"


class ReferenceRejected(ValueError):
    """Base class so callers can catch every rejection in one place."""


class ReferenceInvalid(ReferenceRejected):
    """Malformed reference; the message is safe to show to users verbatim."""


class ReferenceBlocked(ReferenceRejected):
    """SSRF block; the API shows only a generic message to avoid an oracle.

    ``host`` and ``address`` (the resolved address that was refused, if any)
    are for the operator's log, which may say what the client is not told.
    """

    def __init__(self, message: str, *, host: str = "", address: str | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.address = address

    def explain(self) -> str:
        """One log line: what was refused, and the allow-list entry that would let it through."""
        subject = self.host or "the host"
        if self.address and self.address != self.host:
            subject += f" ({self.address})"
        entry = self.host
        if self.address:
            entry += " or a CIDR containing " + ("it" if self.address == self.host else self.address)
        return (f"host {subject} refused by the SSRF rules: {self}; {ALLOW_LIST_VARIABLE} allows it "
                f"when it lists {entry}")


class ReferenceUnresolvable(ReferenceRejected):
    """The registry hostname does not resolve in DNS."""


BLOCKED_HOSTNAMES: frozenset[str] = frozenset(
    {
        "localhost",
        "metadata.google.internal",
        "metadata.azure.internal",
        "metadata",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "kubernetes.default",
        "kubernetes",
    }
)
BLOCKED_SUFFIXES: tuple[str, ...] = (".internal", ".local")

BLOCKED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "::1/128",
        "64:ff9b::/96",
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "::ffff:0:0/96",
    )
)

_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_PORT_RE = re.compile(r"^[0-9]+$")
# Anything libc's inet_aton might read as a number (decimal, octal, hex
# parts, 1..n of them).  If it's not a canonical dotted quad it is refused,
# otherwise "2130706433" or "0x7f.1" would sail past the label pattern and
# be resolved to loopback by getaddrinfo.
_NUMERIC_HOST_RE = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+))*$", re.IGNORECASE)


@dataclass(frozen=True)
class _Parsed:
    """Pieces of a syntactically valid reference."""

    host: str
    port: int | None
    path: str
    ip: IPAddress | None


# --------------------------------------------------------------------------
# DNS resolution (replaceable so tests never touch the network)
# --------------------------------------------------------------------------


def _default_resolver(host: str) -> list[str]:
    """Resolve with the system resolver, returning unique IP strings in order."""
    infos = socket.getaddrinfo(host, None)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop IPv6 scope ids
        if address not in seen:
            seen.append(address)
    return seen


_resolver_lock = threading.Lock()
_resolver: Resolver = _default_resolver


def set_resolver(resolver: Mapping[str, list[str]] | Resolver | None) -> None:
    """Install a DNS resolver (or a fixed table) for every check; ``None`` restores the default."""
    global _resolver
    if isinstance(resolver, Mapping):
        resolver = _table_resolver(resolver)
    with _resolver_lock:
        _resolver = resolver if resolver is not None else _default_resolver


def _table_resolver(table: Mapping[str, list[str]]) -> Resolver:
    """Build a resolver over a fixed table; unknown names do not resolve."""
    lowered = {name.lower().rstrip("."): list(ips) for name, ips in table.items()}

    def resolve(host: str) -> list[str]:
        try:
            return list(lowered[host.lower()])
        except KeyError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None

    return resolve


@contextmanager
def use_resolver(table: Mapping[str, list[str]] | Resolver) -> Iterator[None]:
    """Temporarily point DNS at ``table`` (a mapping or a resolver callable)."""
    global _resolver
    new = _table_resolver(table) if isinstance(table, Mapping) else table
    with _resolver_lock:
        previous = _resolver
        _resolver = new
    try:
        yield
    finally:
        with _resolver_lock:
            _resolver = previous


def resolve_host(host: str) -> list[str]:
    """Resolve ``host`` via the current resolver; the single DNS entry point."""
    resolver = _resolver
    try:
        addresses = list(resolver(host))
    except ReferenceUnresolvable:
        raise
    except Exception as exc:  # any resolver failure means "does not resolve"
        raise ReferenceUnresolvable(f"Cannot resolve hostname '{host}'") from exc
    if not addresses:
        raise ReferenceUnresolvable(f"Cannot resolve hostname '{host}'")
    return addresses


# --------------------------------------------------------------------------
# Format parsing
# --------------------------------------------------------------------------


def registry_host(reference: str) -> str:
    """Return the ``host[:port]`` part (first path segment) of a reference.

    Used for authfile keys etc.; it does not re-validate the reference.
    """
    if not isinstance(reference, str) or not reference.strip():
        raise ReferenceInvalid(MSG_REQUIRED)
    authority, sep, _ = reference.strip().partition("/")
    if not sep or not authority:
        raise ReferenceInvalid(MSG_PATH)
    return authority


def _split_authority(authority: str) -> tuple[str, str | None, bool]:
    """Split ``host[:port]`` / ``[v6][:port]`` into (host, port text, bracketed)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            raise ReferenceInvalid(MSG_AUTHORITY)
        host, rest = authority[1:end], authority[end + 1 :]
        if "[" in host or "]" in rest:
            raise ReferenceInvalid(MSG_AUTHORITY)
        if rest and not rest.startswith(":"):
            raise ReferenceInvalid(MSG_AUTHORITY)
        port = rest[1:] if rest else None
        return host, port, True
    if "[" in authority or "]" in authority:
        raise ReferenceInvalid(MSG_AUTHORITY)
    if authority.count(":") > 1:
        raise ReferenceInvalid(MSG_AUTHORITY)
    host, sep, port_text = authority.partition(":")
    return host, (port_text if sep else None), False


def _parse_port(port_text: str | None) -> int | None:
    """Validate the port: empty or 0 is a port error, junk an authority error."""
    if port_text is None:
        return None
    if port_text == "":
        raise ReferenceInvalid(MSG_PORT)
    if not _PORT_RE.match(port_text):
        raise ReferenceInvalid(MSG_AUTHORITY)
    port = int(port_text)
    if port == 0:
        raise ReferenceInvalid(MSG_PORT)
    if port > 65535:
        raise ReferenceInvalid(MSG_AUTHORITY)
    return port


def _is_valid_dns_name(host: str) -> bool:
    """RFC 1123 hostname: ASCII labels of 1-63 chars, total length <= 253."""
    if len(host) > 253:
        return False
    return all(_LABEL_RE.match(label) for label in host.split("."))


def _parse_host(host: str, bracketed: bool) -> IPAddress | None:
    """Validate the host; return its IP if it is an IP literal."""
    if not host or "@" in host or host.endswith("."):
        raise ReferenceInvalid(MSG_HOSTNAME)
    if bracketed:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise ReferenceInvalid(MSG_HOSTNAME) from None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST_RE.match(host):
        return None  # non-canonical IPv4 form; blocked by the SSRF stage
    if not _is_valid_dns_name(host):
        raise ReferenceInvalid(MSG_HOSTNAME)
    return None


def _parse(reference: object) -> _Parsed:
    """Apply the format checks in Quay's order, raising ReferenceInvalid."""
    if not isinstance(reference, str) or not reference.strip():
        raise ReferenceInvalid(MSG_REQUIRED)
    if any(ch.isspace() for ch in reference):
        raise ReferenceInvalid(MSG_WHITESPACE)
    if "://" in reference:
        raise ReferenceInvalid(MSG_SCHEME)
    if any(ch in reference for ch in "?#\\%"):
        raise ReferenceInvalid(MSG_INVALID_CHAR)
    authority, sep, path = reference.partition("/")
    if not sep or not authority or not path:
        raise ReferenceInvalid(MSG_PATH)
    host, port_text, bracketed = _split_authority(authority)
    port = _parse_port(port_text)
    ip = _parse_host(host, bracketed)
    if "@" in path or ":" in path.rsplit("/", 1)[-1]:
        raise ReferenceInvalid(MSG_TAG)
    return _Parsed(host=host, port=port, path=path, ip=ip)


# --------------------------------------------------------------------------
# SSRF checks
# --------------------------------------------------------------------------


def _is_blocked_ip(ip: IPAddress) -> bool:
    """True for any address a mirror must never contact."""
    if any(ip in net for net in BLOCKED_NETWORKS):
        return True
    if not ip.is_global or ip.is_multicast:
        return True
    return isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local


def _is_blocked_name(host: str) -> bool:
    """True for names of metadata / cluster-internal / local services."""
    name = host.lower()
    return name in BLOCKED_HOSTNAMES or name.endswith(BLOCKED_SUFFIXES)


class AllowList(tuple[str, ...]):
    """The SSRF allow list, parsed once: its entries as written, and the networks and names they stand for.

    A tuple of the entry texts, so it compares (and prints) like the list the
    operator wrote.  Each entry is an IP address, a CIDR (``[v6]`` brackets
    allowed) or a DNS host name; anything else (``127.0.0.1/33``,
    ``10.0.0.0/8x``, ``bad host``, ``-x-``, ``registry:5000``) raises
    ValueError naming the entry, because a typo silently read as a host name
    would allow nothing and say nothing.
    """

    networks: tuple[IPNetwork, ...]
    names: frozenset[str]

    def __new__(cls, entries: Iterable[str] = ()) -> Self:
        if isinstance(entries, str):
            entries = [entries]
        texts: list[str] = []
        networks: list[IPNetwork] = []
        names: set[str] = set()
        for entry in entries:
            if not isinstance(entry, str):
                raise TypeError(f"allow-list entries are strings, not {entry!r}")
            text = entry.strip()
            if not text:
                continue
            network = _allow_network(text)
            if network is not None:
                networks.append(network)
            else:
                names.add(text.lower())
            texts.append(text)
        allow = super().__new__(cls, texts)
        allow.networks = tuple(networks)
        allow.names = frozenset(names)
        return allow

    @classmethod
    def of(cls, value: Iterable[str]) -> AllowList:
        """``value`` itself when already parsed, else parsed (tests and overrides pass plain tuples)."""
        return value if isinstance(value, AllowList) else cls(value)

    def allows_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)

    def allows_name(self, host: str) -> bool:
        return host.lower() in self.names


NOTHING_ALLOWED = AllowList()


def _allow_network(text: str) -> IPNetwork | None:
    """The network an allow-list entry stands for; None for a host name; ValueError for neither."""
    bracketed = text.startswith("[") and text.endswith("]")
    candidate = text[1:-1] if bracketed else text
    if bracketed or "/" in candidate or ":" in candidate or _NUMERIC_HOST_RE.match(candidate):
        try:
            network = ipaddress.ip_network(candidate, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address, a CIDR or a host name") from None
        if bracketed and network.version != 6:
            raise ValueError(f"{text!r} is not an IP address, a CIDR or a host name")
        return network
    if not _is_valid_dns_name(candidate):
        raise ValueError(f"{text!r} is not an IP address, a CIDR or a host name")
    return None


def _to_ip(address: str) -> IPAddress | None:
    """Parse a resolver result; ``None`` for garbage (treated as blocked)."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None


def check_external_reference(
    reference: object, allowed_hosts: Iterable[str] = (), *, resolve: bool = True
) -> None:
    """Raise a ReferenceRejected subclass unless ``reference`` is safe to mirror.

    ``allowed_hosts`` (an :class:`AllowList`, or entries to parse into one)
    holds CIDRs/IPs or hostnames that bypass the SSRF checks (never the
    format checks).  With ``resolve`` the host is looked up and every resolved
    address must be public (or allow-listed).
    """
    parsed = _parse(reference)
    _check(parsed.host, parsed.ip, AllowList.of(allowed_hosts), resolve)


def check_host(host: str, allowed_hosts: Iterable[str] = ()) -> list[str]:
    """The addresses quaymirror may connect to for ``host`` (as in a URL: a name, or an IP without brackets).

    The host is resolved once and every address is checked, as for a
    reference with DNS; the caller connects to these addresses and to no
    other, so the answer cannot change between the check and the connect.
    Raises ReferenceInvalid for a malformed host, ReferenceBlocked, or
    ReferenceUnresolvable.
    """
    ip = _parse_host(host, ":" in host)
    return _check(host, ip, AllowList.of(allowed_hosts), True)


def _check(host: str, ip: IPAddress | None, allow: AllowList, resolve: bool) -> list[str]:
    """The SSRF rules for one host; returns the checked addresses (none without ``resolve``)."""
    if ip is not None:
        if allow.allows_ip(ip) or allow.allows_name(host):
            return [str(ip)]
        if _is_blocked_ip(ip):
            raise ReferenceBlocked(MSG_IP_LITERAL, host=host, address=str(ip))
        return [str(ip)]

    if _NUMERIC_HOST_RE.match(host):
        raise ReferenceBlocked(MSG_IP_LITERAL, host=host)

    name_allowed = allow.allows_name(host)
    if not resolve:
        if not name_allowed and _is_blocked_name(host):
            raise ReferenceBlocked(f"Hostname '{host}' is not allowed", host=host)
        return []

    addresses = resolve_host(host)
    if name_allowed:
        return addresses
    ips = [_to_ip(address) for address in addresses]
    if _is_blocked_name(host) and not any(each is not None and allow.allows_ip(each) for each in ips):
        raise ReferenceBlocked(f"Hostname '{host}' is not allowed", host=host)
    for address, each in zip(addresses, ips, strict=True):
        if each is None or (_is_blocked_ip(each) and not allow.allows_ip(each)):
            raise ReferenceBlocked(MSG_IP_RESOLVED, host=host, address=address)
    return addresses
