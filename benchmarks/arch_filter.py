"""First mirror of 20 tags with the architecture filter ``["arm64"]`` against the same tags without a filter,
in the same run, into the embedded OCI layout.

The source is a real docker-registry on loopback; the 20 tags (10 OCI indexes of linux/amd64, linux/arm64
and linux/arm/v7, and 10 single images of those platforms in turn) are built offline by tests.common.images.
Every trial syncs into a fresh, empty layout through a real Worker (embedded SQLite), once without a filter and
once with ``["arm64"]`` (the order turns with each trial); the bytes are the run's history count.

    .venv/bin/python -m benchmarks.arch_filter [--trials 3] [--tag-concurrency N] [--warmup 1]

Goal: the filtered sync takes at most half the time of the full one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import median, table
from benchmarks.first_sync import SECRET, registry, settle
from quaymirror import db as dbmod
from quaymirror.mirror import status
from quaymirror.mirror.models import MirrorSyncRun, RepoMirrorConfig
from quaymirror.mirror.worker.runner import Worker
from quaymirror.settings import Settings
from tests.common.images import push_images
from tests.common.registry import Registry

TAGS = [f"t{i:02d}" for i in range(20)]  # every second one an index
PLATFORMS = ("amd64", "arm64", "linux/arm/v7")
SINGLE = {tag: PLATFORMS[i % 3] for i, tag in enumerate(TAGS[1::2])}
REPO = "ns/repo"
FILTER = ["arm64"]
METHODS = {"no filter": [], "arm64 only": FILTER}


def sync(workdir: Path, src: Registry, architectures: list[str], tag_concurrency: int | None) -> tuple[float, int]:
    """One first sync into a fresh layout: (seconds from sync-now to SUCCESS, bytes the history counts)."""
    from tests.common.mirrors import Mirrors

    instance = workdir / f"instance-{time.time_ns()}"
    instance.mkdir(parents=True)
    url = f"sqlite:///{instance / 'quaymirror.db'}"
    dbmod.upgrade(url)
    overrides = {"tag_concurrency": tag_concurrency} if tag_concurrency else {}
    settings = Settings(instance_path=instance, database_url=url, secret_key=SECRET,
                        storage=f"oci:{instance / 'storage'}", ssrf_allowed_hosts=("127.0.0.1/32",),
                        retry_seconds=0, feature_sparse_index=True, **overrides)
    database = dbmod.Database(url)
    config_id = Mirrors(database, SECRET).create("org/repo", f"{src.host}/{REPO}", ["*"],
                                                 status=status.RepoMirrorStatus.NEVER_RUN)
    worker = Worker(settings, database).start(poll=False)
    try:
        settle()
        t0 = time.monotonic()
        with database.transaction() as session:
            config = session.get(RepoMirrorConfig, config_id)
            config.architecture_filter = architectures
            assert status.request_sync_now(session, config)
        assert worker.run_pass() == 1
        assert worker.wait_idle(300), "the sync did not finish within 300 s"
        elapsed = time.monotonic() - t0
        with database.transaction() as session:
            run = session.query(MirrorSyncRun).filter_by(config_id=config_id).one()
            if run.status != "SUCCESS":
                raise RuntimeError(f"quaymirror sync ended {run.status}: {run.message}")
            return elapsed, run.bytes or 0
    finally:
        worker.shutdown(timeout=30)
        database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--tag-concurrency", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    sizes: dict[str, int] = {}
    names = list(METHODS)
    with tempfile.TemporaryDirectory(prefix="qm-arch-filter-") as tmp:
        work = Path(tmp)
        with registry(work / "source") as src:
            push_images(src, REPO, TAGS, workdir=work / "img", index_platforms=PLATFORMS, single_platforms=SINGLE)
            for trial in range(-args.warmup, args.trials):
                timed: dict[str, float] = {}
                for name in names[trial % 2:] + names[:trial % 2]:
                    timed[name], sizes[name] = sync(work, src, METHODS[name], args.tag_concurrency)
                line = ", ".join(f"{k} {timed[k]:.3f}s" for k in names)
                if trial < 0:
                    print(f"warm-up (not counted): {line}", flush=True)
                    continue
                for k, v in timed.items():
                    times[k].append(v)
                print(f"trial {trial + 1}: {line}", flush=True)
    med = {k: median(v) for k, v in times.items()}
    full = med["no filter"]
    print()
    print(f"first mirror of {len(TAGS)} tags (10 three-platform indexes + 10 single images) into the OCI layout, "
          f"{args.trials} trials, medians")
    print(table([["filter", "median s", "x no filter", "bytes", "x no filter"]]
                + [[k, f"{v:.3f}", f"{v / full:.2f}", str(sizes[k]), f"{sizes[k] / sizes['no filter']:.2f}"]
                   for k, v in med.items()]))
    ratio = med["arm64 only"] / full
    print(f"goal: the filtered sync <= 0.5 x the full one: {ratio:.2f} x, {'MET' if ratio <= 0.5 else 'NOT MET'}")


if __name__ == "__main__":
    main()
