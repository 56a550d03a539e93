"""One worker pass over 1k, 10k and 100k mirror configurations with 1 % due.

The configurations are bulk-inserted (repository + rule + config rows). A pass is
``Worker.run_pass`` with the launch of the sync stubbed out: it finds the due
mirrors (the indexed due query, sync-now first) and claims as many as the worker
has free slots (``QUAYMIRROR_WORKER_CONCURRENCY``), opening a history run for each.
``find`` is the pass's due query alone (what scales with the table; a pass that
claims also commits once, which costs the same at any size: an fsync on SQLite,
the WAL flush on PostgreSQL). ``next due`` is the extra query a polling worker
makes to sleep until the next schedule. RSS is the worker process's resident
memory before and after the passes.

    .venv/bin/python -m benchmarks.scale [--sizes 1000,10000,100000] [--backends postgresql,sqlite] [--passes 9]

Goal: <= 50 ms per pass at 100k with 1 % due, growing with the number due, not the total; flat memory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from benchmarks.common import database, median, table
from quaymirror import db as dbmod
from quaymirror.db import utcnow
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorRule, RepoMirrorStatus, new_uuid
from quaymirror.mirror.worker import claims
from quaymirror.mirror.worker.runner import MAX_BATCH, Worker
from quaymirror.repositories.models import Repository, RepositoryState
from quaymirror.settings import Settings

SECRET = "benchmark-secret-key-0123456789abcdef"
CHUNK = 5000


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * 4096 / 2**20


def fill(db: dbmod.Database, total: int) -> None:
    from tests.common.mirrors import Mirrors

    template = Mirrors(db, SECRET).create("scale/template", "quay.io/some/image", ["*"],
                                          status=RepoMirrorStatus.SUCCESS, start=utcnow() + timedelta(days=1))
    with db.transaction() as session:
        row = session.get(RepoMirrorConfig, template)
        namespace_id, robot_id = row.repository.namespace_id, row.internal_robot_id
    now = utcnow()
    due_every = 100  # 1 %
    for start in range(0, total - 1, CHUNK):
        count = min(CHUNK, total - 1 - start)
        with db.transaction() as session:
            repo_ids = session.scalars(insert(Repository).returning(Repository.id, sort_by_parameter_order=True),
                                       [{"namespace_id": namespace_id, "name": f"r{start + i}",
                                         "state": int(RepositoryState.MIRROR)} for i in range(count)]).all()
            rule_ids = session.scalars(insert(RepoMirrorRule).returning(RepoMirrorRule.id,
                                                                        sort_by_parameter_order=True),
                                       [{"repository_id": r, "rule_value_json": '["*"]', "uuid": new_uuid()}
                                        for r in repo_ids]).all()
            session.execute(insert(RepoMirrorConfig), [{
                "repository_id": r, "root_rule_id": rule, "internal_robot_id": robot_id,
                "external_reference": f"quay.io/some/image{start + i}", "sync_interval": 86400,
                "sync_start_date": now - timedelta(minutes=1) if (start + i) % due_every == 0
                else now + timedelta(days=1),
                "sync_status": int(RepoMirrorStatus.SUCCESS), "sync_transaction_id": new_uuid(),
                "external_registry_config_json": '{"verify_tls": true}',
            } for i, (r, rule) in enumerate(zip(repo_ids, rule_ids, strict=True))])


def measure(backend: str, total: int, passes: int, workdir: Path) -> dict[str, float]:
    instance = workdir / f"{backend}-{total}"
    instance.mkdir()
    with database(backend, instance) as url:
        dbmod.upgrade(url)
        db = dbmod.Database(url)
        t0 = time.monotonic()
        fill(db, total)
        filled = time.monotonic() - t0
        settings = Settings(instance_path=instance, database_url=url, secret_key=SECRET, storage=f"oci:{instance}/s")
        worker = Worker(settings, db, listen=False, subscribe=False)
        launched: list = []
        worker._launch = launched.append  # no sync: only find and claim
        worker.run_pass()  # warm the connection pool and the query plans
        rss0 = rss_mib()
        pass_times, find_times, next_times = [], [], []
        limit = min(max(settings.worker_concurrency * 4, 8), MAX_BATCH)  # as Worker.run_pass
        for _ in range(passes):
            t = time.perf_counter()
            worker.run_pass()
            pass_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            with db.transaction() as session:
                claims.due(session, utcnow(), limit)
            find_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            with db.transaction() as session:
                claims.next_due(session, utcnow())
            next_times.append(time.perf_counter() - t)
        rss1 = rss_mib()
        db.dispose()
        return {"fill": filled, "pass": median(pass_times), "max": max(pass_times), "find": median(find_times),
                "next": median(next_times),
                "claimed": len(launched), "rss0": rss0, "rss1": rss1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--passes", type=int, default=9)
    args = parser.parse_args()
    rows = [["backend", "configs", "due", "insert s", "pass ms (median)", "pass ms (max)", "find ms", "next due ms",
             "claimed", "RSS MiB before/after"]]
    ok = True
    with tempfile.TemporaryDirectory(prefix="qm-scale-") as tmp:
        for backend in args.backends.split(","):
            for total in (int(s) for s in args.sizes.split(",")):
                r = measure(backend, total, args.passes, Path(tmp))
                if total >= 100_000:
                    ok = ok and r["pass"] <= 0.050
                rows.append([backend, str(total), str(total // 100), f"{r['fill']:.1f}", f"{r['pass'] * 1000:.1f}",
                             f"{r['max'] * 1000:.1f}", f"{r['find'] * 1000:.1f}", f"{r['next'] * 1000:.1f}",
                             str(r["claimed"]),
                             f"{r['rss0']:.0f}/{r['rss1']:.0f}"])
                print(rows[-1], flush=True)
    print(table(rows))
    print(f"goal: one pass <= 50 ms at 100k configs with 1 % due: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
