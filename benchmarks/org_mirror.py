"""Organization mirroring: discovery of 1,000 upstream repositories, and the first sync of 50 one-tag repositories
against ``skopeo sync`` of the same 50, in the same run.

The upstream is a real docker-registry on loopback, discovered through its ``/v2/_catalog`` (the source kind
``registry``, pages of 100). Its 1,000 repositories are one pushed image's repository directory copied (hard
links) 1,000 times in the registry's storage, so the catalog lists real repositories; the 50 synced ones are
50 distinct pushed images (tests.common.images).

* ``discovery``: one discovery of a fresh configuration, from its claim to its release: the catalog read,
  1,000 rows recorded, 1,000 local repositories and their mirror configurations created and queued; on the
  embedded SQLite and, when it answers, on PostgreSQL at 127.0.0.1:5432 (a database of its own per trial);
* ``skopeo sync``: ``skopeo sync --src yaml`` of the 50 repositories into an empty registry;
* ``quaymirror``: a worker started on a configuration of the 50 (embedded SQLite, a ``docker://`` destination,
  an empty registry): from the worker's start to the last repository's SUCCESS, its discovery included.

    .venv/bin/python -m benchmarks.org_mirror [--repos 1000] [--sync-repos 50] [--trials 3] [--worker-concurrency N]

Goals: discovery <= 2 s; quaymirror's first sync <= 0.85 x skopeo sync.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import func, select

from benchmarks.common import median, table
from benchmarks.sync_setup import registry, settle
from quaymirror import db as dbmod
from quaymirror.app import create_app
from quaymirror.db import utcnow
from quaymirror.mirror.worker.runner import Worker
from quaymirror.orgmirror import status
from quaymirror.orgmirror import worker as org_worker
from quaymirror.orgmirror.models import OrgMirrorRepository, OrgMirrorRepoStatus
from quaymirror.settings import Settings
from tests.common.database import fresh_postgres
from tests.common.images import push_images
from tests.common.registry import Registry
from tests.common.world import World

SECRET = "benchmark-secret-key-0123456789abcdef"
ORG = "bench"


def replicate(reg: Registry, seed: str, namespace: str, count: int) -> None:
    """``count`` copies of the pushed repository ``seed`` as ``namespace/rNNNN``, hard-linked in the storage."""
    base = reg.data_dir / "docker/registry/v2/repositories"
    (base / namespace).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        subprocess.run(["cp", "-al", str(base / seed), str(base / namespace / f"r{i:04d}")], check=True)


class Instance:
    """A quaymirror database with the organization, its robot and an org:admin token, and an app to drive it."""

    def __init__(self, workdir: Path, url: str, storage: str, **overrides: int) -> None:
        instance = workdir / f"instance-{time.time_ns()}"
        instance.mkdir(parents=True)
        dbmod.upgrade(url)
        self.settings = Settings(instance_path=instance, database_url=url, secret_key=SECRET, storage=storage,
                                 storage_tls_verify=False, ssrf_allowed_hosts=("127.0.0.1/32",), retry_seconds=0,
                                 worker_poll_seconds=3600, **overrides)
        self.database = dbmod.Database(url)
        world = World(self.database, SECRET)
        world.user("admin")
        world.org(ORG, owner="admin")
        world.robot(f"{ORG}+mirrorbot")
        self.headers = {"Authorization": f"Bearer {world.token('T', 'admin', 'org:admin')}"}
        self.client = create_app(self.settings, self.database).test_client()

    def configure(self, upstream: Registry, namespace: str) -> None:
        body = {"external_registry_type": "registry", "external_registry_url": upstream.url,
                "external_namespace": namespace, "robot_username": f"{ORG}+mirrorbot", "visibility": "private",
                "sync_interval": 86400, "sync_start_date": "2025-01-01T00:00:00Z",
                "external_registry_config": {"verify_tls": False, "page_size": 100}}
        response = self.client.post(f"/api/v1/organization/{ORG}/mirror", json=body, headers=self.headers)
        if response.status_code != 201:
            raise RuntimeError(f"configuration refused: {response.get_data(as_text=True)}")

    def count(self, wanted: OrgMirrorRepoStatus) -> int:
        with self.database.transaction() as session:
            return session.scalar(select(func.count()).select_from(OrgMirrorRepository)
                                  .where(OrgMirrorRepository.sync_status == wanted)) or 0

    def close(self) -> None:
        self.database.dispose()


def pg_available() -> bool:
    try:
        with fresh_postgres("qm_bench_probe"):
            return True
    except BaseException:  # noqa: BLE001 - unreachable (pytest's skip, outside pytest, is a BaseException)
        return False


@contextlib.contextmanager
def database_url(backend: str, workdir: Path) -> Iterator[str]:
    """A new, empty database of the backend."""
    if backend == "postgresql":
        with fresh_postgres("qm_bench_org") as url:
            yield url
    else:
        yield f"sqlite:///{workdir / f'discovery-{time.time_ns()}.db'}"


def discovery(workdir: Path, upstream: Registry, url: str, repos: int) -> float:
    """One discovery of ``repos`` repositories on a fresh database: claim to release, in seconds."""
    instance = Instance(workdir, url, f"oci:{workdir / 'unused-storage'}")
    try:
        instance.configure(upstream, "many")
        with instance.database.transaction() as session:
            [due] = status.due(session, utcnow(), 10)
        t0 = time.monotonic()
        found = org_worker.discover(instance.database, instance.settings, due)
        elapsed = time.monotonic() - t0
        queued = instance.count(OrgMirrorRepoStatus.SYNC_NOW)
        if found is None or found.new != repos or queued != repos:
            raise RuntimeError(f"discovery found {found}, {queued} queued; expected {repos}")
        return elapsed
    finally:
        instance.close()


def skopeo_sync(workdir: Path, upstream: Registry, dest: Registry, names: list[str]) -> float:
    yaml = workdir / f"sync-{time.time_ns()}.yaml"
    lines = [f"{upstream.host}:", "  tls-verify: false", "  images:"]
    lines += [f"    few/{name}: ['1.0']" for name in names]
    yaml.write_text("\n".join(lines) + "\n")
    t0 = time.monotonic()
    subprocess.run(["skopeo", "sync", "--src", "yaml", "--dest", "docker", "--all", "--preserve-digests",
                    "--dest-tls-verify=false", str(yaml), f"{dest.host}/synced"],
                   check=True, capture_output=True, timeout=600)
    return time.monotonic() - t0


def quaymirror_sync(workdir: Path, upstream: Registry, dest: Registry, count: int, concurrency: int | None) -> float:
    """A worker's start to the last repository's SUCCESS (its discovery included), in seconds."""
    url = f"sqlite:///{workdir / f'sync-{time.time_ns()}.db'}"
    overrides = {"worker_concurrency": concurrency} if concurrency else {}
    instance = Instance(workdir, url, f"docker://{dest.host}", **overrides)
    try:
        instance.configure(upstream, "few")
        t0 = time.monotonic()
        worker = Worker(instance.settings, instance.database).start()
        try:
            deadline = t0 + 600
            while instance.count(OrgMirrorRepoStatus.SUCCESS) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError("the repositories were not synced within 600 s")
                if instance.count(OrgMirrorRepoStatus.FAIL):
                    raise RuntimeError("a repository's sync failed")
                time.sleep(0.02)
            return time.monotonic() - t0
        finally:
            worker.shutdown(timeout=30)
    finally:
        instance.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--sync-repos", type=int, default=50)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--worker-concurrency", type=int, default=None,
                        help="QUAYMIRROR_WORKER_CONCURRENCY of the one worker (default: the setting's default)")
    args = parser.parse_args()
    backends = ["sqlite", *(["postgresql"] if pg_available() else [])]
    results: dict[str, list[float]] = {f"discovery ({name})": [] for name in backends}
    results.update({"skopeo sync": [], "quaymirror": []})
    with tempfile.TemporaryDirectory(prefix="qm-org-mirror-") as tmp:
        workdir = Path(tmp)
        with registry(workdir / "upstream") as upstream:
            push_images(upstream, "seed/one", ["1.0"], workdir=workdir / "seed", multiarch_every=100)
            replicate(upstream, "seed/one", "many", args.repos)
            names = [f"r{i:02d}" for i in range(args.sync_repos)]
            for name in names:
                push_images(upstream, f"few/{name}", ["1.0"], seed=name, workdir=workdir / "img" / name,
                            multiarch_every=100)
            for trial in range(args.trials):
                for name in backends:
                    with database_url(name, workdir) as url:
                        results[f"discovery ({name})"].append(discovery(workdir, upstream, url, args.repos))
                # The two syncs alternate which goes first, each into an empty registry.
                order = ["skopeo sync", "quaymirror"] if trial % 2 == 0 else ["quaymirror", "skopeo sync"]
                for method in order:
                    settle()
                    with registry(workdir / f"dest-{trial}-{method.replace(' ', '-')}") as dest:
                        if method == "skopeo sync":
                            results[method].append(skopeo_sync(workdir, upstream, dest, names))
                        else:
                            results[method].append(quaymirror_sync(workdir, upstream, dest, len(names),
                                                                   args.worker_concurrency))
                    shutil.rmtree(workdir / f"dest-{trial}-{method.replace(' ', '-')}", ignore_errors=True)
                print(f"trial {trial + 1}/{args.trials}: " + ", ".join(
                    f"{method} {values[-1]:.3f}s" for method, values in results.items()), flush=True)
    base = median(results["skopeo sync"])
    rows = [[method, f"{median(values):.3f}", f"{median(values) / base:.2f}" if "discovery" not in method else ""]
            for method, values in results.items()]
    print(table([["method", "median s", "x skopeo sync"], *rows]))
    print(f"goals: discovery of {args.repos} <= 2 s; quaymirror <= 0.85 x skopeo sync of {args.sync_repos}")


if __name__ == "__main__":
    main()
