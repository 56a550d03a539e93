"""First mirror of 20 tags into an empty destination: quaymirror against skopeo, in the same run.

Source and destination are real docker-registry processes on loopback; the
20 tags (10 three-platform OCI indexes, 10 single images) are built offline by
tests.common.images. Every trial gets a fresh, empty destination registry.

* ``copy loop``: one ``skopeo copy --all --preserve-digests`` per tag, one after the other (Quay's worker);
* ``skopeo sync``: ``skopeo sync --all --preserve-digests`` of the repository;
* ``quaymirror``: sync-now -> SUCCESS through a real Worker (embedded SQLite) on the docker:// destination.

    .venv/bin/python -m benchmarks.first_sync [--trials 3] [--tag-concurrency N] [--warmup 1]

Every method first runs ``--warmup`` rounds that are not counted (the skopeo binary and the worker's
code and compiled statements are then in memory, as in a worker that has been running).

Goal: quaymirror <= 0.85 x skopeo sync, and faster than the copy loop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import median, table
from quaymirror import db as dbmod
from quaymirror.mirror import status
from quaymirror.mirror.models import RepoMirrorConfig
from quaymirror.mirror.worker.runner import Worker
from quaymirror.settings import Settings
from tests.common.images import push_images
from tests.common.registry import Registry

TAGS = [f"t{i:02d}" for i in range(20)]  # every second one a 3-platform index
REPO = "ns/repo"
SECRET = "benchmark-secret-key-0123456789abcdef"


@contextlib.contextmanager
def registry(root: Path) -> Iterator[Registry]:
    reg = Registry(root)
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


@contextlib.contextmanager
def source(workdir: Path) -> Iterator[Registry]:
    with registry(workdir / "source") as src:
        push_images(src, REPO, TAGS, workdir=workdir / "img")
        yield src


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", *args], check=True, capture_output=True, timeout=300)


def copy_loop(src: Registry, dest: Registry, repo: str = "loop/repo") -> float:
    t0 = time.monotonic()
    for tag in TAGS:
        skopeo("copy", "--all", "--preserve-digests", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
               f"docker://{src.host}/{REPO}:{tag}", f"docker://{dest.host}/{repo}:{tag}")
    return time.monotonic() - t0


def skopeo_sync(src: Registry, dest: Registry) -> float:
    t0 = time.monotonic()
    skopeo("sync", "--src", "docker", "--dest", "docker", "--all", "--preserve-digests", "--src-tls-verify=false",
           "--dest-tls-verify=false", f"{src.host}/{REPO}", f"{dest.host}/synced")
    return time.monotonic() - t0


class Quaymirror:
    """An embedded (SQLite) quaymirror with one mirror of the source, and a started Worker (no polling)."""

    def __init__(self, workdir: Path, src: Registry, dest: Registry, tag_concurrency: int | None = None) -> None:
        from tests.common.mirrors import Mirrors

        instance = workdir / f"instance-{dest.port}-{time.time_ns()}"
        instance.mkdir(parents=True)
        url = f"sqlite:///{instance / 'quaymirror.db'}"
        dbmod.upgrade(url)
        overrides = {"tag_concurrency": tag_concurrency} if tag_concurrency else {}
        self.settings = Settings(instance_path=instance, database_url=url, secret_key=SECRET,
                                 storage=f"docker://{dest.host}", storage_tls_verify=False,
                                 ssrf_allowed_hosts=("127.0.0.1/32",), retry_seconds=0, **overrides)
        self.database = dbmod.Database(url)
        self.config_id = Mirrors(self.database, SECRET).create("org/repo", f"{src.host}/{REPO}", ["*"],
                                                               status=status.RepoMirrorStatus.NEVER_RUN)
        self.worker = Worker(self.settings, self.database).start(poll=False)

    def sync(self) -> float:
        """Sync-now -> SUCCESS, in seconds."""
        t0 = time.monotonic()
        with self.database.transaction() as session:
            assert status.request_sync_now(session, session.get(RepoMirrorConfig, self.config_id))
        assert self.worker.run_pass() == 1
        assert self.worker.wait_idle(300), "the sync did not finish within 300 s"
        elapsed = time.monotonic() - t0
        with self.database.transaction() as session:
            final = status.RepoMirrorStatus(session.get(RepoMirrorConfig, self.config_id).sync_status)
        if final != status.RepoMirrorStatus.SUCCESS:
            raise RuntimeError(f"quaymirror sync ended {final.name}")
        return elapsed

    def close(self) -> None:
        self.worker.shutdown(timeout=30)
        self.database.dispose()


METHODS = ["copy loop", "skopeo sync", "quaymirror"]


def settle() -> None:
    """Write back what earlier work left dirty, then let the machine go quiet."""
    os.sync()
    time.sleep(0.5)


def ratio_row(name: str, value: float, base: float | None) -> list[str]:
    return [name, f"{value:.3f}", f"{value / base:.2f}" if base else ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--tag-concurrency", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1,
                        help="rounds run first and not counted: a worker process compiles its statements and "
                             "loads its code once, and runs for days")
    args = parser.parse_args()
    results: dict[str, list[float]] = {method: [] for method in METHODS}
    with tempfile.TemporaryDirectory(prefix="qm-first-sync-") as tmp:
        work = Path(tmp)
        with source(work) as src:
            for trial in range(-args.warmup, args.trials):
                timed: dict[str, float] = {}
                # The order turns with each trial, and each method starts with no dirty page of the one
                # before it left to write back (the registries write many small files).
                for method in METHODS[trial % 3:] + METHODS[:trial % 3]:
                    with registry(work / f"d{trial}-{method.replace(' ', '-')}") as dest:
                        qm = Quaymirror(work, src, dest, args.tag_concurrency) if method == "quaymirror" else None
                        settle()
                        try:
                            timed[method] = (qm.sync() if qm is not None else
                                             copy_loop(src, dest) if method == "copy loop" else skopeo_sync(src, dest))
                        finally:
                            if qm is not None:
                                qm.close()
                line = ", ".join(f"{k} {timed[k]:.3f}s" for k in METHODS)
                if trial < 0:
                    print(f"warm-up (not counted): {line}", flush=True)
                    continue
                for k, v in timed.items():
                    results[k].append(v)
                print(f"trial {trial + 1}: {line}", flush=True)
    med = {k: median(v) for k, v in results.items()}
    sync = med["skopeo sync"]
    print()
    print(f"first mirror of {len(TAGS)} tags (10 three-platform indexes + 10 single), {args.trials} trials, medians")
    print(table([["method", "median s", "x skopeo sync"]] + [ratio_row(k, v, sync) for k, v in med.items()]))
    ok = med["quaymirror"] <= 0.85 * sync and med["quaymirror"] < med["copy loop"]
    print(f"goal: quaymirror <= 0.85 x skopeo sync and < copy loop: "
          f"{med['quaymirror'] / sync:.2f} x, {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
