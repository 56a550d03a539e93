"""Worker fixtures (a plugin of the root conftest): mirror rows, worker settings, workers and skopeo cleanup.

Every worker started here is shut down at teardown, and every skopeo process
whose command line mentions a registry or proxy of the test is killed, even
when the test failed.
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from quaymirror.db import Database
from quaymirror.mirror.worker import claims
from quaymirror.mirror.worker.runner import Worker
from quaymirror.settings import Settings
from tests.common.database import TEST_SECRET, truncate_all
from tests.common.mirrors import Mirrors, kill_skopeo


@pytest.fixture
def counting_skopeo(tmp_path) -> Iterator[tuple[Path, Path]]:
    """A skopeo wrapper that appends each call to a log file, as ``GOMAXPROCS=.. GOGC=.. | argv``: (wrapper, log)."""
    log = tmp_path / "skopeo-calls.log"
    wrapper = tmp_path / "skopeo-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "GOMAXPROCS=$GOMAXPROCS GOGC=$GOGC | $*" >> {log}\n'
                       f'exec {shutil.which("skopeo")} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    yield wrapper, log


def skopeo_calls(log: Path) -> list[tuple[str, list[str]]]:
    """(environment, argv after ``--command-timeout N``) of each call the wrapper logged."""
    if not log.exists():
        return []
    calls = []
    for line in log.read_text().splitlines():
        env, _, argv = line.partition(" | ")
        calls.append((env, argv.split("--command-timeout")[1].split()[1:]))
    return calls


def skopeo_commands(log: Path) -> list[str]:
    """The skopeo command (copy, inspect, ...) of each logged call."""
    return [argv[0] for _, argv in skopeo_calls(log)]


@pytest.fixture
def due_reads(monkeypatch) -> list[int]:
    """Counts the workers' reads of the due mirrors (each pass makes at least one): one entry per read."""
    reads: list[int] = []
    real = claims.due

    def counting(session, now, limit):
        reads.append(limit)
        return real(session, now, limit)

    monkeypatch.setattr(claims, "due", counting)
    return reads


@pytest.fixture
def mirrors(database) -> Mirrors:
    return Mirrors(database, TEST_SECRET)


@pytest.fixture
def wsettings(settings: Settings) -> Settings:
    """Settings for a worker against loopback registries (allowed by the SSRF rules only here)."""
    return settings.with_overrides(ssrf_allowed_hosts=("127.0.0.1/32",), worker_poll_seconds=0.2,
                                   lease_seconds=30, worker_concurrency=2, tag_concurrency=4, retry_seconds=0)


@pytest.fixture
def pg_settings(request, tmp_path) -> Settings:
    """Worker settings on PostgreSQL only, for what only PostgreSQL does (LISTEN, concurrent workers)."""
    url = request.getfixturevalue("postgres_url")
    truncate_all(url)
    instance = tmp_path / "pg-instance"
    instance.mkdir()
    return Settings(instance_path=instance, database_url=url, secret_key=TEST_SECRET,
                    storage=f"oci:{instance / 'storage'}", ssrf_allowed_hosts=("127.0.0.1/32",),
                    worker_poll_seconds=0.2, lease_seconds=30, retry_seconds=0)


@pytest.fixture
def pg_database(pg_settings) -> Iterator[Database]:
    database = Database(pg_settings.database_url)
    yield database
    database.dispose()


@pytest.fixture
def markers() -> Iterator[list[str]]:
    """Strings (registry host:port) whose skopeo processes are killed at teardown."""
    found: list[str] = []
    yield found
    for marker in found:
        kill_skopeo(marker)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.shutdown(timeout=10)


@pytest.fixture
def make_worker(wsettings, database, workers):
    """``make_worker(poll=False, **setting_overrides)``: a started in-process worker, shut down at teardown."""

    def make(*, poll: bool = False, listen: bool = False, subscribe: bool = False, **overrides) -> Worker:
        worker = Worker(wsettings.with_overrides(**overrides), database, listen=listen, subscribe=subscribe)
        workers.append(worker)
        return worker.start(poll=poll)

    return make


def sync_once(worker: Worker, timeout: float = 60) -> int:
    """One pass of ``worker`` and wait until the mirrors it claimed have finished."""
    claimed = worker.run_pass()
    assert worker.wait_idle(timeout), f"runs still busy after {timeout}s"
    return claimed
