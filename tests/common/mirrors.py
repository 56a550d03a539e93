"""Test helpers for the worker: mirror rows made directly in the database, a gated HTTP proxy, process scans.

Nothing here imports the mirror API's service layer: the worker is tested on
its own, with rows exactly as the API would leave them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from sqlalchemy import insert, select

from quaymirror.accounts.models import User
from quaymirror.db import Database, utcnow
from quaymirror.mirror.models import (
    MirrorSyncRun,
    MirrorSyncTag,
    RepoMirrorConfig,
    RepoMirrorRule,
    RepoMirrorStatus,
)
from quaymirror.mirror.worker import claims
from quaymirror.mirror.worker.claims import Claimed
from quaymirror.repositories.models import Repository, RepositoryState
from quaymirror.security.secrets import SecretBox
from quaymirror.settings import Settings

# ---------------------------------------------------------------- mirror rows


@dataclass
class Mirrors:
    """Creates namespace + repository (state MIRROR) + robot + rule + config rows, as the API would."""

    database: Database
    secret_key: str

    def create(self, path: str, upstream: str, rules: Iterable[str] = ("*",), *, username: str | None = None,
               password: str | None = None, verify_tls: bool = False, unsigned: bool = False,
               proxy: dict | None = None, status: RepoMirrorStatus = RepoMirrorStatus.SYNC_NOW,
               interval: int = 3600, start: datetime | None = None, timeout: int = 300,
               enabled: bool = True) -> int:
        from quaymirror.accounts import service as accounts
        from quaymirror.repositories import service as repositories
        from quaymirror.repositories.models import RepositoryState

        namespace_name, name = path.split("/")
        box = SecretBox(self.secret_key)
        with self.database.transaction() as session:
            namespace = accounts.get_by_name(session, namespace_name) or accounts.create_user(
                session, namespace_name, f"{namespace_name}@example.com")
            robot = accounts.get_robot(session, f"{namespace_name}+mirror")
            if robot is None:
                robot, _token = accounts.create_robot(session, box, namespace, "mirror")
            repository = repositories.create(session, namespace, name, state=RepositoryState.MIRROR)
            rule = RepoMirrorRule(repository_id=repository.id)
            rule.rule_value = list(rules)
            session.add(rule)
            session.flush()
            config = RepoMirrorConfig(
                repository_id=repository.id,
                internal_robot_id=robot.id,
                external_reference=upstream,
                external_registry_username=box.encrypt(username),
                external_registry_password=box.encrypt(password),
                sync_interval=interval,
                sync_start_date=start or utcnow() - timedelta(minutes=1),
                sync_status=int(status),
                root_rule_id=rule.id,
                skopeo_timeout=timeout,
                is_enabled=enabled,
            )
            config.external_registry_config = {"verify_tls": verify_tls, "unsigned_images": unsigned,
                                               "proxy": proxy or {}}
            session.add(config)
            session.flush()
            return config.id

    def config(self, config_id: int) -> RepoMirrorConfig:
        with self.database.transaction() as session:
            row = session.get(RepoMirrorConfig, config_id)
            session.expunge(row)
            return row

    def update(self, config_id: int, **values) -> None:
        with self.database.transaction() as session:
            row = session.get(RepoMirrorConfig, config_id)
            for key, value in values.items():
                setattr(row, key, value)

    def runs(self, config_id: int) -> list[MirrorSyncRun]:
        with self.database.transaction() as session:
            rows = list(session.scalars(select(MirrorSyncRun).where(MirrorSyncRun.config_id == config_id)
                                        .order_by(MirrorSyncRun.id)))
            for row in rows:
                session.expunge(row)
            return rows

    def tags(self, run_id: int) -> dict[str, MirrorSyncTag]:
        with self.database.transaction() as session:
            rows = list(session.scalars(select(MirrorSyncTag).where(MirrorSyncTag.run_id == run_id)
                                        .order_by(MirrorSyncTag.id)))
            for row in rows:
                session.expunge(row)
            return {row.tag: row for row in rows}


def claim_due(database: Database, owner: str = "w1") -> Claimed:
    """Claim the one due mirror (and open its run) as a worker's pass would, with the product's calls."""
    with database.transaction() as session:
        candidates = claims.due(session, utcnow(), 10)
    [claimed] = claims.claim_many(database, candidates, owner, 60)
    return claimed


def layout_tags(settings: Settings, repo: str) -> dict[str, str]:
    """{tag: digest} of the repository's OCI layout in the settings' ``oci:`` storage, read directly."""
    index = settings.storage.path / repo / "index.json"
    doc = json.loads(index.read_text())
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in doc["manifests"]}


# ------------------------------------------------------------------ processes


def skopeo_processes(marker: str) -> list[tuple[int, list[str]]]:
    """Live skopeo processes whose command line contains ``marker`` (e.g. a registry's port)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or not argv or os.path.basename(argv[0]) != "skopeo":
            continue
        if any(marker in a for a in argv):
            found.append((int(entry), argv))
    return found


def kill_skopeo(marker: str) -> int:
    """SIGKILL leftover skopeo processes (test cleanup after a worker was SIGKILLed on purpose)."""
    killed = 0
    for pid, _argv in skopeo_processes(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


# ---------------------------------------------------------------------- proxy


class GatedProxy:
    """A loopback HTTP reverse proxy in front of a plain-HTTP registry.

    After :meth:`hold`, every blob request waits, so a ``skopeo copy`` hangs
    mid-transfer while ``list-tags`` and ``inspect`` (which only read tags and
    manifests) go through. :meth:`stop_holding` lets new requests through but
    keeps the held ones waiting; :meth:`release` lets everything go. ``delay``
    slows every request down. Every wait is bounded by ``max_hold`` seconds;
    :meth:`stop` releases all.
    """

    def __init__(self, target_host: str, *, delay: float = 0.0, max_hold: float = 60.0) -> None:
        self.target_host = target_host
        self.delay = delay
        self.max_hold = max_hold
        self.hold_blobs = threading.Event()
        self.released = threading.Event()
        self.blob_requested = threading.Event()
        self.closed = threading.Event()
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def hold(self) -> None:
        self.released.clear()
        self.blob_requested.clear()
        self.hold_blobs.set()

    def stop_holding(self) -> None:
        self.hold_blobs.clear()

    def release(self) -> None:
        self.hold_blobs.clear()
        self.released.set()

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *_args) -> None:  # keep the test output clean
                pass

            def _forward(self) -> None:
                proxy.requests.append(f"{self.command} {self.path}")
                if proxy.delay:
                    proxy.closed.wait(proxy.delay)
                if "/blobs/" in self.path:
                    proxy.blob_requested.set()
                    if proxy.hold_blobs.is_set():
                        deadline = time.monotonic() + proxy.max_hold
                        while not proxy.released.is_set() and not proxy.closed.is_set() \
                                and time.monotonic() < deadline:
                            proxy.closed.wait(0.05)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.target_host, timeout=30)
                try:
                    # Header by header: skopeo sends several Accept lines, and all of them matter.
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    conn.putheader("Host", proxy.target_host)
                    for key, value in self.headers.items():
                        if key.lower() not in ("host", "connection", "content-length"):
                            conn.putheader(key, value)
                    conn.putheader("Content-Length", str(len(body or b"")))
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def handle_one_request(self) -> None:
                with contextlib.suppress(OSError):
                    super().handle_one_request()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.closed.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


class ProcSampler:
    """Samples the command lines and environments of matching skopeo processes while they run."""

    def __init__(self, marker: str, interval: float = 0.005) -> None:
        self.marker = marker
        self.interval = interval
        self.samples: list[tuple[list[str], bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, argv in skopeo_processes(self.marker):
                try:
                    with open(f"/proc/{pid}/environ", "rb") as handle:
                        environ = handle.read()
                except OSError:
                    environ = b""
                self.samples.append((argv, environ))
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def bulk_configs(database: Database, rows: list[dict]) -> list[int]:
    """One repository (``state`` in the row, MIRROR by default) + rule + config per row; the config ids."""
    now = utcnow()
    with database.transaction() as session:
        owner = User(username="bulk")
        session.add(owner)
        session.flush()
        robot = User(username="bulk+mirror", is_robot=True, robot_namespace_id=owner.id)
        session.add(robot)
        session.flush()
        repo_ids = session.scalars(insert(Repository).returning(Repository.id, sort_by_parameter_order=True), [
            {"namespace_id": owner.id, "name": f"r{i}", "visibility": "private", "description": "", "kind": "image",
             "state": int(row.get("state", RepositoryState.MIRROR)), "created": now}
            for i, row in enumerate(rows)]).all()
        rule_ids = session.scalars(insert(RepoMirrorRule).returning(RepoMirrorRule.id, sort_by_parameter_order=True), [
            {"uuid": f"u{i}", "repository_id": rid, "creation_date": now, "rule_type": 1, "rule_value_json": '["*"]'}
            for i, rid in enumerate(repo_ids)]).all()
        config_ids = session.scalars(insert(RepoMirrorConfig).returning(RepoMirrorConfig.id,
                                                                        sort_by_parameter_order=True), [
            {"repository_id": rid, "creation_date": now, "is_enabled": True, "mirror_type": 1,
             "internal_robot_id": robot.id, "external_reference": "quay.io/a/b", "external_registry_config_json": "{}",
             "architecture_filter_json": "[]", "sync_interval": 3600, "sync_retries_remaining": 3,
             "sync_status": int(RepoMirrorStatus.SUCCESS), "sync_transaction_id": f"t{i}", "root_rule_id": rule_id,
             "skopeo_timeout": 300, **{k: v for k, v in row.items() if k != "state"}}
            for i, (row, rid, rule_id) in enumerate(zip(rows, repo_ids, rule_ids, strict=True))]).all()
    return list(config_ids)
