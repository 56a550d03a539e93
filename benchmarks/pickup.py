"""Sync-now -> SYNCING latency through the real API and worker processes.

(a) embedded: ``quaymirror serve`` on SQLite (the worker runs inside the server);
(b) PostgreSQL: ``quaymirror serve --no-worker`` plus a separate ``quaymirror worker`` process.

Each trial POSTs ``/sync-now`` and polls ``GET .../mirror`` every 5 ms until the
status leaves SYNC_NOW (SYNCING, or already SUCCESS: then the figure is an upper
bound), then waits for the sync (one small tag from a loopback registry) to end.
Quay's worker only looks at the table every ``REPO_MIRROR_INTERVAL`` (30 s).

    .venv/bin/python -m benchmarks.pickup [--trials 20] [--backends sqlite,postgresql]

Goal: p50 <= 0.5 s, p95 <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.common import (
    bench_account,
    create_bench_mirror,
    database,
    http,
    median,
    percentile,
    process,
    table,
    wait_http,
)
from benchmarks.sync_setup import registry
from tests.common.images import push_images
from tests.common.ports import free_port

POLL = 0.005


def mirror_status(base: str, token: str) -> str:
    status, body = http("GET", f"{base}/api/v1/repository/bench/app/mirror", token)
    if status != 200:
        raise RuntimeError(f"GET mirror answered {status}")
    return json.loads(body)["sync_status"]


def wait_status(base: str, token: str, done: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = mirror_status(base, token)
        if current in done:
            return current
        time.sleep(0.05)
    raise RuntimeError(f"the mirror did not reach {done} within {timeout}s")


def trials(backend: str, upstream: str, count: int, workdir: Path) -> list[float]:
    instance = workdir / backend
    instance.mkdir()
    with database(backend, instance) as url, ExitStack() as stack:
        env = {**os.environ, "QUAYMIRROR_INSTANCE_PATH": str(instance), "QUAYMIRROR_DATABASE_URL": url,
               "QUAYMIRROR_API_WORKERS": "2", "QUAYMIRROR_SSRF_ALLOWED_HOSTS": "127.0.0.1",
               "QUAYMIRROR_STORAGE": f"oci:{instance / 'storage'}", "QUAYMIRROR_METRICS_PORT": "0",
               "QUAYMIRROR_RETRY_SECONDS": "0"}
        token = bench_account(env)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "quaymirror.cli", "serve", "--port", str(port)]
        if backend != "sqlite":
            serve.append("--no-worker")
            stack.enter_context(process([sys.executable, "-m", "quaymirror.cli", "worker"], env=env,
                                        log=workdir / f"worker-{backend}.log"))
        stack.enter_context(process(serve, env=env, log=workdir / f"serve-{backend}.log"))
        wait_http(f"{base}/healthz")
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        create_bench_mirror(base, token, external_reference=upstream,
                            root_rule={"rule_kind": "tag_glob_csv", "rule_value": ["*"]}, sync_interval=86400,
                            sync_start_date=tomorrow, is_enabled=True, external_registry_config={"verify_tls": False})
        time.sleep(1)  # let the worker finish starting (its first pass)
        latencies = []
        for _ in range(count):
            t0 = time.monotonic()
            status, body = http("POST", f"{base}/api/v1/repository/bench/app/mirror/sync-now", token)
            if status not in (200, 204):
                raise RuntimeError(f"sync-now answered {status} {body[:200]!r}")
            deadline = t0 + 30
            while mirror_status(base, token) == "SYNC_NOW":
                if time.monotonic() > deadline:
                    raise RuntimeError("no pick-up within 30 s")
                time.sleep(POLL)
            latencies.append(time.monotonic() - t0)
            wait_status(base, token, {"SUCCESS", "FAIL", "CANCEL"})
        return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    rows = [["setup", "trials", "p50 s", "p95 s", "max s"]]
    ok = True
    with tempfile.TemporaryDirectory(prefix="qm-pickup-") as tmp:
        work = Path(tmp)
        with registry(work / "upstream") as up:
            push_images(up, "up/app", ["v1"], multiarch_every=0, workdir=work / "img")
            for backend in args.backends.split(","):
                values = trials(backend, f"{up.host}/up/app", args.trials, work)
                p50, p95 = median(values), percentile(values, 0.95)
                ok = ok and p50 <= 0.5 and p95 <= 1.0
                label = "embedded serve (SQLite)" if backend == "sqlite" else f"serve --no-worker + worker ({backend})"
                rows.append([label, str(len(values)), f"{p50:.3f}", f"{p95:.3f}", f"{max(values):.3f}"])
                print(rows[-1], flush=True)
    print(table(rows))
    print(f"goal: p50 <= 0.5 s and p95 <= 1 s: {'MET' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
