"""Shared plumbing for the benchmarks: servers, databases, HTTP, statistics."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("QUAYMIRROR_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def http(method: str, url: str, token: str | None = None, body: object | None = None,
         timeout: float = 30) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def quaymirror_cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "quaymirror.cli", *args], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"quaymirror {' '.join(args)} failed: {result.stderr.strip()[-1000:]}")
    return result.stdout.strip()


def bench_account(env: dict[str, str]) -> str:
    """Migrate, then user ``bench``, repository ``bench/app`` (MIRROR) and robot ``bench+mirror``;
    return a ``repo:admin`` token of ``bench``."""
    quaymirror_cli(env, "db", "upgrade")
    quaymirror_cli(env, "user", "create", "bench")
    quaymirror_cli(env, "repo", "create", "bench/app", "--state", "MIRROR")
    quaymirror_cli(env, "robot", "create", "bench+mirror")
    return quaymirror_cli(env, "token", "create", "--user", "bench", "--scope", "repo:admin")


def create_bench_mirror(base: str, token: str, **fields: object) -> None:
    """POST the mirror of ``bench/app`` (robot ``bench+mirror``, 300 s skopeo timeout, ``fields``)."""
    status, body = http("POST", f"{base}/api/v1/repository/bench/app/mirror", token, {
        "robot_username": "bench+mirror", "skopeo_timeout_interval": 300, **fields})
    if status != 201:
        raise RuntimeError(f"creating the mirror failed: {status} {body[:300]!r}")


@contextlib.contextmanager
def database(backend: str, instance: Path) -> Iterator[str]:
    """A fresh database URL for ``backend`` ("sqlite" or "postgresql"), dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{instance / 'quaymirror.db'}"
        return
    from sqlalchemy import create_engine, text

    name = f"quaymirror_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                         {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@contextlib.contextmanager
def process(args: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[subprocess.Popen]:
    """A child process in its own group, stopped (SIGTERM, then SIGKILL) on exit."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(list(args), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if log:
            out.close()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
