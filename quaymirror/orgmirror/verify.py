"""verify: does the upstream answer as a source of this kind should? One or two GETs, through
:mod:`quaymirror.security.outbound` (the SSRF rules, pinned addresses), answered in Quay's words.

The source kinds ask what Quay's adapters ask: Quay its organization (then its user) endpoint with the
password as a bearer token, Harbor its project with basic credentials, a plain registry its ``/v2/``.
A configured proxy is not used here (the HTTP client speaks to the upstream directly), so a mirror with a
proxy is answered as not checked rather than checked by another path than the worker's.
"""

from __future__ import annotations

import base64
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
from quaymirror.security import outbound
from quaymirror.security.secrets import DecryptionFailed, SecretBox
from quaymirror.settings import Settings

TIMEOUT_SECONDS = 10.0
OK = "Connection successful"
# Quay words verify's refusal of the URL (any reason) so, unlike POST and PUT's "registry URL".
MSG_URL = "The provided URL is not allowed"
MSG_DECRYPT = "Failed to decrypt source registry credentials"
MSG_PROXY = "Connection test through a proxy is not supported: the worker's discovery will use it"


@dataclass(frozen=True)
class Result:
    success: bool
    message: str


@dataclass(frozen=True)
class _Upstream:
    """One upstream to ask, with the credentials a source of its kind sends."""

    url: SourceUrl
    base_path: str
    authorization: str | None
    context: ssl.SSLContext | None
    policy: outbound.Policy

    def get(self, path: str) -> int:
        """The status of ``GET base/path``, redirects not followed."""
        connection = outbound.connection(self.url.scheme, self.url.host, self.url.port, policy=self.policy,
                                         timeout=TIMEOUT_SECONDS, context=self.context)
        headers = {"Accept": "application/json"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        try:
            connection.request("GET", self.base_path + path, headers=headers)
            response = connection.getresponse()
            response.read(64 * 1024)
            return response.status
        finally:
            connection.close()


def _quay(upstream: _Upstream, namespace: str, has_token: bool) -> Result:
    if has_token:
        code = upstream.get("/api/v1/user/")
        if code == 401:
            return Result(False, "Authentication failed: invalid API token or credentials")
        if code == 403:
            return Result(False, "Authentication failed: insufficient permissions")
        if 300 <= code < 400:
            return Result(False, f"Registry returned redirect ({code}) during auth check")
        if code != 200:
            return Result(False, f"Unexpected response ({code}) during auth check")
    code = upstream.get(f"/api/v1/organization/{quote(namespace, safe='')}")
    if code == 404:
        code = upstream.get(f"/api/v1/users/{quote(namespace, safe='')}")
        if code == 404:
            return Result(False, f"Namespace '{namespace}' not found")
    return _common(code)


def _harbor(upstream: _Upstream, namespace: str, _has_token: bool) -> Result:
    code = upstream.get(f"/api/v2.0/projects/{quote(namespace, safe='')}")
    if code == 403:
        return Result(False, "Access forbidden - check permissions")
    if code == 404:
        return Result(False, f"Project '{namespace}' not found")
    return _common(code)


def _registry(upstream: _Upstream, _namespace: str, _has_token: bool) -> Result:
    return _common(upstream.get("/v2/"))


def _common(code: int) -> Result:
    if code == 200:
        return Result(True, OK)
    if code == 401:
        return Result(False, "Authentication failed")
    return Result(False, f"Unexpected response: {code}")


_CHECKS: dict[SourceRegistryType, Callable[[_Upstream, str, bool], Result]] = {
    SourceRegistryType.QUAY: _quay,
    SourceRegistryType.HARBOR: _harbor,
    SourceRegistryType.REGISTRY: _registry,
}


def _authorization(kind: SourceRegistryType, username: str | None, password: str | None) -> str | None:
    """Quay's adapters: a Quay source takes the password as an API token; the others basic credentials when
    both are set."""
    if kind == SourceRegistryType.QUAY:
        return f"Bearer {password}" if password else None
    if username and password:
        return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    return None


def check(config: OrgMirrorConfig, url: SourceUrl, username: str | None, password: str | None,
          settings: Settings) -> Result:
    """Ask the upstream (its URL already checked); a failure to connect is an answer too, never an error."""
    registry_config = config.external_registry_config
    proxy = registry_config.get("proxy")
    if isinstance(proxy, dict) and (proxy.get("http_proxy") or proxy.get("https_proxy")):
        return Result(False, MSG_PROXY)
    context = None
    if url.scheme == "https":
        context = ssl.create_default_context()
        if registry_config.get("verify_tls") is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    kind = SourceRegistryType(config.external_registry_type)
    base = config.external_registry_url.rstrip("/")
    base_path = base.split("://", 1)[1].partition("/")[2]
    upstream = _Upstream(url, "/" + base_path if base_path else "", _authorization(kind, username, password),
                         context, outbound.Policy.of(settings.ssrf_allowed_hosts))
    try:
        return _CHECKS[kind](upstream, config.external_namespace, bool(password))
    except outbound.OutboundRefused:
        return Result(False, MSG_URL)
    except TimeoutError:
        return Result(False, "Connection timed out")
    except ssl.SSLError as error:
        return Result(False, f"SSL error: {error}")
    except (OSError, http.client.HTTPException) as error:
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
