"""GET /mirror through the production server under load, against a trivial Flask endpoint.

Both run on gunicorn with the same configuration (the production server's, 2 worker processes) and
are loaded by wrk with 32 keep-alive connections for the same duration, on SQLite and on
PostgreSQL, in interleaved rounds. Prints the medians of requests/s, p50 and p99 latency, errors,
and the ratio to the baseline. ``postgresql-uncached`` is PostgreSQL with the read cache off
(QUAYMIRROR_READ_CACHE=off): what every GET costs while writes keep changing the database.

    .venv/bin/python -m benchmarks.api [--seconds 20] [--rounds 3] [--connections 32]
                                       [--backends sqlite,postgresql,postgresql-uncached]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import (
    ROOT,
    bench_account,
    create_bench_mirror,
    database,
    median,
    process,
    table,
    wait_http,
)
from tests.common.ports import free_port

API_WORKERS = 2  # the "gunicorn, 2 workers"; both sides run quaymirror.server.gunicorn_options


def wrk(url: str, seconds: int, connections: int, token: str | None) -> dict[str, float]:
    args = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "--timeout", "5s", url]
    if token:
        args[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"), "errors": errors}


@contextlib.contextmanager
def trivial_server(workdir: Path) -> Iterator[tuple[str, str | None]]:
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.trivial_app", str(port), str(API_WORKERS)]
    with process(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, log=workdir / "trivial.log"):
        wait_http(f"http://127.0.0.1:{port}/ping")
        yield f"http://127.0.0.1:{port}/ping", None


@contextlib.contextmanager
def mirror_server(backend: str, workdir: Path) -> Iterator[tuple[str, str | None]]:
    """A production API server on ``backend`` with one mirror configured: (GET /mirror URL, token)."""
    instance = workdir / backend
    instance.mkdir()
    kind, _, variant = backend.partition("-")
    with database(kind, instance) as url:
        env = {**os.environ, "QUAYMIRROR_INSTANCE_PATH": str(instance), "QUAYMIRROR_DATABASE_URL": url,
               "QUAYMIRROR_API_WORKERS": str(API_WORKERS), "QUAYMIRROR_SSRF_ALLOWED_HOSTS": "127.0.0.1",
               "QUAYMIRROR_READ_CACHE": "off" if variant == "uncached" else "on"}
        token = bench_account(env)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "quaymirror.cli", "serve", "--port", str(port), "--no-worker"]
        with process(cmd, env=env, log=workdir / f"api-{backend}.log"):
            wait_http(f"{base}/healthz")
            create_bench_mirror(base, token, external_reference="127.0.0.1:5000/upstream/app",
                                root_rule={"rule_kind": "tag_glob_csv", "rule_value": ["v*"]}, sync_interval=86400,
                                sync_start_date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), is_enabled=False)
            yield f"{base}/api/v1/repository/bench/app/mirror", token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql,postgresql-uncached")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        # Every server is started once and stays up (idle while another is loaded); the rounds
        # interleave them, so a slow spell of the machine hits every side alike.
        targets = {"trivial": stack.enter_context(trivial_server(workdir))}
        for backend in args.backends.split(","):
            targets[backend] = stack.enter_context(mirror_server(backend, workdir))
        results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        ratios: dict[str, list[float]] = {name: [] for name in targets}
        for round_ in range(1, args.rounds + 1):
            for name, (url, token) in targets.items():
                results[name].append(wrk(url, args.seconds, args.connections, token))
            for name in targets:
                ratios[name].append(results[name][-1]["rps"] / results["trivial"][-1]["rps"])
            print(f"round {round_}: " + ", ".join(f"{name} {results[name][-1]['rps']:.0f} req/s "
                                                 f"p99 {results[name][-1]['p99']:.1f} ms" for name in targets),
                  flush=True)
    rows = [["endpoint", "backend", "req/s", "p50 ms", "p99 ms", "errors", "vs trivial"]]
    for name in targets:
        runs = results[name]
        rows.append(["trivial /ping" if name == "trivial" else "GET /mirror", "-" if name == "trivial" else name,
                     f"{median([r['rps'] for r in runs]):.0f}", f"{median([r['p50'] for r in runs]):.2f}",
                     f"{median([r['p99'] for r in runs]):.2f}", str(sum(int(r["errors"]) for r in runs)),
                     f"{median(ratios[name]):.2f}"])
    print(f"medians of {args.rounds} rounds of {args.seconds} s, {args.connections} connections "
          "(vs trivial: the median of each round's ratio)")
    print(table(rows))
    print("goal: GET /mirror >= 0.50 x trivial throughput, p99 <= 50 ms, zero errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
