"""The one HTTP client of an organization mirror's upstream: verify's connection test and the discovery's
listing both ask through it, so both go through :mod:`quaymirror.security.outbound` (the SSRF rules, the
allow list, pinned addresses) with the same credentials, TLS and limits.

Quay's rules for these requests: redirects are never followed (an answer 3xx is the answer), a request
times out after 10 s, and with retries on (the discovery's) a GET is tried again up to 3 times on 429, 500,
502, 503, 504 and on a connection error, after about 0, 2 and 4 s (Quay's back-off factor of 1 s). A body
is read up to :data:`MAX_BODY`: a listing page larger than that is not a page anyone sends.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from quaymirror.orgmirror.models import SourceRegistryType
from quaymirror.security import outbound

TIMEOUT_SECONDS = 10.0
MAX_BODY = 8 * 1024 * 1024
RETRIES = 3
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Quay's back-off factor: the n-th retry waits 0 (n = 1), then factor * 2**(n-1) seconds. Tests lower it.
BACKOFF_FACTOR = 1.0


class _HasStatus(Protocol):
    @property
    def status(self) -> int: ...


R = TypeVar("R", bound=_HasStatus)


@dataclass(frozen=True)
class Reply:
    """What one GET answered: the status, the headers, and the body (at most :data:`MAX_BODY` bytes)."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes


class BodyTooLarge(Exception):
    """The upstream answered a body larger than :data:`MAX_BODY`."""


def backoff(retry: int) -> float:
    """The wait before the ``retry``-th retry (1-based), as urllib3's Retry computes it for Quay."""
    return 0.0 if retry <= 1 else BACKOFF_FACTOR * 2 ** (retry - 1)


def retrying(call: Callable[[], R], *, retries: int = RETRIES,
             also: tuple[type[Exception], ...] = ()) -> R:
    """``call()``, again (up to ``retries`` times) while it answers a status of :data:`RETRY_STATUSES` or
    fails to connect; the last answer (or error) stands. ``also``: more exceptions that mean "try again"
    (a client that raises on 429). A TLS failure and an SSRF refusal are never retried: the next try
    would meet the same certificate and the same rules."""
    retryable: tuple[type[Exception], ...] = (OSError, http.client.HTTPException, *also)
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff(attempt))
        try:
            reply = call()
        except ssl.SSLError:
            raise
        except retryable:
            if attempt == retries:
                raise
            continue
        if reply.status not in RETRY_STATUSES or attempt == retries:
            return reply
    raise AssertionError("unreachable")  # pragma: no cover


def ssl_context(scheme: str, verify_tls: bool) -> ssl.SSLContext | None:
    """The TLS context of an https upstream: verified (the system's CA store) unless ``verify_tls`` is off."""
    if scheme != "https":
        return None
    context = ssl.create_default_context()
    if not verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def base_path(url: str) -> str:
    """The path of Quay's ``base = url.rstrip("/")``, which every request path is appended to: "" or
    "/prefix"."""
    path = urlsplit(url.rstrip("/")).path
    return path if path and path != "/" else ""


PROXY_FIELDS = ("http_proxy", "https_proxy", "no_proxy")


def proxy_settings(registry_config: dict[str, Any]) -> dict[str, str]:
    """``external_registry_config.proxy``'s fields that say something (Quay's three keys, non-empty strings)."""
    proxy = registry_config.get("proxy")
    if not isinstance(proxy, dict):
        return {}
    return {key: value for key, value in proxy.items() if key in PROXY_FIELDS and isinstance(value, str) and value}


def authorization(kind: SourceRegistryType, username: str | None, password: str | None) -> str | None:
    """Quay's adapters: a Quay source takes the password as an API token (the username is ignored); the
    others send basic credentials when both are set."""
    if kind == SourceRegistryType.QUAY:
        return f"Bearer {password}" if password else None
    if username and password:
        return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    return None


@dataclass(frozen=True)
class Upstream:
    """One upstream to ask: where (``base_path`` is the URL's path, "" or "/prefix"), with which
    ``Authorization`` header, how many retries a GET gets (verify: none; the discovery: Quay's 3), and
    through which proxies (a tunnel, :class:`outbound.Proxies`)."""

    scheme: str
    host: str
    port: int | None
    base_path: str
    authorization: str | None
    context: ssl.SSLContext | None
    policy: outbound.Policy
    retries: int = 0
    proxies: outbound.Proxies | None = None

    def get(self, path: str) -> Reply:
        """``GET base/path`` (``path`` with its query), redirects not followed, retried as configured."""
        return retrying(lambda: self._once(path), retries=self.retries)

    def _once(self, path: str) -> Reply:
        connection = outbound.connection(self.scheme, self.host, self.port, policy=self.policy,
                                         timeout=TIMEOUT_SECONDS, context=self.context, proxies=self.proxies)
        headers = {"Accept": "application/json"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        try:
            connection.request("GET", self.base_path + path, headers=headers)
            response = connection.getresponse()
            body = response.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise BodyTooLarge(f"GET {path}: the answer is larger than {MAX_BODY} bytes")
            return Reply(response.status, response.headers, body)
        finally:
            connection.close()
