"""A minimal OCI distribution client (the upstream, and the ``docker://`` destination): digests, manifests, tags.

Why not skopeo for these: a ``HEAD`` is ten times faster than ``skopeo
inspect``, and the worker asks for one digest per matching tag on every run.
The ``Accept`` header must list the OCI and Docker index/manifest types,
otherwise distribution answers 404 for an OCI index and converts a Docker
list to schema1 (another digest).

Authentication: HTTP basic, or the bearer-token flow (``WWW-Authenticate:
Bearer realm=...``) with the basic credentials. TLS: verified, or with
verification off tried first over https and then over plain http, as skopeo's
``--tls-verify=false`` does. Environment proxies are never used (the sync run
hands an upstream behind a proxy to skopeo); an explicit ``proxies`` (the
organization mirror's discovery) tunnels through :mod:`outbound`'s CONNECT.

Every connection, to the registry itself, to a token realm, or to wherever a
redirect (301/302/303/307/308, at most :data:`MAX_REDIRECTS` hops) points, is
opened by :func:`quaymirror.security.outbound.connection`: the SSRF rules and
the allow list are applied to the host after resolution, every time it
connects, and a refusal raises :class:`~quaymirror.security.outbound.OutboundRefused`,
which this client never catches. The ``Authorization`` header (basic or
bearer) goes only to the origin it was meant for: a redirect to another
scheme, host or port is followed without it.

Connections are kept alive and reused: one per thread and host (a sync run's
tag threads each hold one), re-opened once when the server closed an idle one.
``RateLimit-Remaining`` (Docker Hub) is remembered in :attr:`rate_limit_remaining`;
a 429 raises :class:`RateLimited`.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from quaymirror.mirror.worker.policy import REUSED_CONNECTION_ATTEMPTS
from quaymirror.security.outbound import OutboundRefused, Policy, Proxies, connection

INDEX_TYPES = frozenset({
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
})
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)
TIMEOUT = 30.0
MAX_BODY = 16 * 1024 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}

# The scheme found for hosts with TLS verification off (https, or plain http after a failed TLS probe).
_SCHEMES: dict[str, str] = {}

_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RedirectError(RegistryError):
    """A redirect that cannot be followed (an unusable ``Location``, too many hops): the caller must not hand
    the reference to skopeo instead, which would follow the same redirect without the SSRF rules."""


class RateLimited(RegistryError):
    """The registry refused the request for its pull rate limit (429), or said none are left."""


class TLSFailed(RegistryError):
    """TLS with the registry failed (a certificate not verified, a handshake refused)."""


class MalformedAnswer(RegistryError):
    """The registry answered 200 with a body that is not what the distribution API defines."""


class ManifestRefused(RegistryError):
    """A registry refused a manifest PUT; ``codes`` are its error codes (e.g. ``MANIFEST_BLOB_UNKNOWN``)."""

    def __init__(self, repository: str, reference: str, status: int, body: bytes) -> None:
        try:
            errors = json.loads(body).get("errors") or []
        except (ValueError, AttributeError):
            errors = []
        errors = [e for e in errors if isinstance(e, dict)]
        self.codes = tuple(str(e.get("code")) for e in errors)
        said = "; ".join(f"{e.get('code')}: {e.get('message')}" + (f" ({e['detail']})" if isinstance(
            e.get("detail"), str) else "") for e in errors[:5]) or f"HTTP {status}"
        super().__init__(f"PUT {repository}:{reference} answered HTTP {status}: {said}", status)


@dataclass(frozen=True)
class ManifestHead:
    """What a manifest ``HEAD`` tells: the digest, and whether it is an index (one image per platform)."""

    digest: str
    media_type: str

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


# Where a request goes: (scheme, host, port), the key of the kept-alive connections too.
Origin = tuple[str, str, int]


class RegistryClient:
    """A client of the registry at ``host`` (``name[:port]``, ``[v6][:port]``).

    ``allowed_hosts`` is the SSRF allow list applied to every host it connects
    to. ``trust_host`` exempts ``host`` itself (any port) from the SSRF rules:
    the operator's own ``docker://`` destination says so; by default (the
    upstream client) even its own host is checked every time it connects.
    """

    def __init__(self, host: str, *, username: str | None = None, password: str | None = None,
                 tls_verify: bool = True, timeout: float = TIMEOUT, allowed_hosts: Iterable[str] = (),
                 trust_host: bool = False, scheme: str | None = None, follow_redirects: bool = True,
                 proxies: Proxies | None = None) -> None:
        self.host = host
        # Off (Quay's discovery never follows one): a redirect is answered to the caller as it came.
        self.follow_redirects = follow_redirects
        # Tunnels through a proxy (the organization mirror's discovery); the sync run hands a mirror behind a
        # proxy to skopeo instead.
        self.proxies = proxies
        split = urllib.parse.urlsplit(f"//{host}")
        self._hostname = split.hostname or host
        try:
            self._port = split.port
        except ValueError:  # not a port: the connection fails, as a request to a bad host does
            self._hostname, self._port = host, None
        self.policy = Policy.of(allowed_hosts, [self._hostname] if trust_host else [])
        self._basic = (
            "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode() if username else None
        )
        self.tls_verify = tls_verify
        self.timeout = timeout
        # A ``scheme`` given (an upstream named by URL) is used as is; else https, or probed without TLS
        # verification.
        self._scheme: str | None = scheme or ("https" if tls_verify else None)
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._local = threading.local()
        self._open: list[http.client.HTTPConnection] = []
        self._ssl: ssl.SSLContext | None = None
        self.rate_limit_remaining: int | None = None

    def close(self) -> None:
        """Close every kept-alive connection (of every thread)."""
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            conn.close()

    def __repr__(self) -> str:
        return f"RegistryClient({self.host!r})"

    # ----------------------------------------------------------- transport
    def ssl_context(self) -> ssl.SSLContext:
        """One TLS context for all of this client's connections (each tag thread holds one): loading the CA
        store costs ~16 ms of CPU. Without verification no CA store is loaded at all."""
        with self._lock:
            if self._ssl is None:
                if self.tls_verify:
                    self._ssl = ssl.create_default_context()
                else:
                    self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    self._ssl.check_hostname = False
                    self._ssl.verify_mode = ssl.CERT_NONE
            return self._ssl

    def _pooled(self, key: Origin) -> http.client.HTTPConnection:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(key)
        if conn is None:
            scheme, host, port = key
            conn = conns[key] = connection(scheme, host, port, policy=self.policy, timeout=self.timeout,
                                           context=self.ssl_context() if scheme == "https" else None,
                                           proxies=self.proxies)
            with self._lock:
                self._open.append(conn)
        return conn

    def _drop(self, key: Origin) -> None:
        conn = getattr(self._local, "conns", {}).pop(key, None)
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)

    def _send(self, scheme: str, method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> Response:
        """``url`` (a path on this registry, or an absolute URL: a token realm), following redirects.

        A redirect is followed to any host the SSRF rules allow (the opener
        refuses the others before connecting), with the ``Authorization``
        header only when it points back to the origin that header was meant for.
        """
        parsed = urllib.parse.urlsplit(url)
        origin: Origin
        if parsed.scheme:
            try:
                origin, path = _target(url)
            except ValueError:
                raise RegistryError(f"unusable URL {parsed.scheme}://{parsed.netloc}{parsed.path}") from None
        else:
            origin, path = (scheme, self._hostname, self._port or DEFAULT_PORTS[scheme]), url
        first = f"{method} {parsed.path}"
        target, sent = origin, headers
        for hop in range(MAX_REDIRECTS + 1):
            try:
                resp = self._exchange(target, method, path, sent, body)
            except OutboundRefused as refused:
                if hop:
                    raise refused.during(f"redirect of {first}") from None
                raise
            location = resp.headers.get("Location") if resp.status in REDIRECTS else None
            if not location or not self.follow_redirects:
                return resp
            here = f"{target[0]}://{_authority(target[1], target[2])}{path}"
            try:
                target, path = _target(urllib.parse.urljoin(here, location.strip()))
            except ValueError:
                raise RedirectError(f"{first} was redirected (HTTP {resp.status}) to an unusable location",
                                    resp.status) from None
            if resp.status == 303 and method != "HEAD":
                method, body = "GET", None
            sent = headers if target == origin else {k: v for k, v in headers.items() if k.lower() != "authorization"}
        raise RedirectError(f"{first}: more than {MAX_REDIRECTS} redirects")

    def _exchange(self, key: Origin, method: str, path: str, headers: dict[str, str],
                  body: bytes | None = None) -> Response:
        """One request and its response on this thread's kept-alive connection to ``key``."""
        for attempt in range(1, REUSED_CONNECTION_ATTEMPTS + 1):
            conn = self._pooled(key)
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                if method == "HEAD":
                    answer = b""
                    resp.read()
                else:
                    answer = resp.read(MAX_BODY)
                    if not resp.isclosed():  # larger than MAX_BODY: the connection cannot be reused
                        self._drop(key)
                if resp.will_close:
                    self._drop(key)
                self._note_rate_limit(resp.headers)
                return Response(resp.status, resp.headers, answer)
            except TimeoutError:
                self._drop(key)
                raise
            except (http.client.HTTPException, OSError):
                # A kept-alive connection the server (or the network) closed meanwhile: again on a new one.
                self._drop(key)
                if not reused or attempt == REUSED_CONNECTION_ATTEMPTS:  # a fresh connection failed: a real error
                    raise
            except BaseException:  # an SSRF refusal among them: never retried, never caught here
                self._drop(key)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _note_rate_limit(self, headers: http.client.HTTPMessage) -> None:
        value = headers.get("RateLimit-Remaining")
        if value is None:
            return
        try:
            self.rate_limit_remaining = int(value.split(";")[0].strip())
        except ValueError:
            return

    def _request(self, method: str, path: str, headers: dict[str, str] | None = None,
                 scope: str | None = None, body: bytes | None = None) -> Response:
        if self._scheme is None:
            # Only one thread probes https-then-http; the answer is remembered for the process
            # (a TLS probe against a plain-HTTP port costs about 0.5 s).
            with self._probe_lock:
                if self._scheme is None:
                    cached = _SCHEMES.get(self.host)
                    if cached is not None:
                        try:
                            resp = self._probe(method, path, headers, scope, cached, body)
                        except (OSError, http.client.HTTPException, RegistryError):
                            resp = None
                        if resp is not None and resp.status != 400:
                            self._scheme = cached
                            return resp
                        _SCHEMES.pop(self.host, None)  # the registry changed: probe again
                    resp = self._probe(method, path, headers, scope, None, body)
                    return resp
        return self._probe(method, path, headers, scope, self._scheme, body)

    def _probe(self, method: str, path: str, headers: dict[str, str] | None, scope: str | None,
               known: str | None, body: bytes | None = None) -> Response:
        headers = dict(headers or {})
        scheme = known or "https"
        try:
            resp = self._authorized(scheme, method, path, headers, scope, body)
        except (ssl.SSLError, ConnectionResetError, http.client.BadStatusLine) as error:
            if self.tls_verify or known == "https":
                raise TLSFailed(f"TLS error talking to {self.host}: {error}") from None
            scheme = "http"
            resp = self._authorized(scheme, method, path, headers, scope, body)
        if self._scheme is None:
            self._scheme = scheme
            if not self.tls_verify:
                _SCHEMES[self.host] = scheme
        return resp

    def _authorized(self, scheme: str, method: str, path: str, headers: dict[str, str],
                    scope: str | None, body: bytes | None = None) -> Response:
        auth = self._tokens.get(scope or "") or self._basic
        if auth:
            headers["Authorization"] = auth
        resp = self._send(scheme, method, path, headers, body)
        if resp.status == 429:
            retry = resp.headers.get("Retry-After")
            raise RateLimited(f"{self.host} refused {method} for its rate limit (HTTP 429"
                              + (f", Retry-After {retry}s" if retry else "") + ")", 429)
        if resp.status != 401:
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        if challenge.lower().startswith("bearer ") and scope:
            token = self._fetch_token(scheme, challenge, scope)
            if token:
                headers["Authorization"] = f"Bearer {token}"
                with self._lock:
                    self._tokens[scope] = headers["Authorization"]
                return self._send(scheme, method, path, headers, body)
        return resp

    def _fetch_token(self, scheme: str, challenge: str, scope: str) -> str | None:
        params = dict(_CHALLENGE_RE.findall(challenge))
        realm = params.get("realm")
        if not realm:
            return None
        split = urllib.parse.urlsplit(realm)
        query = urllib.parse.parse_qsl(split.query)
        if "service" in params:
            query.append(("service", params["service"]))
        query.append(("scope", scope))
        url = urllib.parse.urlunsplit(split._replace(query=urllib.parse.urlencode(query)))
        headers = {"Authorization": self._basic} if self._basic else {}
        try:
            resp = self._send(scheme, "GET", url, headers)
        except OutboundRefused as refused:
            raise refused.during("token realm" + (f", {refused.purpose}" if refused.purpose else "")) from None
        if resp.status != 200:
            return None
        try:
            data = json.loads(resp.body)
        except ValueError:
            return None
        token = data.get("token") or data.get("access_token")
        return token if isinstance(token, str) else None

    # ------------------------------------------------------------- queries
    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The ``Docker-Content-Digest`` of ``repository:reference``; None when it does not exist."""
        head = self.manifest_head(repository, reference)
        return head.digest if head is not None else None

    def manifest_head(self, repository: str, reference: str) -> ManifestHead | None:
        """The digest and media type of ``repository:reference`` from a ``HEAD``; None when it does not exist."""
        resp = self._manifest_request("HEAD", repository, reference)
        if resp is None:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryError(f"HEAD {repository}:{reference}: no Docker-Content-Digest header")
        media_type = (resp.headers.get("Content-Type") or "").partition(";")[0].strip()
        return ManifestHead(digest, media_type)

    def manifest(self, repository: str, reference: str) -> bytes | None:
        """The manifest's bytes as the registry stores them; None when it does not exist."""
        resp = self._manifest_request("GET", repository, reference)
        return resp.body if resp is not None else None

    def _manifest_request(self, method: str, repository: str, reference: str) -> Response | None:
        """``method`` on ``repository``'s manifest ``reference`` (a tag or digest): the 200 answer, None on
        404, else RegistryError."""
        resp = self._request(method, f"/v2/{_quote(repository)}/manifests/{urllib.parse.quote(reference, safe=':')}",
                             {"Accept": MANIFEST_ACCEPT}, scope=f"repository:{repository}:pull")
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RegistryError(f"{method} manifest {repository}:{reference} answered HTTP {resp.status}",
                                resp.status)
        return resp

    def blob(self, repository: str, digest: str) -> bytes | None:
        """A (small) blob of ``repository``, e.g. an image's config; None when it does not exist. The body is
        checked against ``digest``: a registry (or a storage host it redirects to) cannot swap it."""
        resp = self._request("GET", f"/v2/{_quote(repository)}/blobs/{urllib.parse.quote(digest, safe=':')}",
                             scope=f"repository:{repository}:pull")
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RegistryError(f"GET blob {repository}@{digest} answered HTTP {resp.status}", resp.status)
        if "sha256:" + hashlib.sha256(resp.body).hexdigest() != digest:
            raise RegistryError(f"GET blob {repository}@{digest}: the body does not match its digest")
        return resp.body

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Push a manifest (an index, here) under ``reference``; its digest. A refusal raises
        :class:`ManifestRefused` with the registry's error codes and messages."""
        resp = self._request("PUT", f"/v2/{_quote(repository)}/manifests/{urllib.parse.quote(reference, safe=':')}",
                             {"Content-Type": media_type}, scope=f"repository:{repository}:pull,push", body=body)
        if resp.status in (200, 201):
            return resp.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
        raise ManifestRefused(repository, reference, resp.status, resp.body)

    def tags(self, repository: str, *, missing_ok: bool = True) -> list[str]:
        """Every tag of ``repository`` (following ``Link`` pagination); [] when it does not exist (or a 404
        RegistryError when not ``missing_ok``)."""
        path: str | None = f"/v2/{_quote(repository)}/tags/list?n=1000"
        found: list[str] = []
        for _ in range(10_000):
            if path is None:
                break
            resp = self._request("GET", path, scope=f"repository:{repository}:pull")
            if resp.status == 404 and missing_ok:
                return found
            if resp.status != 200:
                raise RegistryError(f"GET tags of {repository} answered HTTP {resp.status}", resp.status)
            found.extend(json.loads(resp.body).get("tags") or [])
            path = next_link(resp.headers.get("Link"))
        return found

    def catalog(self, page_size: int, *,
                attempt: Callable[[Callable[[], Response]], Response] | None = None) -> Iterator[list[str]]:
        """The registry's repository names, page by page (``GET /v2/_catalog?n=page_size``, then its
        ``Link: <...>; rel="next"``), lazily: the caller says how many pages it reads. ``attempt`` makes
        each page's request (the organization mirror's discovery retries through it).

        A status but 200 raises :class:`RegistryError` with it; a 200 whose body holds no list of names,
        :class:`MalformedAnswer`.
        """
        path: str | None = f"/v2/_catalog?n={page_size}"
        while path is not None:
            def fetch(page: str = path) -> Response:
                return self._request("GET", page, scope="registry:catalog:*")
            resp = attempt(fetch) if attempt is not None else fetch()
            if resp.status != 200:
                raise RegistryError(f"GET /v2/_catalog answered HTTP {resp.status}", resp.status)
            try:
                names = json.loads(resp.body).get("repositories") or []
            except (ValueError, AttributeError):
                names = None
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise MalformedAnswer("GET /v2/_catalog: the body is not a catalog", resp.status)
            yield names
            path = next_link(resp.headers.get("Link"))


def _target(url: str) -> tuple[Origin, str]:
    """The origin and the path (with the query) of an absolute http(s) URL; ValueError for anything else."""
    split = urllib.parse.urlsplit(url)
    if split.scheme not in DEFAULT_PORTS or not split.hostname:
        raise ValueError(url)
    path = (split.path or "/") + (f"?{split.query}" if split.query else "")
    return (split.scheme, split.hostname.lower(), split.port or DEFAULT_PORTS[split.scheme]), path


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quote(repository: str) -> str:
    return urllib.parse.quote(repository.strip("/"), safe="/")


def next_link(header: str | None) -> str | None:
    """The path (and query) of a ``Link`` header's ``rel="next"`` target (RFC 8288, as distribution and
    Harbor page), None without one."""
    if not header:
        return None
    match = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", header)
    if not match:
        return None
    split = urllib.parse.urlsplit(match.group(1))
    return split.path + (f"?{split.query}" if split.query else "")
