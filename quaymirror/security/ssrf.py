"""Validation of external registry references (SSRF protection).

Mirrors Quay's ``util/security/ssrf.py``: a reference such as
``quay.io/namespace/repo`` is checked for format first, then its registry
host is checked so a mirror can't be pointed at loopback, link-local,
cloud-metadata or cluster-internal endpoints.  One deliberate extra rule
refuses tags/digests in the path because they break skopeo references.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "BLOCKED_HOSTNAMES",
    "BLOCKED_NETWORKS",
    "ReferenceBlocked",
    "ReferenceInvalid",
    "ReferenceRejected",
    "ReferenceUnresolvable",
    "Resolver",
    "check_external_reference",
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


class ReferenceRejected(ValueError):
    """Base class so callers can catch every rejection in one place."""


class ReferenceInvalid(ReferenceRejected):
    """Malformed reference; the message is safe to show to users verbatim."""


class ReferenceBlocked(ReferenceRejected):
    """SSRF block; the API shows only a generic message to avoid an oracle."""


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


def set_resolver(resolver: Resolver | None) -> None:
    """Install a DNS resolver for every check; ``None`` restores the default."""
    global _resolver
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


def _parse_allow_list(allowed_hosts: Sequence[str]) -> tuple[list[IPNetwork], set[str]]:
    """Split allow-list entries into networks and (lower-cased) names."""
    networks: list[IPNetwork] = []
    names: set[str] = set()
    if isinstance(allowed_hosts, str):
        allowed_hosts = [allowed_hosts]
    for entry in allowed_hosts or ():
        if not isinstance(entry, str) or not entry.strip():
            continue
        text = entry.strip()
        candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        try:
            networks.append(ipaddress.ip_network(candidate, strict=False))
            continue
        except ValueError:
            pass
        names.add(text.lower())
    return networks, names


def _ip_allowed(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    """True when ``ip`` falls in an allow-listed network."""
    return any(ip.version == net.version and ip in net for net in networks)


def _to_ip(address: str) -> IPAddress | None:
    """Parse a resolver result; ``None`` for garbage (treated as blocked)."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None


def check_external_reference(
    reference: object, allowed_hosts: Sequence[str] = (), *, resolve: bool = True
) -> None:
    """Raise a ReferenceRejected subclass unless ``reference`` is safe to mirror.

    ``allowed_hosts`` holds CIDRs/IPs or hostnames that bypass the SSRF
    checks (never the format checks).  With ``resolve`` the host is looked up
    and every resolved address must be public (or allow-listed).
    """
    parsed = _parse(reference)
    host = parsed.host
    networks, names = _parse_allow_list(allowed_hosts)

    if parsed.ip is not None:
        if _ip_allowed(parsed.ip, networks) or host.lower() in names:
            return
        if _is_blocked_ip(parsed.ip):
            raise ReferenceBlocked(MSG_IP_LITERAL)
        return

    if _NUMERIC_HOST_RE.match(host):
        raise ReferenceBlocked(MSG_IP_LITERAL)

    name_allowed = host.lower() in names
    if not resolve:
        if not name_allowed and _is_blocked_name(host):
            raise ReferenceBlocked(f"Hostname '{host}' is not allowed")
        return

    addresses = resolve_host(host)
    if name_allowed:
        return
    ips = [_to_ip(address) for address in addresses]
    if _is_blocked_name(host) and not any(ip is not None and _ip_allowed(ip, networks) for ip in ips):
        raise ReferenceBlocked(f"Hostname '{host}' is not allowed")
    for ip in ips:
        if ip is None or (_is_blocked_ip(ip) and not _ip_allowed(ip, networks)):
            raise ReferenceBlocked(MSG_IP_RESOLVED)
