"""Faults on purpose: PostgreSQL stopped under load, destination disk full, upstream killed mid-sync.

The SIGKILL/SIGTERM worker hand-over is covered by tests/mirror/worker/test_runner_processes.py.
Recovery times are printed (``-s``) for the report.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from quaymirror import db as dbmod
from quaymirror.db import Database
from quaymirror.mirror.models import MirrorSyncTag, RepoMirrorConfig, RepoMirrorStatus
from quaymirror.mirror.worker.runner import Worker
from tests.common.database import TEST_SECRET
from tests.common.images import push_images
from tests.common.mirrors import GatedProxy, Mirrors, kill_skopeo
from tests.common.pgcluster import PgCluster
from tests.common.ports import wait_for
from tests.common.registries import require_tools
from tests.common.servers import Server, WorkerProcess, send
from tests.common.world import World

REPOS = 5


def _body(upstream: str, interval: int) -> dict:
    return {"is_enabled": True, "external_reference": upstream, "sync_interval": interval,
            "sync_start_date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "external_registry_config": {"verify_tls": False}, "robot_username": "faultorg+mirror",
            "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["*"]}, "skopeo_timeout_interval": 300}


# ----------------------------------------------------------------- (a) PostgreSQL stopped and restarted


def test_postgres_stopped_and_restarted_during_load(pg_cluster: PgCluster, registry, tmp_path):
    require_tools("skopeo", "docker-registry")
    url = pg_cluster.create_database()
    dbmod.upgrade(url)
    database = Database(url)
    world = World(database, TEST_SECRET)
    world.user("faultorg")
    world.robot("faultorg+mirror")
    for index in range(REPOS):
        world.repo(f"faultorg/r{index}", state="MIRROR")
    token = world.token("owner", "faultorg", "repo:admin")
    database.dispose()
    push_images(registry, "lib/app", ["t1", "t2"], workdir=tmp_path / "images")
    settings = {"database_url": url, "secret_key": TEST_SECRET, "ssrf_allowed_hosts": "127.0.0.1/32",
                "storage": f"oci:{tmp_path / 'storage'}", "worker_poll_seconds": 0.5, "retry_seconds": 0,
                "lease_seconds": 15}
    server = Server(tmp_path / "instance", "--no-worker", **settings)
    worker: WorkerProcess | None = None
    try:
        server.wait_healthy()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for index in range(REPOS):
            status, payload, _ = send(conn, "POST", f"/api/v1/repository/faultorg/r{index}/mirror", token,
                                      _body(f"{registry.host}/lib/app", 1000))
            assert status == 201, payload
        worker = WorkerProcess(tmp_path / "instance", **settings)

        acknowledged: dict[int, int] = {}
        during: list[tuple[int, float, str, str]] = []  # status, seconds, content-type, error_type
        down = threading.Event()
        stop = threading.Event()
        bad: list[str] = []

        def client(index: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            value = 1000
            path = f"/api/v1/repository/faultorg/r{index}/mirror"
            while not stop.is_set():
                value += 1
                for method, target, body in (("PUT", path, {"sync_interval": value}), ("GET", path, None),
                                             ("POST", path + "/sync-now", None)):
                    started = time.monotonic()
                    try:
                        status, payload, headers = send(conn, method, target, token, body)
                    except (OSError, http.client.HTTPException) as error:
                        bad.append(f"{method} {target}: {error!r}")
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                        continue
                    took = time.monotonic() - started
                    if method == "PUT" and status == 201:
                        acknowledged[index] = value
                    if status >= 500 and status != 503:
                        bad.append(f"{method} {target} -> {status} {payload!r}")
                    if status == 503 or down.is_set():
                        error_type = payload.get("error_type", "") if isinstance(payload, dict) else repr(payload)
                        during.append((status, took, headers.get("content-type", ""), error_type))
                time.sleep(0.02)
            conn.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(REPOS)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        pg_cluster.stop("fast")
        down.set()
        stopped_at = time.monotonic()
        time.sleep(5)
        started = pg_cluster.start()
        restarted_at = time.monotonic()
        down.clear()

        def api_ok():
            try:
                return send(http.client.HTTPConnection("127.0.0.1", server.port, timeout=10), "GET",
                            "/api/v1/repository/faultorg/r0/mirror", token)[0] == 200
            except OSError:
                return False

        wait_for(api_ok, 30, 0.05, "the API to recover")
        recovered = time.monotonic() - restarted_at
        time.sleep(2)
        stop.set()
        for thread in threads:
            thread.join(timeout=40)
        print(f"\nfaults/pg: down {restarted_at - stopped_at:.1f}s (pg start {started:.1f}s), API recovered "
              f"{recovered:.2f}s after restart; {len(during)} responses while down: "
              f"{sorted({d[0] for d in during})}, max {max((d[1] for d in during), default=0):.2f}s")
        assert not bad, bad[:10]
        assert any(d[0] == 503 for d in during), during[:5]
        for status, took, content_type, error_type in during:
            if status >= 500:
                assert status == 503 and content_type.startswith("application/") and error_type, \
                    (status, content_type, error_type)
            assert took < 15, took
        assert server.alive(), server.output()
        assert worker.alive(), worker.output()

        # Nothing lost: every repository holds its last acknowledged PUT.
        database = Database(url)
        with database.transaction() as session:
            rows = {int(row.repository.name[1:]): row for row in session.scalars(select(RepoMirrorConfig))}
            stored = {index: row.sync_interval for index, row in rows.items()}
        assert {i: stored[i] for i in acknowledged} == acknowledged

        # Claims: kept or released, never stuck beyond the lease; the worker syncs again.
        def settled():
            with database.transaction() as session:
                return all(row.sync_status != RepoMirrorStatus.SYNCING
                           for row in session.scalars(select(RepoMirrorConfig)))

        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        wait_for(settled, 15 + 30, 0.2, "no mirror SYNCING after the lease")
        status, _, _ = send(conn, "POST", "/api/v1/repository/faultorg/r0/mirror/sync-now", token)
        assert status in (204, 404)

        def synced():
            status, payload, _ = send(conn, "GET", "/api/v1/repository/faultorg/r0/mirror/syncs", token)
            return status == 200 and payload["syncs"] and payload["syncs"][0]["status"] == "SUCCESS"

        wait_for(synced, 60, 0.3, "a successful sync after the restart")
        database.dispose()
        assert worker.stop(timeout=20) == 0, worker.output()
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
        kill_skopeo(registry.host)


# --------------------------------------------------------------------------- (b) destination disk full


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount) -> None:
    with open(mount / "filler", "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()


def _disk_full_run(small_tmpfs, registry, database, settings, tmp_path):
    """A mirror synced into a full destination, then (space back) it and another one: (first run, tags)."""
    push_images(registry, "lib/app", ["t1", "t2"], workdir=tmp_path / "images")
    mirrors = Mirrors(database, TEST_SECRET)
    full = mirrors.create("disk/full", f"{registry.host}/lib/app")
    wsettings = settings.with_overrides(storage=f"oci:{small_tmpfs}", ssrf_allowed_hosts=("127.0.0.1/32",),
                                        retry_seconds=0)
    worker = Worker(wsettings, database).start(poll=False)
    try:
        _fill(small_tmpfs)
        worker.run_pass()
        assert worker.wait_idle(60)
        run = mirrors.runs(full)[-1]
        tags = mirrors.tags(run.id)
        assert run.status == "FAIL", (run.status, run.reason, run.message)
        print(f"\nfaults/disk: run {run.status} reason={run.reason} message={run.message!r}; tags "
              f"{[(t.tag, t.outcome, t.reason) for t in tags.values()]}")
        # Nothing else broke: with space back, another mirror and the failed one sync on the same worker.
        (small_tmpfs / "filler").unlink()
        other = mirrors.create("disk/other", f"{registry.host}/lib/app")
        mirrors.update(full, sync_status=int(RepoMirrorStatus.SYNC_NOW))
        worker.run_pass()
        assert worker.wait_idle(60)
        for config_id in (other, full):
            last = mirrors.runs(config_id)[-1]
            assert last.status == "SUCCESS", (last.status, last.reason, last.message)
        return run, tags
    finally:
        worker.shutdown(timeout=10)
        kill_skopeo(registry.host)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_destination_disk_full_breaks_nothing_else(backend, small_tmpfs, registry, database, settings,
                                                   tmp_path):
    require_tools("skopeo", "docker-registry")
    run, _tags = _disk_full_run(small_tmpfs, registry, database, settings, tmp_path)
    assert run.reason is not None


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_destination_disk_full_reason_is_clear(backend, small_tmpfs, registry, database, settings,
                                               tmp_path):
    require_tools("skopeo", "docker-registry")
    run, tags = _disk_full_run(small_tmpfs, registry, database, settings, tmp_path)
    text = f"{run.message} " + " ".join(f"{t.reason} {t.output}" for t in tags.values())
    assert "no space left on device" in text.lower(), text


# --------------------------------------------------------------------- (c) upstream killed mid-sync


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_upstream_killed_mid_sync_then_restarted(backend, registry, database, settings, tmp_path):
    require_tools("skopeo", "docker-registry")
    push_images(registry, "lib/app", ["t1", "t2"], workdir=tmp_path / "images")
    mirrors = Mirrors(database, TEST_SECRET)
    wsettings = settings.with_overrides(ssrf_allowed_hosts=("127.0.0.1/32",), retry_seconds=0)
    with GatedProxy(registry.host, max_hold=30) as proxy:
        config_id = mirrors.create("up/app", f"{proxy.host}/lib/app")
        before = mirrors.config(config_id).sync_retries_remaining
        worker = Worker(wsettings, database).start(poll=False)
        try:
            proxy.hold()
            worker.run_pass()
            assert proxy.blob_requested.wait(30), proxy.requests
            registry.kill()
            killed_at = time.monotonic()
            proxy.release()
            assert worker.wait_idle(60)
            failed_after = time.monotonic() - killed_at
            run = mirrors.runs(config_id)[-1]
            tags = mirrors.tags(run.id)
            reasons = {run.reason} | {t.reason for t in tags.values()}
            assert run.status == "FAIL" and "connection_error" in reasons, \
                (run.status, run.reason, run.message, [(t.tag, t.reason, t.output) for t in tags.values()])
            after = mirrors.config(config_id)
            assert after.sync_retries_remaining == before - 1
            assert after.sync_status == RepoMirrorStatus.FAIL

            registry.start()
            restarted_at = time.monotonic()
            worker.run_pass()
            assert worker.wait_idle(60)
            run = mirrors.runs(config_id)[-1]
            assert run.status == "SUCCESS", (run.status, run.reason, run.message)
            config = mirrors.config(config_id)
            assert config.sync_status == RepoMirrorStatus.SUCCESS
            assert config.sync_retries_remaining == before
            with database.transaction() as session:
                assert session.scalars(select(MirrorSyncTag).where(MirrorSyncTag.run_id == run.id)).first() is not None
            print(f"\nfaults/upstream: run failed {failed_after:.2f}s after the kill (connection_error), "
                  f"retries {before}->{before - 1}->{config.sync_retries_remaining}; next run succeeded "
                  f"{time.monotonic() - restarted_at:.2f}s after the restart")
        finally:
            worker.shutdown(timeout=10)
            kill_skopeo(proxy.host)
