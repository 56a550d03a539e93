"""Run a real CNCF distribution registry (``docker-registry``) for tests.

Only the standard library is used for HTTP.  Every wait is bounded.

Typical use::

    with Registry(tmp_path / "reg", username="u", password="p") as reg:
        reg.tags("ns/repo")

Facts about distribution 2.8.2 that this module relies on:

* htpasswd files must be bcrypt, and the registry re-reads the file when its
  mtime changes (so :meth:`Registry.set_password` rotates credentials live);
* a ``HEAD`` on a manifest needs an ``Accept`` header that lists the OCI and
  Docker list/manifest types, otherwise an OCI index answers 404 and a Docker
  manifest list is converted to schema1 (with another digest);
* ``http.draintimeout: 1s`` makes an idle registry exit ~10 ms after SIGTERM.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Self

from tests.common.ports import free_port

REGISTRY_BIN = "docker-registry"

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
HTTP_TIMEOUT = 5.0

__all__ = [
    "MANIFEST_ACCEPT",
    "MANIFEST_MEDIA_TYPES",
    "Registry",
    "RegistryError",
    "authfile",
    "hung_server",
    "write_authfile",
]


class RegistryError(RuntimeError):
    """The registry could not be started, or answered with an unexpected status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# Safety net: registries still running when the interpreter exits get SIGKILL,
# so a crashed test session never leaves a daemon behind.
_LIVE: weakref.WeakSet[Registry] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - only runs on abnormal exit
    for reg in list(_LIVE):
        with contextlib.suppress(Exception):
            reg.kill()


def _clean_env() -> dict[str, str]:
    # REGISTRY_<SECTION>_<KEY> variables override the config file: drop them.
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}


def yaml_str(value: str | Path) -> str:
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(str(value))


class Registry:
    """A ``docker-registry serve`` process on 127.0.0.1 on a free port.

    ``root`` holds the config, log, htpasswd and TLS files; ``data_dir``
    (default ``root/"data"``) holds the storage and may be shared by two
    registries (for example an HTTP and a TLS port over the same data).
    After :meth:`stop` or :meth:`kill`, :meth:`start` brings the registry
    back on the same port with the same data.
    """

    def __init__(
        self,
        root: Path,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        data_dir: Path | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if username is not None and (not username or ":" in username):
            raise ValueError("username must be non-empty and contain no ':'")
        self.root = Path(root)
        self.data_dir = Path(data_dir) if data_dir is not None else self.root / "data"
        self.username = username
        self.password = password
        self.tls = tls
        self.port: int | None = None
        self.ca_cert: Path | None = None
        self.cert_dir: Path | None = None  # holds only ca.crt: for skopeo --cert-dir
        self.config_path = self.root / "config.yml"
        self.log_path = self.root / "registry.log"
        self.htpasswd_path: Path | None = self.root / "htpasswd" if username is not None else None
        self._users: dict[str, str] = {}  # username -> htpasswd line
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None
        self._ssl_ctx: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ props
    @property
    def host(self) -> str:
        if self.port is None:
            raise RegistryError("registry has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def auth(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def skopeo_tls_args(self, prefix: str = "") -> list[str]:
        """skopeo flags to reach this registry: ``prefix`` is "", "src-" or "dest-".

        Plain HTTP gives ``--<prefix>tls-verify=false``; TLS gives
        ``--<prefix>cert-dir <dir with ca.crt>`` so the certificate is verified.
        """
        if self.tls:
            assert self.cert_dir is not None, "start() the registry first"
            return [f"--{prefix}cert-dir", str(self.cert_dir)]
        return [f"--{prefix}tls-verify=false"]

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting this registry's certificate (None for HTTP)."""
        return self._ssl_ctx

    def log_text(self, tail: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-tail:].decode("utf-8", "replace")

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        if self.running:
            return self
        for tool in (REGISTRY_BIN, "htpasswd" if self.username else None, "openssl" if self.tls else None):
            if tool and shutil.which(tool) is None:
                raise RegistryError(f"{tool} not found on PATH")
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.username is not None and not self._users:
            assert self.password is not None
            self.set_password(self.username, self.password)
        if self.tls and self.ca_cert is None:
            self._make_cert()

        # A fresh port can be grabbed by someone else between free_port() and
        # the registry's bind(): retry with another one.  A restart keeps its port.
        fixed_port = self.port is not None
        attempts = 1 if fixed_port else 3
        last_error: RegistryError | None = None
        for _ in range(attempts):
            if not fixed_port:
                self.port = free_port()
            try:
                self._spawn_and_wait()
                _LIVE.add(self)
                return self
            except RegistryError as exc:
                last_error = exc
                if "address already in use" not in str(exc):
                    break
        assert last_error is not None
        raise last_error

    def _spawn_and_wait(self) -> None:
        self._write_config()
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self._proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=_clean_env(),
            start_new_session=True,  # own process group
        )
        deadline = time.monotonic() + START_TIMEOUT
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._reap()
                raise RegistryError(f"docker-registry exited with rc {rc} during start:\n{self.log_text()}")
            try:
                status, _, _ = self.request("GET", "/v2/", auth=False, timeout=1.0)
                if status in (200, 401):
                    return
                last = RegistryError(f"GET /v2/ answered {status}", status)
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            time.sleep(0.02)
        self.kill()
        raise RegistryError(
            f"docker-registry did not answer on {self.host} within {START_TIMEOUT}s ({last!r}):\n{self.log_text()}"
        )

    def stop(self) -> None:
        """SIGTERM, wait up to 5 s, then SIGKILL.  Safe to call repeatedly."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        self._reap()

    def kill(self) -> None:
        """SIGKILL at once (for fault tests).  Safe to call repeatedly."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
        self._reap()

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        try:
            # start_new_session=True: the process group id is the registry's pid.
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not honoured
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
        _LIVE.discard(self)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # ----------------------------------------------------------------- config
    def _write_config(self) -> None:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: text",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {yaml_str(self.data_dir)}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {yaml_str(self.host)}",
            f"  secret: {yaml_str(secrets.token_hex(16))}",
            "  draintimeout: 1s",
        ]
        if self.tls:
            lines += [
                "  tls:",
                f"    certificate: {yaml_str(self.root / 'registry.crt')}",
                f"    key: {yaml_str(self.root / 'registry.key')}",
            ]
        if self.htpasswd_path is not None:
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: test",
                f"    path: {yaml_str(self.htpasswd_path)}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _make_cert(self) -> None:
        crt, key = self.root / "registry.crt", self.root / "registry.key"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-nodes", "-days", "2",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-subj", "/CN=localhost",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout", str(key), "-out", str(crt),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )  # fmt: skip
        cert_dir = self.root / "certs"
        cert_dir.mkdir(exist_ok=True)
        shutil.copyfile(crt, cert_dir / "ca.crt")
        self.ca_cert = crt
        self.cert_dir = cert_dir
        self._ssl_ctx = ssl.create_default_context(cafile=str(crt))

    def set_password(self, username: str, password: str) -> None:
        """Add or change a user in the htpasswd file (bcrypt).

        The file is replaced atomically with a new mtime, which distribution
        2.8.2 notices on the next request.  Only for registries created with
        credentials: auth cannot be switched on while running.
        """
        if self.htpasswd_path is None:
            raise RegistryError("this registry was created without auth")
        if not username or ":" in username:
            raise ValueError("username must be non-empty and contain no ':'")
        # -i: password on stdin, so it never shows up in a process listing.
        out = subprocess.run(
            ["htpasswd", "-niB", username],
            input=password.encode(),
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout.decode()
        line = out.strip()
        if not line.startswith(f"{username}:$2"):
            raise RegistryError(f"unexpected htpasswd output for {username!r}")
        self._users[username] = line
        if username == self.username or self.username is None:
            self.username, self.password = username, password

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.htpasswd_path
        old_mtime = path.stat().st_mtime_ns if path.exists() else None
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{ln}\n" for ln in self._users.values()))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        new_mtime = path.stat().st_mtime_ns
        if old_mtime is not None and new_mtime <= old_mtime:
            os.utime(path, ns=(old_mtime + 1_000_000, old_mtime + 1_000_000))

    # ------------------------------------------------------------------- HTTP
    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        timeout: float = HTTP_TIMEOUT,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One HTTP request to the registry; returns (status, headers, body).

        Sends basic auth when the registry has credentials and ``auth`` is true.
        Connection failures propagate (ConnectionRefusedError, TimeoutError, ...).
        """
        if self.port is None:
            raise RegistryError("registry has not been started")
        hdrs = dict(headers or {})
        if auth and self.auth is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            hdrs["Authorization"] = f"Basic {token}"
        conn: http.client.HTTPConnection
        if self.tls:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self._ssl_ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=hdrs)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, resp.headers, body
        finally:
            conn.close()

    def tags(self, repo: str) -> list[str]:
        """Sorted tags of ``repo``; [] when the repository is unknown (404).

        (The registry itself returns them in filesystem order.)
        """
        status, _, body = self.request("GET", f"/v2/{_quote_repo(repo)}/tags/list")
        if status == 404:
            return []
        if status != 200:
            raise RegistryError(f"GET tags of {repo}: HTTP {status}: {body[:300]!r}", status)
        return sorted(json.loads(body).get("tags") or [])

    def manifest_digest(self, repo: str, ref: str) -> str | None:
        """``Docker-Content-Digest`` of ``repo:ref`` (tag or digest); None on 404."""
        status, headers, _ = self.request(
            "HEAD",
            f"/v2/{_quote_repo(repo)}/manifests/{urllib.parse.quote(ref, safe=':')}",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if status == 404:
            return None
        if status != 200:
            raise RegistryError(f"HEAD manifest {repo}:{ref}: HTTP {status}", status)
        digest = headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryError(f"HEAD manifest {repo}:{ref}: no Docker-Content-Digest header")
        return digest

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Registry {self.url if self.port else '(no port)'} {state} root={self.root}>"


def _quote_repo(repo: str) -> str:
    return urllib.parse.quote(repo.strip("/"), safe="/")


# -------------------------------------------------------------------- authfile
def write_authfile(path: Path, creds: Mapping[str, tuple[str, str]]) -> Path:
    """Write a containers-auth.json at ``path`` with mode 0600.

    ``creds`` maps ``host[:port]`` to (username, password).  skopeo only uses
    the base64 ``auth`` field, so that is the only one written.
    """
    doc = {
        "auths": {
            host: {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}
            for host, (user, pw) in creds.items()
        }
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        json.dump(doc, fh)
    return Path(path)


@contextlib.contextmanager
def authfile(*registries: Registry, extra: Mapping[str, tuple[str, str]] | None = None) -> Iterator[Path]:
    """A 0600 authfile in a private (0700) temp dir for the given registries.

    Registries without credentials are skipped; ``extra`` adds or overrides
    entries (e.g. a wrong password).  The directory is removed on exit.
    """
    creds: dict[str, tuple[str, str]] = {r.host: r.auth for r in registries if r.auth is not None}
    creds.update(extra or {})
    tmpdir = Path(tempfile.mkdtemp(prefix="qm-auth-"))  # mkdtemp: mode 0700
    try:
        yield write_authfile(tmpdir / "auth.json", creds)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ----------------------------------------------------------------- hung server
@contextlib.contextmanager
def hung_server(max_lifetime: float = 120.0) -> Iterator[str]:
    """A loopback TCP server that accepts connections and never answers.

    Yields ``"127.0.0.1:<port>"``.  Accepted sockets are held open (never read
    or written) until the context exits or ``max_lifetime`` seconds pass,
    whichever comes first; then everything is closed.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    done = threading.Event()
    held: list[socket.socket] = []
    deadline = time.monotonic() + max_lifetime

    def close_all() -> None:
        listener.close()
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()

    def serve() -> None:
        try:
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                held.append(conn)
        finally:
            done.set()
            close_all()

    thread = threading.Thread(target=serve, name=f"hung-server-{port}", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        done.set()
        thread.join(timeout=2.0)
        close_all()
