"""What the sync benchmarks share (first_sync, resync, arch_filter, pickup): the source registry and its 20
tags, an embedded quaymirror with one mirror of them and a started Worker, and trials whose order turns.

The source is a real docker-registry on loopback; the 20 tags (10 OCI indexes, 10 single images) are built
offline by tests.common.images.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from quaymirror import db as dbmod
from quaymirror.mirror import status
from quaymirror.mirror.models import MirrorSyncRun, RepoMirrorConfig
from quaymirror.mirror.worker.runner import Worker
from quaymirror.settings import Settings
from tests.common.images import push_images
from tests.common.registry import Registry

TAGS = [f"t{i:02d}" for i in range(20)]  # every second one an index
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
def source(workdir: Path, **images: Any) -> Iterator[Registry]:
    """The source registry with ``TAGS`` in ``REPO`` (``images``: push_images' platform choices)."""
    with registry(workdir / "source") as src:
        push_images(src, REPO, TAGS, workdir=workdir / "img", **images)
        yield src


def settle() -> None:
    """Write back what earlier work left dirty, then let the machine go quiet."""
    os.sync()
    time.sleep(0.5)


class Quaymirror:
    """An embedded (SQLite) quaymirror in a fresh instance folder, with one mirror of the source's ``REPO``
    (every tag) and a started Worker (no polling). ``storage``: where it mirrors to (None: an OCI layout in
    its instance folder); ``overrides``: other settings."""

    def __init__(self, workdir: Path, src: Registry, storage: str | None = None, tag_concurrency: int | None = None,
                 **overrides: Any) -> None:
        from tests.common.mirrors import Mirrors

        instance = workdir / f"instance-{time.time_ns()}"
        instance.mkdir(parents=True)
        url = f"sqlite:///{instance / 'quaymirror.db'}"
        dbmod.upgrade(url)
        if tag_concurrency:
            overrides["tag_concurrency"] = tag_concurrency
        self.settings = Settings(instance_path=instance, database_url=url, secret_key=SECRET,
                                 storage=storage or f"oci:{instance / 'storage'}",
                                 ssrf_allowed_hosts=("127.0.0.1/32",), retry_seconds=0, **overrides)
        self.database = dbmod.Database(url)
        self.config_id = Mirrors(self.database, SECRET).create("org/repo", f"{src.host}/{REPO}", ["*"],
                                                               status=status.RepoMirrorStatus.NEVER_RUN)
        self.worker = Worker(self.settings, self.database).start(poll=False)

    def sync(self, architectures: list[str] | None = None) -> float:
        """Sync-now -> SUCCESS, in seconds (``architectures``: the mirror's filter set first)."""
        t0 = time.monotonic()
        with self.database.transaction() as session:
            config = session.get(RepoMirrorConfig, self.config_id)
            if architectures is not None:
                config.architecture_filter = architectures
            assert status.request_sync_now(session, config)
        assert self.worker.run_pass() == 1
        assert self.worker.wait_idle(300), "the sync did not finish within 300 s"
        elapsed = time.monotonic() - t0
        run = self.last_run()
        if run.status != "SUCCESS":
            raise RuntimeError(f"quaymirror sync ended {run.status}: {run.message}")
        return elapsed

    def last_run(self) -> MirrorSyncRun:
        """The history row of the latest sync."""
        with self.database.transaction() as session:
            return (session.query(MirrorSyncRun).filter_by(config_id=self.config_id)
                    .order_by(MirrorSyncRun.id.desc()).first())

    def close(self) -> None:
        self.worker.shutdown(timeout=30)
        self.database.dispose()


def arguments(doc: str, trials: int) -> argparse.Namespace:
    """--trials, --tag-concurrency and --warmup of a benchmark whose docstring is ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--trials", type=int, default=trials)
    parser.add_argument("--tag-concurrency", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1,
                        help="rounds run first and not counted: a worker process compiles its statements and "
                             "loads its code once, and runs for days")
    return parser.parse_args()


def run_trials(methods: list[str], trials: int, warmup: int, run: Callable[[int, str], float]) -> dict[str, list[float]]:
    """``run(trial, method)`` for every method in each trial, the order turning with each trial (no method
    always runs first on a machine the one before left busy); the ``warmup`` rounds first, printed and not
    counted. The seconds of each method, one per counted trial."""
    results: dict[str, list[float]] = {method: [] for method in methods}
    for trial in range(-warmup, trials):
        shift = trial % len(methods)
        timed = {method: run(trial, method) for method in methods[shift:] + methods[:shift]}
        line = ", ".join(f"{method} {timed[method]:.3f}s" for method in methods)
        if trial < 0:
            print(f"warm-up (not counted): {line}", flush=True)
            continue
        for method, seconds in timed.items():
            results[method].append(seconds)
        print(f"trial {trial + 1}: {line}", flush=True)
    return results


def ratio_row(name: str, value: float, base: float | None) -> list[str]:
    return [name, f"{value:.3f}", f"{value / base:.2f}" if base else ""]
