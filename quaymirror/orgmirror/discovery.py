"""Discovery: the repositories of an upstream namespace, listed as Quay's organization-mirror worker lists
them, for the three source kinds.

- ``quay``: Quay's connection test (verify's), then ``GET /api/v1/repository?namespace=<ns>`` paged by
  ``next_page``, with the password as a bearer token (and ``public=true`` only without one).
- ``harbor``: ``GET /api/v2.0/projects/<ns>/repositories?page=N&page_size=S`` with basic credentials,
  paged while the ``Link`` header has ``rel="next"`` or the page was full; Harbor names its repositories
  ``project/name``, the project is cut off.
- ``registry`` (ours, beyond Quay): any OCI distribution registry's ``GET /v2/_catalog``, paged by
  ``Link``, restricted to the names under ``<ns>/``, through the worker's :class:`RegistryClient` (token
  challenges, pinned connections). The API lives at the host's root, so a path in the URL is not used.

Every request goes through :mod:`quaymirror.security.outbound` (the SSRF rules with
``settings.ssrf_allowed_hosts``, checked at every connect), with Quay's timeout, retries and no redirect
followed (:mod:`quaymirror.orgmirror.upstream`). The listing is bounded (:data:`MAX_PAGES`,
:data:`MAX_NAMES`). Every failure is a :class:`DiscoveryFailed` whose message is Quay's text, for the
configuration's status; nothing else escapes.

A ``proxy`` in ``external_registry_config`` is used as requests uses it for Quay (``https_proxy`` for an
https URL, ``http_proxy`` for http, ``no_proxy`` hosts direct), as a CONNECT tunnel
(:class:`outbound.Proxies`): the proxy's host is checked by the SSRF rules as well as the upstream's, so an
operator's proxy on a private address needs its own ``ssrf_allowed_hosts`` entry.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from quaymirror.errors import InvalidRequest
from quaymirror.mirror.worker.registry_client import (
    MalformedAnswer,
    RateLimited,
    RegistryClient,
    RegistryError,
    Response,
    TLSFailed,
    next_link,
)
from quaymirror.orgmirror import service
from quaymirror.orgmirror.models import OrgMirrorConfig, SourceRegistryType
from quaymirror.orgmirror.upstream import (
    TIMEOUT_SECONDS,
    BodyTooLarge,
    Upstream,
    authorization,
    base_path,
    proxy_settings,
    retrying,
    ssl_context,
)
from quaymirror.orgmirror.verify import quay_connection
from quaymirror.security import outbound
from quaymirror.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_PAGES = 1000
MAX_NAMES = 100_000

MSG_AUTH = "Authentication failed: invalid credentials"


class DiscoveryFailed(Exception):
    """The discovery could not list the namespace; ``message`` says why (Quay's words)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Source:
    """Where to list repositories: Quay's ``external_registry_*`` of an organization mirror, decrypted."""

    kind: SourceRegistryType
    url: str
    namespace: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify_tls: bool = True
    proxy: dict[str, str] = field(default_factory=dict)
    page_size: int = DEFAULT_PAGE_SIZE

    @classmethod
    def of(cls, config: OrgMirrorConfig, username: str | None, password: str | None) -> Source:
        """The source of ``config`` with its credentials (already decrypted: the caller holds the box)."""
        registry_config = config.external_registry_config
        return cls(
            kind=SourceRegistryType(config.external_registry_type),
            url=config.external_registry_url,
            namespace=config.external_namespace,
            username=username or None,
            password=password or None,
            verify_tls=registry_config.get("verify_tls") is not False,
            proxy=proxy_settings(registry_config),
            page_size=page_size(registry_config),
        )

    @property
    def base(self) -> str:
        """Quay's ``base``: the URL without its trailing slashes, as the messages name it."""
        return self.url.rstrip("/")


def page_size(registry_config: dict[str, Any]) -> int:
    """``external_registry_config.page_size`` when it is an integer 1..1000, else 100."""
    value = registry_config.get("page_size")
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PAGE_SIZE:
        return value
    return DEFAULT_PAGE_SIZE


def strip_project(name: str) -> str:
    """A Harbor repository name without its project (the first segment): ``a/b/c`` -> ``b/c``."""
    return name.split("/", 1)[1] if "/" in name else name


def under_namespace(names: Iterable[str], namespace: str) -> Iterator[str]:
    """The catalog names under ``namespace/``, without that prefix (nested names keep their ``/``)."""
    prefix = namespace.strip("/") + "/"
    for name in names:
        if name.startswith(prefix) and len(name) > len(prefix):
            yield name[len(prefix):]


class _Collected:
    """The names found so far: de-duplicated in order, the pages and names counted against the bounds."""

    def __init__(self) -> None:
        self.names: dict[str, None] = {}
        self.pages = 0

    def page(self) -> None:
        self.pages += 1
        if self.pages > MAX_PAGES:
            raise DiscoveryFailed(f"The upstream listing has more than {MAX_PAGES} pages: discovery stopped")

    def add(self, names: Iterable[str]) -> None:
        for name in names:
            if name and name not in self.names:
                if len(self.names) == MAX_NAMES:
                    raise DiscoveryFailed(f"The upstream namespace has more than {MAX_NAMES} repositories: "
                                          "discovery stopped")
                self.names[name] = None


@dataclass(frozen=True)
class _Lister:
    """One kind's listing and the words of its errors."""

    registry: str  # how the connection messages name the upstream: "Quay registry", "Harbor registry"
    unexpected: str
    run: Callable[[Source, Upstream], list[str]]


def _json(reply_body: bytes, unexpected: str) -> Any:
    try:
        return json.loads(reply_body)
    except ValueError:
        raise DiscoveryFailed(unexpected) from None


def _names(items: list[Any], unexpected: str) -> list[str]:
    """The ``name`` of every object of a listing page; anything else in the page is not the API's answer."""
    names: list[str] = []
    for each in items:
        name = each.get("name") if isinstance(each, dict) else None
        if not isinstance(name, str):
            raise DiscoveryFailed(unexpected)
        names.append(name)
    return names


def _status_error(code: int, texts: dict[int, str], other: str) -> DiscoveryFailed:
    if code in texts:
        return DiscoveryFailed(texts[code])
    if 300 <= code < 400:
        return DiscoveryFailed(f"Registry returned redirect ({code})")
    return DiscoveryFailed(f"{other}: {code}")


MSG_QUAY_UNEXPECTED = "Unexpected response from Quay registry"
MSG_HARBOR_UNEXPECTED = "Unexpected response from Harbor registry"
MSG_REGISTRY_UNEXPECTED = "Unexpected response from registry"


def _list_quay(source: Source, upstream: Upstream) -> list[str]:
    result = quay_connection(upstream, source.namespace, bool(source.password))
    if not result.success:
        raise DiscoveryFailed(result.message)
    texts = {404: f"Namespace '{source.namespace}' not found on Quay registry", 401: MSG_AUTH,
             403: f"Access forbidden to namespace '{source.namespace}'"}
    collected = _Collected()
    next_page: str | None = None
    while True:
        collected.page()
        query: list[tuple[str, str]] = [("namespace", source.namespace)]
        if not source.password:
            query.append(("public", "true"))
        if next_page:
            query.append(("next_page", next_page))
        reply = upstream.get(f"/api/v1/repository?{urlencode(query)}")
        if reply.status != 200:
            raise _status_error(reply.status, texts, "Quay API returned error")
        body = _json(reply.body, MSG_QUAY_UNEXPECTED)
        repositories = body.get("repositories") if isinstance(body, dict) else None
        if not isinstance(repositories, list):
            raise DiscoveryFailed(MSG_QUAY_UNEXPECTED)
        collected.add(_names(repositories, MSG_QUAY_UNEXPECTED))
        token = body.get("next_page")
        if not token:
            return list(collected.names)
        if not isinstance(token, str):
            raise DiscoveryFailed(MSG_QUAY_UNEXPECTED)
        next_page = token


def _list_harbor(source: Source, upstream: Upstream) -> list[str]:
    texts = {404: f"Project '{source.namespace}' not found on Harbor registry", 401: MSG_AUTH,
             403: f"Access forbidden to project '{source.namespace}'"}
    collected = _Collected()
    project = quote(source.namespace, safe="")
    number = 1
    while True:
        collected.page()
        reply = upstream.get(f"/api/v2.0/projects/{project}/repositories?page={number}"
                             f"&page_size={source.page_size}")
        if reply.status != 200:
            raise _status_error(reply.status, texts, "Harbor API returned error")
        body = _json(reply.body, MSG_HARBOR_UNEXPECTED)
        if not isinstance(body, list):
            raise DiscoveryFailed(MSG_HARBOR_UNEXPECTED)
        if not body:
            return list(collected.names)
        collected.add(strip_project(name) for name in _names(body, MSG_HARBOR_UNEXPECTED))
        if next_link(reply.headers.get("Link")) is None and len(body) < source.page_size:
            return list(collected.names)
        number += 1


def _list_registry(source: Source, upstream: Upstream) -> list[str]:
    """The catalog through the worker's registry client: its token flow answers Bearer challenges."""
    client = RegistryClient(_authority(upstream.host, upstream.port), username=source.username,
                            password=source.password, tls_verify=source.verify_tls, timeout=TIMEOUT_SECONDS,
                            allowed_hosts=upstream.policy.allowed, scheme=upstream.scheme, follow_redirects=False,
                            proxies=upstream.proxies)

    def attempt(call: Callable[[], Response]) -> Response:
        return retrying(call, also=(RateLimited,))

    collected = _Collected()
    try:
        for names in client.catalog(source.page_size, attempt=attempt):
            collected.page()
            collected.add(under_namespace(names, source.namespace))
    except MalformedAnswer:
        raise DiscoveryFailed(MSG_REGISTRY_UNEXPECTED) from None
    except TLSFailed as error:
        raise DiscoveryFailed(f"SSL certificate verification failed for {source.base}: {error}") from None
    except RegistryError as error:
        if error.status is None:  # e.g. a token realm that is no URL
            raise DiscoveryFailed(f"Failed to connect to registry at {source.base}: {error}") from None
        raise _status_error(error.status, {
            401: MSG_AUTH, 404: "Registry does not serve a catalog (/v2/_catalog: 404)"},
            "Registry returned error") from None
    finally:
        client.close()
    return list(collected.names)


def _authority(host: str, port: int | None) -> str:
    """``host[:port]`` as :class:`RegistryClient` takes it (IPv6 in brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


_LISTERS = {
    SourceRegistryType.QUAY: _Lister("Quay registry", MSG_QUAY_UNEXPECTED, _list_quay),
    SourceRegistryType.HARBOR: _Lister("Harbor registry", MSG_HARBOR_UNEXPECTED, _list_harbor),
    SourceRegistryType.REGISTRY: _Lister("registry", MSG_REGISTRY_UNEXPECTED, _list_registry),
}


def list_repositories(source: Source, settings: Settings) -> list[str]:
    """The repository names of ``source.namespace`` upstream, without the namespace, each once in the
    upstream's order. Raises :class:`DiscoveryFailed` (and nothing else) when they cannot be listed."""
    lister = _LISTERS[source.kind]
    try:
        url = service.check_url(source.url, settings)
    except InvalidRequest as error:
        raise DiscoveryFailed(error.detail) from None
    try:
        proxies = outbound.Proxies.of(source.proxy)
    except ValueError as error:
        raise DiscoveryFailed(f"Invalid proxy configuration: {error}") from None
    upstream = Upstream(url.scheme, url.host, url.port, base_path(source.url),
                        authorization(source.kind, source.username, source.password),
                        ssl_context(url.scheme, source.verify_tls), outbound.Policy.of(settings.ssrf_allowed_hosts),
                        retries=3, proxies=proxies)
    base = source.base
    try:
        return lister.run(source, upstream)
    except outbound.OutboundRefused as refused:
        log.info("organization mirror discovery refused: %s", refused)
        raise DiscoveryFailed(service.MSG_URL_NOT_ALLOWED) from None
    except BodyTooLarge:
        raise DiscoveryFailed(lister.unexpected) from None
    except ssl.SSLError as error:
        raise DiscoveryFailed(f"SSL certificate verification failed for {base}: {error}") from None
    except TimeoutError:
        raise DiscoveryFailed(f"Connection to {base} timed out") from None
    except (OSError, http.client.HTTPException) as error:
        raise DiscoveryFailed(f"Failed to connect to {lister.registry} at {base}: {error}") from None
