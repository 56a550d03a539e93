"""The production topology, run for real: 2 API + 2 worker containers of one image on the host's
PostgreSQL, mirroring from a host registry into a host registry.

Shows that (1) a sync-now sent to either API container is picked up at once (NOTIFY/LISTEN),
(2) a worker container killed mid-sync (`podman kill`) leaves a lease that the other worker
reclaims after it expires, finishing the work, (3) a worker stopped with SIGTERM releases its
claim so the other worker takes it at once, and (4) an API container exits within 5 s of SIGTERM.
Everything it starts is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text

from tests.common.images import push_images
from tests.common.ports import free_port, wait_for
from tests.common.registry import Registry

IMAGE = os.environ.get("APP_TAG", "localhost/quaymirror:ci")
PG_ADMIN = os.environ.get("QUAYMIRROR_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
LEASE = 6
TAGS = [f"v{i}" for i in range(12)]


def run(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:5])}... failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def curl(method: str, url: str, token: str, body: object | None = None) -> tuple[int, dict | str]:
    args = ["curl", "-sS", "-m", "20", "-o", "-", "-w", "\n%{http_code}", "-X", method, url,
            "-H", f"Authorization: Bearer {token}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    out, _, code = run(*args).rpartition("\n")
    try:
        return int(code), json.loads(out) if out.strip() else ""
    except json.JSONDecodeError:
        return int(code), out


def main() -> int:
    suffix = uuid.uuid4().hex[:6]
    dbname = f"quaymirror_topology_{suffix}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{dbname}"
    containers: list[str] = []
    env = ["-e", f"QUAYMIRROR_DATABASE_URL={db_url}", "-e", f"QUAYMIRROR_SECRET_KEY=topology-{suffix}",
           "-e", "QUAYMIRROR_SSRF_ALLOWED_HOSTS=127.0.0.1", "-e", f"QUAYMIRROR_LEASE_SECONDS={LEASE}",
           "-e", "QUAYMIRROR_WORKER_POLL_SECONDS=60", "-e", "QUAYMIRROR_TAG_CONCURRENCY=1",
           "-e", "QUAYMIRROR_STORAGE_TLS_VERIFY=false"]
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    engine = create_engine(db_url)
    try:
        with tempfile.TemporaryDirectory() as tmp, Registry(Path(tmp) / "src") as source, \
                Registry(Path(tmp) / "dst") as dest:
            digests = push_images(source, "upstream/app", TAGS, workdir=Path(tmp) / "img", jobs=4)
            env += ["-e", f"QUAYMIRROR_STORAGE=docker://{dest.host}"]

            def start(name: str, *args: str) -> str:
                full = f"qm-topo-{name}-{suffix}"
                run("podman", "run", "-d", "--name", full, "--hostname", full, "--network", "host", *env,
                    IMAGE, *args)
                containers.append(full)
                return full

            run("podman", "run", "--rm", "--network", "host", *env, IMAGE, "db", "upgrade")
            ports = {"a": free_port(), "b": free_port()}
            api = {k: start(f"api-{k}", "serve", "--host", "127.0.0.1", "--port", str(p), "--no-worker")
                   for k, p in ports.items()}
            workers = [start("worker-a", "worker"), start("worker-b", "worker")]
            for port in ports.values():
                wait_for(lambda p=port: subprocess.run(["curl", "-sf", "-m", "2", f"http://127.0.0.1:{p}/healthz"],
                                                       capture_output=True, check=False).returncode == 0,
                         60, interval=0.2, what=f"API on {port}")
            run("podman", "exec", api["a"], "quaymirror", "user", "create", "ops")
            token = run("podman", "exec", api["a"], "quaymirror", "token", "create", "--user", "ops",
                        "--scope", "repo:admin", "--scope", "repo:create").strip()
            run("podman", "exec", api["a"], "quaymirror", "robot", "create", "ops+mirror")

            def url(side: str, path: str) -> str:
                return f"http://127.0.0.1:{ports[side]}/api/v1/repository/ops/{path}"

            def status_of(repo: str) -> dict:
                code, body = curl("GET", url("a", f"{repo}/mirror"), token)
                assert code == 200, (code, body)
                return body

            def lease_owner(repo: str) -> str | None:
                with engine.connect() as conn:
                    return conn.execute(text(
                        "SELECT c.lease_owner FROM repomirrorconfig c JOIN repository r ON r.id = c.repository_id "
                        "WHERE r.name = :n AND c.sync_status = 2"), {"n": repo}).scalar()

            def create_mirror(repo: str, side: str) -> None:
                assert curl("POST", f"http://127.0.0.1:{ports[side]}/api/v1/repository", token, {
                    "namespace": "ops", "repository": repo, "visibility": "private", "description": "",
                    "repo_kind": "image"})[0] == 201
                assert curl("PUT", url(side, f"{repo}/changestate"), token, {"state": "MIRROR"})[0] == 200
                code, body = curl("POST", url(side, f"{repo}/mirror"), token, {
                    "is_enabled": True, "external_reference": f"{source.host}/upstream/app",
                    "external_registry_config": {"verify_tls": False}, "robot_username": "ops+mirror",
                    "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["v*"]}, "sync_interval": 86400,
                    "sync_start_date": "2030-01-01T00:00:00Z", "skopeo_timeout_interval": 300})
                assert code == 201, (code, body)

            def sync_now(repo: str, side: str) -> float:
                started = time.monotonic()
                assert curl("POST", url(side, f"{repo}/mirror/sync-now"), token)[0] == 204
                wait_for(lambda: lease_owner(repo), 10, interval=0.01, what=f"{repo} to be claimed")
                return time.monotonic() - started

            def finished(repo: str, timeout: float) -> None:
                def done():
                    state = status_of(repo)["sync_status"]
                    if state == "FAIL":
                        raise RuntimeError(f"{repo} failed: {status_of(repo)}")
                    return state == "SUCCESS"
                wait_for(done, timeout, interval=0.2, what=f"{repo} SUCCESS")
                for tag in TAGS:
                    assert dest.manifest_digest(f"ops/{repo}", tag) == digests[tag], (repo, tag)

            # 1. sync-now through either API replica is picked up at once.
            create_mirror("one", "a")
            create_mirror("two", "b")
            pickup_b = sync_now("one", "b")
            finished("one", 120)
            pickup_a = sync_now("two", "a")
            finished("two", 120)
            print(f"topology: sync-now pick-up {pickup_b:.3f}s via api-b, {pickup_a:.3f}s via api-a")
            assert max(pickup_a, pickup_b) < 2, (pickup_a, pickup_b)

            # 2. SIGKILL the worker holding a mirror mid-sync: the other finishes it after the lease.
            create_mirror("three", "a")
            sync_now("three", "a")
            owner = lease_owner("three")
            victim = next(c for c in workers if owner and owner.startswith(c))
            killed_at = time.monotonic()
            run("podman", "kill", "-s", "KILL", victim)
            survivor = next(c for c in workers if c != victim)
            wait_for(lambda: (lease_owner("three") or "").startswith(survivor), LEASE + 40, interval=0.1,
                     what="reclaim by the survivor")
            reclaimed = time.monotonic() - killed_at
            finished("three", 120)
            print(f"topology: {victim} killed mid-sync; {survivor} reclaimed after {reclaimed:.1f}s "
                  f"(lease {LEASE}s) and finished")

            # 3. SIGTERM a worker mid-sync: it releases at once and the other takes it.
            restarted = start("worker-c", "worker")
            workers = [survivor, restarted]
            time.sleep(2)
            create_mirror("four", "b")
            sync_now("four", "b")
            owner = lease_owner("four")
            holder = next(c for c in workers if owner and owner.startswith(c))
            other = next(c for c in workers if c != holder)
            stopped_at = time.monotonic()
            run("podman", "stop", "-t", "20", holder)
            stop_took = time.monotonic() - stopped_at
            wait_for(lambda: (lease_owner("four") or "").startswith(other), 10, interval=0.05, what="hand-over after SIGTERM")
            handover = time.monotonic() - stopped_at
            finished("four", 120)
            print(f"topology: SIGTERM stopped {holder} in {stop_took:.2f}s; {other} took over "
                  f"{handover:.2f}s after the signal")
            assert handover < LEASE, "a SIGTERMed worker must release its claim at once"

            # 4. An API container exits within 5 s of SIGTERM.
            stopped_at = time.monotonic()
            run("podman", "stop", "-t", "10", api["a"])
            took = time.monotonic() - stopped_at
            print(f"topology: API container stopped {took:.2f}s after SIGTERM")
            assert took < 5
    finally:
        for name in containers:
            subprocess.run(["podman", "rm", "-f", "-t", "2", name], capture_output=True, timeout=60, check=False)
        engine.dispose()
        with contextlib.suppress(Exception), admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                         {"n": dbname})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}"'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
