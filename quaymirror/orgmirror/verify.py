"""verify: does the upstream answer as a source of this kind should? One or two GETs, through the client
the discovery uses too (:mod:`quaymirror.orgmirror.upstream`: the SSRF rules, pinned addresses; no
retries here), answered in Quay's words.

The source kinds ask what Quay's adapters ask: Quay its organization (then its user) endpoint with the
password as a bearer token, Harbor its project with basic credentials, a plain registry its ``/v2/``.
A configured proxy is used as the discovery uses it (an HTTP CONNECT tunnel, the proxy checked by the SSRF
rules too; ``no_proxy`` hosts direct), as Quay's adapters use theirs.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy.orm import Session

from quaymirror.accounts.models import User
from quaymirror.errors import InvalidRequest
from quaymirror.orgmirror import service
from quaymirror.orgmirror.models import OrgMirrorConfig, SourceRegistryType
from quaymirror.orgmirror.service import SourceUrl
from quaymirror.orgmirror.upstream import (
    BodyTooLarge,
    Upstream,
    authorization,
    base_path,
    proxy_settings,
    ssl_context,
)
from quaymirror.security import outbound
from quaymirror.security.secrets import DecryptionFailed, SecretBox
from quaymirror.settings import Settings

OK = "Connection successful"
# Quay words verify's refusal of the URL (any reason) so, unlike POST and PUT's "registry URL".
MSG_URL = "The provided URL is not allowed"
MSG_DECRYPT = "Failed to decrypt source registry credentials"


@dataclass(frozen=True)
class Result:
    success: bool
    message: str


def quay_connection(upstream: Upstream, namespace: str, has_token: bool) -> Result:
    """Quay's connection test of a Quay source (the discovery's first step too): the token, then the
    namespace as an organization, else as a user."""
    if has_token:
        code = upstream.get("/api/v1/user/").status
        if code == 401:
            return Result(False, "Authentication failed: invalid API token or credentials")
        if code == 403:
            return Result(False, "Authentication failed: insufficient permissions")
        if 300 <= code < 400:
            return Result(False, f"Registry returned redirect ({code}) during auth check")
        if code != 200:
            return Result(False, f"Unexpected response ({code}) during auth check")
    code = upstream.get(f"/api/v1/organization/{quote(namespace, safe='')}").status
    if code == 404:
        code = upstream.get(f"/api/v1/users/{quote(namespace, safe='')}").status
        if code == 404:
            return Result(False, f"Namespace '{namespace}' not found")
    return _common(code)


def _harbor(upstream: Upstream, namespace: str, _has_token: bool) -> Result:
    code = upstream.get(f"/api/v2.0/projects/{quote(namespace, safe='')}").status
    if code == 403:
        return Result(False, "Access forbidden - check permissions")
    if code == 404:
        return Result(False, f"Project '{namespace}' not found")
    return _common(code)


def _registry(upstream: Upstream, _namespace: str, _has_token: bool) -> Result:
    return _common(upstream.get("/v2/").status)


def _common(code: int) -> Result:
    if code == 200:
        return Result(True, OK)
    if code == 401:
        return Result(False, "Authentication failed")
    return Result(False, f"Unexpected response: {code}")


_CHECKS: dict[SourceRegistryType, Callable[[Upstream, str, bool], Result]] = {
    SourceRegistryType.QUAY: quay_connection,
    SourceRegistryType.HARBOR: _harbor,
    SourceRegistryType.REGISTRY: _registry,
}


def check(config: OrgMirrorConfig, url: SourceUrl, username: str | None, password: str | None,
          settings: Settings) -> Result:
    """Ask the upstream (its URL already checked); a failure to connect is an answer too, never an error."""
    registry_config = config.external_registry_config
    try:  # through the configured proxy, as the discovery goes (the proxy checked by the SSRF rules too)
        proxies = outbound.Proxies.of(proxy_settings(registry_config))
    except ValueError as error:
        return Result(False, f"Invalid proxy configuration: {error}")
    kind = SourceRegistryType(config.external_registry_type)
    upstream = Upstream(url.scheme, url.host, url.port, base_path(config.external_registry_url),
                        authorization(kind, username, password),
                        ssl_context(url.scheme, registry_config.get("verify_tls") is not False),
                        outbound.Policy.of(settings.ssrf_allowed_hosts), proxies=proxies)
    try:
        return _CHECKS[kind](upstream, config.external_namespace, bool(password))
    except outbound.OutboundRefused:
        return Result(False, MSG_URL)
    except TimeoutError:
        return Result(False, "Connection timed out")
    except ssl.SSLError as error:
        return Result(False, f"SSL error: {error}")
    except (OSError, http.client.HTTPException, BodyTooLarge) as error:
        return Result(False, f"Connection error: {error}")


def run(session: Session, organization: User, *, box: SecretBox, settings: Settings) -> Result:
    """verify: the configuration (404 without one), its credentials, its URL (DNS included), the upstream."""
    config = service.require(session, organization)
    try:
        username = box.decrypt(config.external_registry_username)
        password = box.decrypt(config.external_registry_password)
    except DecryptionFailed:
        return Result(False, MSG_DECRYPT)
    try:
        url = service.check_url(config.external_registry_url, settings)
    except InvalidRequest:
        return Result(False, MSG_URL)
    return check(config, url, username, password, settings)
