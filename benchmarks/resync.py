"""No-change re-sync of 20 tags: quaymirror against skopeo and the HEAD floor, in the same run.

Same setup as benchmarks.first_sync (source and destination docker-registry on
loopback, 10 three-platform indexes + 10 single images). The destination is
filled once per method, then each trial re-syncs with nothing changed upstream:

* ``copy loop``: one ``skopeo copy --all --preserve-digests`` per tag, sequential (Quay's worker);
* ``skopeo sync``: ``skopeo sync --all --preserve-digests``;
* ``HEAD floor``: one manifest HEAD per tag on each side, from Python, one kept-alive connection per side;
* ``quaymirror``: sync-now -> SUCCESS through a real Worker (embedded SQLite), docker:// destination.

    .venv/bin/python -m benchmarks.resync [--trials 5] [--tag-concurrency N]

Goals: quaymirror <= 0.5 x skopeo sync and <= 2 x the HEAD floor.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import median, table
from benchmarks.first_sync import copy_loop, skopeo_sync
from benchmarks.sync_setup import REPO, TAGS, Quaymirror, ratio_row, registry, source
from quaymirror.mirror.worker.registry_client import RegistryClient


def head_floor(src_host: str, dest_host: str, dest_repo: str) -> float:
    t0 = time.monotonic()
    src = RegistryClient(src_host, tls_verify=False, trust_host=True)
    dest = RegistryClient(dest_host, tls_verify=False, trust_host=True)
    src._scheme = dest._scheme = "http"  # the floor: no https probe
    for tag in TAGS:
        assert src.manifest_digest(REPO, tag) == dest.manifest_digest(dest_repo, tag)
    elapsed = time.monotonic() - t0
    src.close()
    dest.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tag-concurrency", type=int, default=None)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"copy loop": [], "skopeo sync": [], "HEAD floor": [], "quaymirror": []}
    with tempfile.TemporaryDirectory(prefix="qm-resync-") as tmp:
        work = Path(tmp)
        with source(work) as src, registry(work / "dest") as dest:
            copy_loop(src, dest)
            skopeo_sync(src, dest)
            qm = Quaymirror(work, src, dest, args.tag_concurrency)
            try:
                qm.sync()  # the first sync fills org/repo
                for trial in range(args.trials):
                    results["copy loop"].append(copy_loop(src, dest))
                    results["skopeo sync"].append(skopeo_sync(src, dest))
                    results["HEAD floor"].append(head_floor(src.host, dest.host, "org/repo"))
                    results["quaymirror"].append(qm.sync())
                    print(f"trial {trial + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in results.items()),
                          flush=True)
            finally:
                qm.close()
    med = {k: median(v) for k, v in results.items()}
    sync, floor, ours = med["skopeo sync"], med["HEAD floor"], med["quaymirror"]
    print()
    print(f"no-change re-sync of {len(TAGS)} tags (10 three-platform indexes + 10 single), {args.trials} trials, "
          "medians")
    print(table([["method", "median s", "x skopeo sync", "x HEAD floor"]]
                + [ratio_row(k, v, sync) + [f"{v / floor:.2f}"] for k, v in med.items()]))
    ok = ours <= 0.5 * sync and ours <= 2 * floor
    print(f"goal: quaymirror <= 0.5 x skopeo sync ({ours / sync:.2f}) and <= 2 x HEAD floor ({ours / floor:.2f}): "
          f"{'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
