"""The one way quaymirror opens an outbound HTTP connection: checked, then pinned.

Every HTTP request the service itself makes (an upstream's tag list and
manifests, a token realm, every ``Location`` it follows, the ``docker://``
destination) goes out on a connection from :func:`connection`. Each time such
a connection connects (also when a kept-alive one reconnects), the host is
resolved once through :func:`ssrf.resolve_host`, every address is checked
against the SSRF rules and the allow list, and the socket goes to a checked
address: DNS is not asked a second time, so it cannot answer differently
between the check and the connect (rebinding). The name stays in the ``Host``
header and in TLS (SNI, and the certificate is verified against the name), as
if the connection had been opened by name.

A refusal raises :class:`OutboundRefused` before any packet is sent to the
refused host, so no credential can reach it. It is deliberately not an
``OSError`` (nor a ``ValueError``): callers that treat network errors as
"try skopeo instead" must not swallow a refusal.

``trusted`` host names skip the rules (not the pinning): the operator's own
``docker://`` destination, which is usually private. Anything such a host
redirects to, or names as a token realm, on another host is checked.

Through an HTTP proxy (:class:`Proxies`, an organization mirror's ``proxy``
object), the connection is a tunnel: the proxy's host is checked and pinned
like any other, the target is checked too, and the ``CONNECT`` names the
target's checked address (not its name, which the proxy would resolve again);
TLS and ``Host`` still carry the name. ``no_proxy`` hosts go direct.

Outside this opener: skopeo's own connections (its copies, and its look-ups
when the HTTP client cannot be used, e.g. a mirror with a proxy, where every
request is handed to skopeo), which only go to the mirror's checked reference
and wherever that registry sends them.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from quaymirror.security import ssrf

__all__ = ["OutboundRefused", "Policy", "Proxies", "Proxy", "connection"]


class OutboundRefused(Exception):
    """The SSRF rules refused a host quaymirror was about to connect to."""

    def __init__(self, host: str, port: int | None, reason: str, purpose: str = "") -> None:
        super().__init__(host, port, reason, purpose)
        self.host = host
        self.port = port
        self.reason = reason
        self.purpose = purpose

    @property
    def authority(self) -> str:
        """``host:port`` as a user would write it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host

    def during(self, purpose: str) -> OutboundRefused:
        """The same refusal, saying what the connection was for (a token realm, a redirect)."""
        return OutboundRefused(self.host, self.port, self.reason, purpose)

    def __str__(self) -> str:
        what = f" ({self.purpose})" if self.purpose else ""
        return f"refused to connect to {self.authority}{what}: {self.reason}"


@dataclass(frozen=True)
class Policy:
    """Which hosts a client may connect to: the SSRF rules with ``allowed``, and ``trusted`` names without."""

    allowed: ssrf.AllowList = ssrf.NOTHING_ALLOWED
    trusted: frozenset[str] = frozenset()

    @classmethod
    def of(cls, allowed: Iterable[str] = (), trusted: Iterable[str] = ()) -> Policy:
        return cls(ssrf.AllowList.of(allowed), frozenset(name.lower() for name in trusted))

    def addresses(self, host: str, port: int | None) -> list[str]:
        """The addresses to connect to for ``host``, each checked (unless trusted), resolved once.

        Raises OutboundRefused, or ``socket.gaierror`` (an OSError, as a
        connection by name would) when the name does not resolve.
        """
        try:
            if host.lower() in self.trusted:
                return [host] if _is_ip(host) else ssrf.resolve_host(host)
            return ssrf.check_host(host, self.allowed)
        except ssrf.ReferenceUnresolvable as error:
            raise socket.gaierror(socket.EAI_NONAME, str(error)) from None
        except ssrf.ReferenceRejected as error:  # blocked, or not a valid host name at all
            raise OutboundRefused(host, port, str(error)) from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Pinned:
    """Mixin: http.client's connect goes to the policy's checked addresses, never to a fresh lookup."""

    policy: Policy
    _create_connection: object

    def _pin(self, policy: Policy) -> None:
        self.policy = policy
        # http.client's connect() (and HTTPSConnection's, which wraps the socket for TLS with
        # server_hostname=self.host) opens its socket through this attribute.
        self._create_connection = self._open

    def _open(self, address: tuple[str, int], timeout: float | None = None,
              source_address: tuple[str, int] | None = None) -> socket.socket:
        host, port = address
        last: OSError | None = None
        for ip in self.policy.addresses(host, port):
            try:
                return socket.create_connection((ip, port), timeout, source_address)
            except OSError as error:
                last = error
        raise last if last is not None else OSError(f"no address to connect to for {host}")


class PinnedHTTPConnection(_Pinned, http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, *, policy: Policy, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._pin(policy)


class PinnedHTTPSConnection(_Pinned, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, *, policy: Policy, timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._pin(policy)


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy that tunnels (``CONNECT``), and the ``Proxy-Authorization`` its URL's userinfo makes."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """``http://[user:password@]host[:port]`` (the scheme may be left out, the port defaults to 80, as
        requests reads it); ValueError for anything else, an https proxy among them."""
        split = urlsplit(url if "://" in url else f"http://{url}")
        if split.scheme != "http" or not split.hostname or split.path not in ("", "/") or split.query:
            raise ValueError("a proxy is http://host:port (a TLS connection to the proxy is not supported)")
        port = split.port or 80  # ValueError for a port that is none
        authorization = None
        if split.username is not None:
            pair = f"{unquote(split.username)}:{unquote(split.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(split.hostname, port, authorization)

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Proxies:
    """Which proxy a URL goes through, as requests decides: the one of its scheme, unless ``no_proxy``
    names its host."""

    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: str = ""

    @classmethod
    def of(cls, settings: Mapping[str, object]) -> Proxies:
        """From Quay's ``proxy`` object (``http_proxy``, ``https_proxy``, ``no_proxy``; empty ones unset).
        ValueError for a proxy URL :meth:`Proxy.parse` refuses."""
        def proxy(key: str) -> Proxy | None:
            value = settings.get(key)
            return Proxy.parse(value) if isinstance(value, str) and value.strip() else None
        no_proxy = settings.get("no_proxy")
        return cls(proxy("http_proxy"), proxy("https_proxy"), no_proxy if isinstance(no_proxy, str) else "")

    def __bool__(self) -> bool:
        return self.http is not None or self.https is not None

    def choose(self, scheme: str, host: str) -> Proxy | None:
        chosen = self.https if scheme == "https" else self.http
        return None if chosen is None or bypasses(self.no_proxy, host) else chosen


def bypasses(no_proxy: str, host: str) -> bool:
    """Does ``no_proxy`` (comma-separated: ``*``, host names, ``.domain`` suffixes, IPs) name ``host``?"""
    host = host.lower().rstrip(".")
    for entry in no_proxy.split(","):
        entry = entry.strip().lower().lstrip(".")
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


class _Tunnel(_Pinned):
    """Mixin: connect through ``proxy`` with ``CONNECT <checked address>:<port>``; TLS (https) and the
    ``Host`` header keep the name. Replaces http.client's own tunnel, which would name the host to the
    proxy (and let the proxy's DNS choose the address)."""

    proxy: Proxy
    tls: ssl.SSLContext | None
    host: str
    port: int
    timeout: float | None
    source_address: tuple[str, int] | None
    sock: socket.socket | None

    def connect(self) -> None:
        targets = self.policy.addresses(self.host, self.port)  # refused before the proxy hears of it
        last: OSError | None = None
        for ip in targets:
            sock = self._open((self.proxy.host, self.proxy.port), self.timeout, self.source_address)
            try:
                self._connect_through(sock, ip)
            except OSError as error:
                sock.close()
                last = error
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sock = self.tls.wrap_socket(sock, server_hostname=self.host) if self.tls is not None else sock
            except BaseException:  # a certificate not verified: the tunnel is not kept
                sock.close()
                raise
            return
        raise last if last is not None else OSError(f"no address to connect to for {self.host}")

    def _connect_through(self, sock: socket.socket, ip: str) -> None:
        authority = f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if self.proxy.authorization:
            lines.append(f"Proxy-Authorization: {self.proxy.authorization}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        response = http.client.HTTPResponse(sock, method="CONNECT")
        try:
            response.begin()
        finally:
            response.close()  # the answer's reader only: the socket stays open, the tunnel's
        if response.status != 200:
            raise OSError(f"the proxy {self.proxy.authority} refused the tunnel to {self.host}: "
                          f"HTTP {response.status} {response.reason}".rstrip())


class TunnelHTTPConnection(_Tunnel, http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, *, policy: Policy, timeout: float, proxy: Proxy) -> None:
        super().__init__(host, port, timeout=timeout)
        self._pin(policy)
        self.proxy, self.tls = proxy, None


class TunnelHTTPSConnection(_Tunnel, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, *, policy: Policy, timeout: float, proxy: Proxy,
                 context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._pin(policy)
        self.proxy, self.tls = proxy, context


def connection(scheme: str, host: str, port: int | None, *, policy: Policy, timeout: float,
               context: ssl.SSLContext | None = None, proxies: Proxies | None = None) -> http.client.HTTPConnection:
    """An unconnected HTTP(S) connection to ``host``; every connect it makes is checked by ``policy``.

    ``host`` is the name (or IP, without brackets) used for the ``Host``
    header and for TLS; ``context`` is required for https. With ``proxies``,
    a host they do not exempt is reached through a tunnel of its scheme's proxy.
    """
    proxy = proxies.choose(scheme, host) if proxies else None
    if scheme == "https":
        if context is None:
            raise ValueError("an https connection needs an SSL context")
        if proxy is not None:
            return TunnelHTTPSConnection(host, port, policy=policy, timeout=timeout, proxy=proxy, context=context)
        return PinnedHTTPSConnection(host, port, policy=policy, timeout=timeout, context=context)
    if scheme == "http":
        if proxy is not None:
            return TunnelHTTPConnection(host, port, policy=policy, timeout=timeout, proxy=proxy)
        return PinnedHTTPConnection(host, port, policy=policy, timeout=timeout)
    raise ValueError(f"unsupported URL scheme {scheme!r}")
