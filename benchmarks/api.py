"""GET /mirror through the production server under load, against a trivial Flask endpoint.

Both run on gunicorn with the same configuration (2 worker processes, gthread, 8 threads) and
are loaded by wrk with 32 keep-alive connections for the same duration, on SQLite and on
PostgreSQL. Prints requests/s, p50 and p99 latency, errors, and the ratio to the baseline.

    .venv/bin/python -m benchmarks.api [--seconds 20] [--connections 32] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import ROOT, database, free_port, http, process, quaymirror_cli, table, wait_http

GUNICORN = ["-w", "2", "-k", "gthread", "--threads", "8", "--keep-alive", "5", "--log-level", "warning"]


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


def trivial(seconds: int, connections: int, workdir: Path) -> dict[str, float]:
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", *GUNICORN, "-b", f"127.0.0.1:{port}", "benchmarks.trivial_app:app"]
    with process(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, log=workdir / "trivial.log"):
        wait_http(f"http://127.0.0.1:{port}/ping")
        return wrk(f"http://127.0.0.1:{port}/ping", seconds, connections, None)


def mirror_get(backend: str, seconds: int, connections: int, workdir: Path) -> dict[str, float]:
    instance = workdir / backend
    instance.mkdir()
    with database(backend, instance) as url:
        env = {**os.environ, "QUAYMIRROR_INSTANCE_PATH": str(instance), "QUAYMIRROR_DATABASE_URL": url,
               "QUAYMIRROR_API_WORKERS": "2", "QUAYMIRROR_SSRF_ALLOWED_HOSTS": "127.0.0.1"}
        quaymirror_cli(env, "db", "upgrade")
        quaymirror_cli(env, "user", "create", "bench")
        quaymirror_cli(env, "repo", "create", "bench/app", "--state", "MIRROR")
        quaymirror_cli(env, "robot", "create", "bench+mirror")
        token = quaymirror_cli(env, "token", "create", "--user", "bench", "--scope", "repo:admin")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "quaymirror.cli", "serve", "--port", str(port), "--no-worker"]
        with process(cmd, env=env, log=workdir / f"api-{backend}.log"):
            wait_http(f"{base}/healthz")
            status, body = http("POST", f"{base}/api/v1/repository/bench/app/mirror", token, {
                "external_reference": "127.0.0.1:5000/upstream/app", "robot_username": "bench+mirror",
                "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["v*"]}, "sync_interval": 86400,
                "sync_start_date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "skopeo_timeout_interval": 300, "is_enabled": False})
            if status != 201:
                raise RuntimeError(f"creating the mirror failed: {status} {body[:300]!r}")
            return wrk(f"{base}/api/v1/repository/bench/app/mirror", seconds, connections, token)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    rows = [["endpoint", "backend", "req/s", "p50 ms", "p99 ms", "errors", "vs trivial"]]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base = trivial(args.seconds, args.connections, workdir)
        rows.append(["trivial /ping", "-", f"{base['rps']:.0f}", f"{base['p50']:.2f}", f"{base['p99']:.2f}",
                     str(base["errors"]), "1.00"])
        for backend in args.backends.split(","):
            result = mirror_get(backend, args.seconds, args.connections, workdir)
            rows.append(["GET /mirror", backend, f"{result['rps']:.0f}", f"{result['p50']:.2f}",
                         f"{result['p99']:.2f}", str(result["errors"]), f"{result['rps'] / base['rps']:.2f}"])
    print(table(rows))
    print("goal: GET /mirror >= 0.50 x trivial throughput, p99 <= 50 ms, zero errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
