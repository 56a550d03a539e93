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

import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import median, table
from benchmarks.sync_setup import (
    REPO,
    TAGS,
    Quaymirror,
    arguments,
    ratio_row,
    registry,
    run_trials,
    settle,
    source,
)
from tests.common.registry import Registry


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


METHODS = ["copy loop", "skopeo sync", "quaymirror"]


def main() -> None:
    args = arguments(__doc__, trials=3)
    with tempfile.TemporaryDirectory(prefix="qm-first-sync-") as tmp:
        work = Path(tmp)
        with source(work) as src:
            def run(trial: int, method: str) -> float:
                # Each method starts with a fresh, empty destination and with no dirty page of the one
                # before it left to write back (the registries write many small files).
                with registry(work / f"d{trial}-{method.replace(' ', '-')}") as dest:
                    if method != "quaymirror":
                        settle()
                        return copy_loop(src, dest) if method == "copy loop" else skopeo_sync(src, dest)
                    qm = Quaymirror(work, src, f"docker://{dest.host}", args.tag_concurrency,
                                    storage_tls_verify=False)
                    try:
                        settle()
                        return qm.sync()
                    finally:
                        qm.close()

            results = run_trials(METHODS, args.trials, args.warmup, run)
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
