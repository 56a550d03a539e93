"""Worker processes: crash and reclaim, graceful shutdown, wake-ups, and three workers racing on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from quaymirror import audit
from quaymirror.db import Database
from quaymirror.mirror import events, status
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus
from quaymirror.settings import Settings
from tests.common.database import TEST_SECRET
from tests.common.images import push_images
from tests.common.mirrors import GatedProxy, Mirrors, kill_skopeo, layout_tags, skopeo_processes
from tests.common.ports import wait_for

pytestmark = pytest.mark.integration  # real quaymirror processes

S = RepoMirrorStatus


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUAYMIRROR_")}
    env.update({
        "QUAYMIRROR_INSTANCE_PATH": str(settings.instance_path),
        "QUAYMIRROR_DATABASE_URL": settings.database_url,
        "QUAYMIRROR_SECRET_KEY": settings.secret_key,
        "QUAYMIRROR_STORAGE": str(settings.storage),
        "QUAYMIRROR_SSRF_ALLOWED_HOSTS": ",".join(settings.ssrf_allowed_hosts),
        "QUAYMIRROR_WORKER_POLL_SECONDS": str(settings.worker_poll_seconds),
        "QUAYMIRROR_LEASE_SECONDS": str(settings.lease_seconds),
        "QUAYMIRROR_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "QUAYMIRROR_TAG_CONCURRENCY": str(settings.tag_concurrency),
    })
    return env


@pytest.fixture
def spawn(tmp_path):
    """``spawn(settings, name)``: a ``quaymirror worker`` process; SIGKILLed at teardown if still alive."""
    started: list[tuple[subprocess.Popen, object]] = []

    def start(settings: Settings, name: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed at teardown
        proc = subprocess.Popen([sys.executable, "-m", "quaymirror.cli", "worker"], env=settings_env(settings),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)
        proc.log_path = tmp_path / f"{name}.log"
        started.append((proc, log))
        return proc

    yield start
    for proc, log in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_sigkilled_worker_is_reclaimed_after_its_lease(registry, wsettings, database, mirrors, make_worker,
                                                        spawn, tmp_path, markers):
    digests = push_images(registry, "up/crash", ["a", "b"], workdir=tmp_path / "img")
    with GatedProxy(registry.host) as proxy:
        markers.append(proxy.host)
        proxy.hold()
        config_id = mirrors.create("org/crash", f"{proxy.host}/up/crash", ["*"])
        victim = spawn(wsettings.with_overrides(lease_seconds=2), "victim")
        assert proxy.blob_requested.wait(30), victim.log_path.read_text()
        row = mirrors.config(config_id)
        assert S(row.sync_status) == S.SYNCING and f":{victim.pid}:" in row.lease_owner
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        # A SIGKILLed worker cannot clean up: its skopeo processes are orphans now (they would end at
        # their --command-timeout); remove them, then let the upstream answer again.
        orphans = skopeo_processes(proxy.host)
        assert orphans
        run_dir = Path(next(a for _pid, argv in orphans for a in argv if a.endswith("src-auth.json"))).parent
        assert run_dir.name.startswith(f"quaymirror-run-{victim.pid}-") and run_dir.exists()
        kill_skopeo(proxy.host)
        proxy.release()
        t0 = time.monotonic()
        rescuer = make_worker(poll=True)
        assert not run_dir.exists()  # the dead worker's authfiles are swept at start
        wait_for(lambda: mirrors.runs(config_id)[-1].status == "SUCCESS", 30, what="the reclaimed run")
        elapsed = time.monotonic() - t0
        assert rescuer.wait_idle(10)
        assert skopeo_processes(proxy.host) == []
    runs = mirrors.runs(config_id)
    assert [(r.status, r.reason) for r in runs] == [("INTERRUPTED", "worker_lost"), ("SUCCESS", None)]
    assert (runs[1].worker, runs[1].trigger) == (rescuer.owner, "sync_now")
    row = mirrors.config(config_id)
    assert (S(row.sync_status), row.lease_token, row.lease_owner) == (S.SUCCESS, None, None)
    assert layout_tags(wsettings, "org/crash") == digests
    assert elapsed < 10, elapsed  # the lease is 2 s


def test_sigterm_releases_the_claim_for_another_worker_at_once(registry, backend, wsettings, database, mirrors,
                                                                make_worker, spawn, tmp_path, markers):
    digests = push_images(registry, "up/stop", ["a", "b"], workdir=tmp_path / "img")
    with GatedProxy(registry.host) as proxy:
        markers.append(proxy.host)
        proxy.hold()
        config_id = mirrors.create("org/stop", f"{proxy.host}/up/stop", ["*"])
        victim = spawn(wsettings, "victim")
        assert proxy.blob_requested.wait(30), victim.log_path.read_text()
        if backend == "postgresql":
            # Polls once an hour: only the NOTIFY sent by the stopping worker can wake it.
            rescuer = make_worker(poll=True, listen=True, worker_poll_seconds=3600)
            wait_for(lambda: rescuer._listener.listening.is_set(), 10, what="LISTEN")
        proxy.stop_holding()  # new requests pass; the victim's held ones stay held
        t0 = time.monotonic()
        victim.send_signal(signal.SIGTERM)
        assert victim.wait(10) == 0
        stopped = time.monotonic() - t0
        log = victim.log_path.read_text()
        assert "received SIGTERM" in log and "Traceback" not in log, log
        if backend == "sqlite":
            row = mirrors.config(config_id)
            assert (S(row.sync_status), row.lease_token, row.sync_expiration_date) == (S.SYNC_NOW, None, None)
            rescuer = make_worker(poll=True)
        wait_for(lambda: mirrors.runs(config_id)[-1].status == "SUCCESS", 20, what="the run taken over")
        taken_over = time.monotonic() - t0
    assert stopped < 5, stopped
    assert taken_over < 8, taken_over
    runs = mirrors.runs(config_id)
    assert [(r.status, r.reason) for r in runs] == [("INTERRUPTED", "shutdown"), ("SUCCESS", None)]
    assert runs[1].worker == rescuer.owner
    assert layout_tags(wsettings, "org/stop") == digests


def test_sync_now_wakes_the_in_process_worker(registry, database, mirrors, make_worker, tmp_path, markers, due_reads):
    push_images(registry, "up/wake", ["a"], workdir=tmp_path / "img")
    config_id = mirrors.create("org/wake", f"{registry.host}/up/wake", ["*"], status=S.SUCCESS)
    mirrors.update(config_id, sync_start_date=None)  # not scheduled: only a sync-now runs it
    worker = make_worker(poll=True, subscribe=True, worker_poll_seconds=3600)
    wait_for(lambda: due_reads, 5, what="the first pass")
    t0 = time.monotonic()
    with database.transaction() as session:  # what the API's sync-now does
        assert status.request_sync_now(session, session.get(RepoMirrorConfig, config_id))
        events.sync_requested(session, config_id)
    wait_for(lambda: mirrors.runs(config_id), 5, what="the run to start")
    assert time.monotonic() - t0 < 2
    assert worker.wait_idle(20)
    assert mirrors.runs(config_id)[-1].status == "SUCCESS"


def test_sync_now_wakes_a_listening_worker_on_postgresql(registry, pg_settings, pg_database, workers, tmp_path,
                                                         markers, due_reads):
    from quaymirror.mirror.worker.runner import Worker

    push_images(registry, "up/wake", ["a"], workdir=tmp_path / "img")
    mirrors = Mirrors(pg_database, TEST_SECRET)
    config_id = mirrors.create("org/wake", f"{registry.host}/up/wake", ["*"], status=S.SUCCESS)
    mirrors.update(config_id, sync_start_date=None)  # not scheduled: only a sync-now runs it
    worker = Worker(pg_settings.with_overrides(worker_poll_seconds=3600), pg_database, subscribe=False)
    workers.append(worker)
    worker.start()
    wait_for(lambda: worker._listener.listening.is_set() and due_reads, 10, what="LISTEN")
    other = Database(pg_settings.database_url)  # as another process would: its own connections
    try:
        t0 = time.monotonic()
        with other.transaction() as session:
            assert status.request_sync_now(session, session.get(RepoMirrorConfig, config_id))
            events.sync_requested(session, config_id)
        wait_for(lambda: mirrors.runs(config_id), 5, what="the run to start")
        assert time.monotonic() - t0 < 2
    finally:
        other.dispose()
    assert worker.wait_idle(20)
    assert mirrors.runs(config_id)[-1].status == "SUCCESS"


def test_three_workers_thirty_mirrors_each_synced_exactly_once(registry, pg_settings, pg_database, spawn,
                                                               tmp_path, markers):
    markers.append(registry.host)
    digests = push_images(registry, "up/shared", ["v1"], workdir=tmp_path / "img")  # a 3-platform index
    mirrors = Mirrors(pg_database, TEST_SECRET)
    ids = [mirrors.create(f"org{i % 3}/m{i:02d}", f"{registry.host}/up/shared", ["*"],
                          status=S.SYNC_NOW if i % 2 else S.NEVER_RUN) for i in range(30)]
    t0 = time.monotonic()
    procs = [spawn(pg_settings.with_overrides(worker_concurrency=2), f"worker{i}") for i in range(3)]

    def all_done() -> bool:
        with pg_database.transaction() as session:
            rows = session.query(RepoMirrorConfig.sync_status).all()
        return all(r.sync_status == S.SUCCESS for r in rows)

    wait_for(all_done, 120, interval=0.2, what="30 mirrors to succeed")
    elapsed = time.monotonic() - t0
    time.sleep(1)  # a pass or two more: nothing may run again
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(10) == 0, proc.log_path.read_text()

    by_worker: Counter[str] = Counter()
    for config_id in ids:
        runs = mirrors.runs(config_id)
        assert [r.status for r in runs] == ["SUCCESS"], (config_id, [(r.status, r.reason) for r in runs])
        by_worker[runs[0].worker] += 1
        row = mirrors.config(config_id)
        assert (row.lease_token, row.sync_expiration_date, row.sync_retries_remaining) == (None, None, 3)
    assert sum(by_worker.values()) == 30 and len(by_worker) >= 2, by_worker
    for i in range(30):
        assert layout_tags(pg_settings, f"org{i % 3}/m{i:02d}") == digests
    with pg_database.transaction() as session:
        assert len(audit.entries(session, kind="repo_mirror_sync_success")) == 30
        assert len(audit.entries(session, kind="repo_mirror_sync_started")) == 30
    print(f"\n30 mirrors by 3 workers in {elapsed:.1f}s: {sorted(by_worker.values())}")


def test_serve_runs_the_worker_in_process_and_gives_claims_back_on_sigterm(wsettings, database, mirrors, tmp_path,
                                                                          markers):
    from tests.common.ports import free_port
    from tests.common.registry import hung_server

    def serve(*args: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        log = open(tmp_path / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "quaymirror.cli", "serve", "--port", str(port), *args],
                                env=settings_env(wsettings), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
        proc.log_file = log
        proc.log_path = tmp_path / f"serve-{port}.log"
        return proc, port

    def stop(proc: subprocess.Popen) -> int:
        try:
            proc.send_signal(signal.SIGTERM)
            return proc.wait(15)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            proc.log_file.close()

    with hung_server(max_lifetime=60) as address:
        markers.append(address)
        config_id = mirrors.create("org/hung", f"{address}/up/hung", ["*"])
        api_only, _ = serve("--no-worker")
        try:
            wait_for(lambda: b"Booting worker" in api_only.log_path.read_bytes(), 20, what="gunicorn")
            time.sleep(1.0)  # ten polls' worth: an API-only server must not sync
            assert mirrors.runs(config_id) == [] and skopeo_processes(address) == []
        finally:
            assert stop(api_only) == 0

        embedded, _ = serve()
        try:
            wait_for(lambda: skopeo_processes(address), 20, what="the embedded worker's skopeo")
            assert S(mirrors.config(config_id).sync_status) == S.SYNCING
        finally:
            assert stop(embedded) == 0
        assert skopeo_processes(address) == []
    log = embedded.log_path.read_text()
    assert "stopping 1 running mirror(s)" in log, log
    row = mirrors.config(config_id)
    assert (S(row.sync_status), row.lease_token, row.sync_expiration_date) == (S.SYNC_NOW, None, None)
    assert [(r.status, r.reason) for r in mirrors.runs(config_id)] == [("INTERRUPTED", "shutdown")]
