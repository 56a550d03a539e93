"""Load: N keep-alive clients against gunicorn (``serve --no-worker``) on PostgreSQL while two workers sync.

Each client thread owns some repositories for its PUTs (so "the last
acknowledged PUT" of a repository is well defined), and every thread also
mixes GET, sync-now and sync-cancel over all 20 repositories. At the end:
zero 5xx, every repository's stored ``sync_interval`` equals its last
acknowledged PUT, and after the workers stop gracefully no mirror is left
SYNCING. Duration: ``QUAYMIRROR_LOAD_SECONDS`` (default 60, as the issue asks),
clients: ``QUAYMIRROR_LOAD_CLIENTS`` (default 50).
"""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import select

from quaymirror.db import Database
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus
from tests.common.database import TEST_SECRET, truncate_all
from tests.common.images import push_images
from tests.common.registries import require_tools
from tests.common.servers import Server, WorkerProcess, send
from tests.common.world import World

DURATION = float(os.environ.get("QUAYMIRROR_LOAD_SECONDS", "60"))
CLIENTS = int(os.environ.get("QUAYMIRROR_LOAD_CLIENTS", "50"))
REPOSITORIES = 20
NAMESPACE = "loadorg"


def mirror_body(upstream: str, interval: int) -> dict:
    return {
        "is_enabled": True,
        "external_reference": upstream,
        "sync_interval": interval,
        "sync_start_date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "external_registry_config": {"verify_tls": False},
        "robot_username": f"{NAMESPACE}+mirror",
        "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["*"]},
        "skopeo_timeout_interval": 300,
    }


def populate(database: Database) -> str:
    """The owner, its robot, 20 MIRROR repositories; the owner's repo:admin token."""
    world = World(database, TEST_SECRET)
    world.user(NAMESPACE)
    world.robot(f"{NAMESPACE}+mirror")
    for index in range(REPOSITORIES):
        world.repo(f"{NAMESPACE}/r{index}", state="MIRROR")
    return world.token("owner", NAMESPACE, "repo:admin")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


def test_load_mixed_clients_with_two_workers(postgres_url, registry, tmp_path):
    require_tools("skopeo", "docker-registry")
    truncate_all(postgres_url)
    database = Database(postgres_url)
    token = populate(database)
    push_images(registry, "lib/app", ["t1", "t2", "t3"], workdir=tmp_path / "images")
    upstream = f"{registry.host}/lib/app"
    settings = {"database_url": postgres_url, "secret_key": TEST_SECRET, "ssrf_allowed_hosts": "127.0.0.1/32",
                "storage": f"oci:{tmp_path / 'storage'}", "worker_poll_seconds": 0.5, "retry_seconds": 0,
                "lease_seconds": 30, "api_workers": 2}
    server = Server(tmp_path / "instance", "--no-worker", **settings)
    workers: list[WorkerProcess] = []
    try:
        server.wait_healthy()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for index in range(REPOSITORIES):
            status, body, _ = send(conn, "POST", f"/api/v1/repository/{NAMESPACE}/r{index}/mirror", token,
                                   mirror_body(upstream, 1000))
            assert status == 201, body
        conn.close()
        workers = [WorkerProcess(tmp_path / "instance", **settings) for _ in range(2)]

        statuses: Counter[tuple[str, int]] = Counter()
        fivexx: list[str] = []
        latencies: list[float] = []
        acknowledged: dict[int, int] = {}  # repository index -> last acknowledged sync_interval
        lock = threading.Lock()
        deadline = time.monotonic() + DURATION
        errors: list[BaseException] = []

        def client(number: int) -> None:
            rng = random.Random(number)
            owned = [i for i in range(REPOSITORIES) if i % CLIENTS == number]
            counter = 0
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                while time.monotonic() < deadline:
                    roll = rng.random()
                    if owned and roll < 0.3:
                        index = rng.choice(owned)
                        counter += 1
                        value = 1000 + counter
                        method, path, body, kind = ("PUT", f"/api/v1/repository/{NAMESPACE}/r{index}/mirror",
                                                    {"sync_interval": value}, "PUT")
                    else:
                        index = rng.randrange(REPOSITORIES)
                        path = f"/api/v1/repository/{NAMESPACE}/r{index}/mirror"
                        body = None
                        if roll < 0.7:
                            method, kind = "GET", "GET"
                        elif roll < 0.85:
                            method, path, kind = "POST", path + "/sync-now", "sync-now"
                        else:
                            method, path, kind = "POST", path + "/sync-cancel", "sync-cancel"
                    started = time.monotonic()
                    try:
                        status, payload, _ = send(conn, method, path, token, body)
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                        with lock:
                            statuses[(kind, -1)] += 1
                        continue
                    took = time.monotonic() - started
                    with lock:
                        latencies.append(took)
                        statuses[(kind, status)] += 1
                        if status >= 500:
                            fivexx.append(f"{method} {path} -> {status} {payload!r}")
                        if kind == "PUT" and status == 201:
                            acknowledged[index] = value
            except BaseException as error:  # noqa: BLE001 - reported by the main thread
                errors.append(error)
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DURATION + 60)
        elapsed = time.monotonic() - started
        total = sum(statuses.values())
        p99 = percentile(latencies, 0.99)
        print(f"\nload: {CLIENTS} clients, {elapsed:.1f}s, {total} requests, {total / elapsed:.1f} req/s, "
              f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
        print("load statuses:", dict(sorted(statuses.items())))
        assert not errors, errors
        assert not any(thread.is_alive() for thread in threads)
        assert not fivexx, fivexx[:10]
        assert not [key for key in statuses if key[1] == -1], statuses
        assert all(server.alive() and worker.alive() for worker in workers), server.output()

        for worker in workers:
            assert worker.stop(timeout=30) == 0, worker.output()
        with database.transaction() as session:
            rows = {row.repository.name: (row.sync_interval, row.sync_status, row.lease_owner)
                    for row in session.scalars(select(RepoMirrorConfig))}
        lost = {f"r{i}": (rows[f"r{i}"][0], value) for i, value in acknowledged.items() if rows[f"r{i}"][0] != value}
        assert not lost, f"stored != last acknowledged PUT: {lost}"
        syncing = {name: row for name, row in rows.items() if row[1] == RepoMirrorStatus.SYNCING}
        assert not syncing, f"left SYNCING after the workers stopped: {syncing}"
        synced = sum(1 for row in rows.values() if row[1] == RepoMirrorStatus.SUCCESS)
        print(f"load: {synced}/{REPOSITORIES} mirrors last finished SUCCESS; final statuses "
              f"{Counter(RepoMirrorStatus(row[1]).name for row in rows.values())}")
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
        database.dispose()
