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

import tempfile
from pathlib import Path

from benchmarks.common import median, table
from benchmarks.sync_setup import TAGS, Quaymirror, arguments, run_trials, settle, source

PLATFORMS = ("amd64", "arm64", "linux/arm/v7")
SINGLE = {tag: PLATFORMS[i % 3] for i, tag in enumerate(TAGS[1::2])}
FILTER = ["arm64"]
METHODS = {"no filter": [], "arm64 only": FILTER}


def main() -> None:
    args = arguments(__doc__, trials=3)
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="qm-arch-filter-") as tmp:
        work = Path(tmp)
        with source(work, index_platforms=PLATFORMS, single_platforms=SINGLE) as src:
            def run(_trial: int, name: str) -> float:
                """One first sync into a fresh layout; the bytes are what its history row counts."""
                qm = Quaymirror(work, src, tag_concurrency=args.tag_concurrency, feature_sparse_index=True)
                try:
                    settle()
                    seconds = qm.sync(METHODS[name])
                    sizes[name] = qm.last_run().bytes or 0
                    return seconds
                finally:
                    qm.close()

            times = run_trials(list(METHODS), args.trials, args.warmup, run)
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
