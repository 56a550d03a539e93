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

Outside this opener: skopeo's own connections (its copies, and its look-ups
when the HTTP client cannot be used, e.g. a mirror with a proxy, where every
request is handed to skopeo), which only go to the mirror's checked reference
and wherever that registry sends them.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from quaymirror.security import ssrf

__all__ = ["OutboundRefused", "Policy", "connection"]


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


def connection(scheme: str, host: str, port: int | None, *, policy: Policy, timeout: float,
               context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    """An unconnected HTTP(S) connection to ``host``; every connect it makes is checked by ``policy``.

    ``host`` is the name (or IP, without brackets) used for the ``Host``
    header and for TLS; ``context`` is required for https.
    """
    if scheme == "https":
        if context is None:
            raise ValueError("an https connection needs an SSL context")
        return PinnedHTTPSConnection(host, port, policy=policy, timeout=timeout, context=context)
    if scheme == "http":
        return PinnedHTTPConnection(host, port, policy=policy, timeout=timeout)
    raise ValueError(f"unsupported URL scheme {scheme!r}")
