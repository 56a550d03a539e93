"""The mirror health's ``workers.active`` counts the workers alive, by their heartbeat rows, on both backends.

Real ``quaymirror worker`` processes with a short heartbeat, read through a real ``quaymirror serve``'s
superuser health endpoint with a superuser's token: two up count 2, and keep counting while idle; one
stopped with SIGTERM stops counting at once (its row deleted); one SIGKILLed stops counting once its
row is stale (3 intervals). Also the in-process worker of ``serve``, a row deleted by a peer being
inserted again, the migration and the setting.
"""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, inspect, select

from quaymirror import db as dbmod
from quaymirror.db import utcnow
from quaymirror.mirror import heartbeat
from quaymirror.mirror.models import RepoMirrorWorker
from quaymirror.mirror.worker.runner import shutdown_in_process, start_in_process
from quaymirror.settings import Settings, SettingsError
from tests.common.database import TEST_SECRET
from tests.common.ports import wait_for
from tests.common.servers import Server, WorkerProcess, request

SUPER_HEALTH = "/api/v1/superuser/mirror/health"
# Seconds; stale after heartbeat.STALE_BEATS of these (1.5 s): a keeper held up a second by a busy machine
# still beats in time.
BEAT = 0.5
# The worker stopped with SIGTERM beats slowly: its row would stay fresh for 6 s after its last beat, far longer
# than its shutdown takes, so only the delete on a clean stop makes it stop counting at once.
SLOW_BEAT = 2.0
MARGIN = 10.0  # the machine is shared: a generous margin on the staleness bound


def rows(database) -> list[RepoMirrorWorker]:
    with database.transaction() as session:
        return list(session.scalars(select(RepoMirrorWorker).order_by(RepoMirrorWorker.pid)))


@pytest.mark.integration  # real `quaymirror worker` processes
def test_active_counts_live_worker_processes_sigterm_at_once_sigkill_once_stale(world, settings, database,
                                                                               tmp_path):
    token = world.token("super", "devtable", "super:user")
    common = {"database_url": settings.database_url, "secret_key": TEST_SECRET,
              "storage": f"oci:{tmp_path / 'storage'}", "metrics_port": 0}
    server = Server(tmp_path / "api", "--no-worker", api_workers=1, **common)
    workers = [WorkerProcess(tmp_path / f"w{i}", heartbeat_seconds=beat, worker_poll_seconds=1, **common)
               for i, beat in enumerate([SLOW_BEAT, BEAT])]
    processes = [server, *workers]

    def active() -> int:
        status, body, _ = request(server.port, "GET", SUPER_HEALTH, token)
        assert status == 200, body  # no mirrors: healthy whatever the workers
        return body["workers"]["active"]

    try:
        server.wait_healthy()
        wait_for(lambda: active() == 2, 60, interval=0.1, what="both workers counted")
        owners = {row.owner: row.pid for row in rows(database)}
        assert sorted(owners.values()) == sorted(w.pid for w in workers)
        assert all(f":{pid}:" in owner for owner, pid in owners.items())

        # Idle (nothing to mirror) for longer than both staleness bounds: still counted.
        until = time.monotonic() + heartbeat.STALE_BEATS * SLOW_BEAT + 1
        while time.monotonic() < until:
            assert active() == 2
            time.sleep(BEAT / 2)

        stopped, killed = workers
        stopped.process.send_signal(signal.SIGTERM)
        assert stopped.process.wait(15) == 0, stopped.output()
        assert active() == 1  # at once: the row was deleted before the process exited
        assert [row.pid for row in rows(database)] == [killed.pid]

        killed.kill()  # SIGKILL: no clean-up; its row stays and goes stale
        wait_for(lambda: active() == 0, heartbeat.STALE_BEATS * BEAT + MARGIN, interval=0.05,
                 what="the killed worker to go stale (within the staleness bound and a margin)")
        [row] = rows(database)  # not counted, though nobody deleted it (no other worker beats)
        assert row.pid == killed.pid and row.expires <= utcnow()
    finally:
        for process in processes:
            process.stop()
    for worker in workers:
        assert not [line for line in worker.lines() if "Traceback" in line], worker.output()


def test_the_worker_of_serve_counts_while_it_runs_and_not_after_its_shutdown(app, settings, world):
    world.token("super", "devtable", "super:user")
    client = app.test_client()

    def active() -> int:
        response = client.get(SUPER_HEALTH, headers=world.headers("super"))
        assert response.status_code == 200, response.get_json()
        return response.get_json()["workers"]["active"]

    assert active() == 0
    worker = start_in_process(app, settings.with_overrides(heartbeat_seconds=BEAT))
    try:
        assert active() == 1  # counted as soon as it started
        time.sleep((heartbeat.STALE_BEATS + 1) * BEAT)  # idle for longer than the staleness bound
        assert active() == 1
        assert [row.owner for row in rows(world.database)] == [worker.owner]
    finally:
        shutdown_in_process()
    assert active() == 0
    assert rows(world.database) == []


def test_a_stale_row_is_not_counted_and_the_next_beat_deletes_it(database, world, client):
    world.token("super", "devtable", "super:user")
    started = utcnow()
    with database.transaction() as session:
        heartbeat.register(session, "host:1:dead", started, 0.1)
        heartbeat.register(session, "host:2:live", started, 60)
    time.sleep(heartbeat.STALE_BEATS * 0.1 + 0.2)
    body = client.get(SUPER_HEALTH, headers=world.headers("super")).get_json()
    assert body["workers"] == {"active": 1, "configured": 1, "status": "healthy"}
    assert {row.owner for row in rows(database)} == {"host:1:dead", "host:2:live"}  # reading deletes nothing
    with database.transaction() as session:
        assert heartbeat.renew(session, "host:2:live", 60) is True
    assert [row.owner for row in rows(database)] == ["host:2:live"]
    with database.transaction() as session:
        assert heartbeat.renew(session, "host:1:dead", 0.1) is False  # gone: its worker must register again


def test_a_worker_whose_row_was_deleted_as_stale_inserts_it_again(make_worker, database, caplog):
    worker = make_worker(heartbeat_seconds=0.1)
    [row] = rows(database)
    with database.transaction() as session:
        heartbeat.remove(session, worker.owner)  # what a peer's beat does after this worker paused too long
    back = wait_for(lambda: rows(database), 10, what="the row inserted again")
    assert [(r.owner, r.started) for r in back] == [(worker.owner, row.started)]  # same worker, same start
    assert back[0].expires > utcnow()
    # Logged after the insert's commit: the row may be seen a moment before the line is written.
    wait_for(lambda: "heartbeat row was gone" in caplog.text, 10, what="the warning")


def test_renewal_moves_the_expiry_forward(make_worker, database):
    worker = make_worker(heartbeat_seconds=0.1)
    first = rows(database)[0]
    assert first.expires - first.heartbeat == timedelta(seconds=heartbeat.STALE_BEATS * 0.1)
    later = wait_for(lambda: [r for r in rows(database) if r.heartbeat > first.heartbeat], 10,
                     what="a renewal")[0]
    assert (later.owner, later.started) == (worker.owner, first.started)
    assert later.expires - later.heartbeat == timedelta(seconds=heartbeat.STALE_BEATS * 0.1)


def test_migration_0005_creates_and_drops_the_worker_table(empty_database_url):
    url = empty_database_url

    def table() -> dict | None:
        engine = create_engine(url)
        try:
            inspector = inspect(engine)
            if "repomirrorworker" not in inspector.get_table_names():
                return None
            return {"columns": {c["name"]: c["nullable"] for c in inspector.get_columns("repomirrorworker")},
                    "unique": [u["column_names"] for u in inspector.get_unique_constraints("repomirrorworker")],
                    "indexes": {i["name"]: i["column_names"] for i in inspector.get_indexes("repomirrorworker")
                                if not i.get("duplicates_constraint")}}  # PostgreSQL: the unique one too
        finally:
            engine.dispose()

    dbmod.upgrade(url, "0004")
    assert table() is None
    dbmod.upgrade(url, "0005")
    assert table() == {"columns": {"id": False, "owner": False, "hostname": False, "pid": False, "started": False,
                                   "heartbeat": False, "expires": False},
                       "unique": [["owner"]], "indexes": {"ix_repomirrorworker_expires": ["expires"]}}
    dbmod.downgrade(url, "0004")
    assert table() is None


def _env(tmp_path, **values: str) -> dict[str, str]:
    return {"QUAYMIRROR_INSTANCE_PATH": str(tmp_path), "QUAYMIRROR_SECRET_KEY": "k",
            **{f"QUAYMIRROR_{k}": v for k, v in values.items()}}


@pytest.mark.parametrize(("raw", "value"), [(None, 5.0), ("0.1", 0.1), ("2.5", 2.5), ("30", 30.0)])
def test_heartbeat_setting(tmp_path, raw, value):
    env = _env(tmp_path) if raw is None else _env(tmp_path, HEARTBEAT_SECONDS=raw)
    assert Settings.from_env(env).heartbeat_seconds == value


@pytest.mark.parametrize("raw", ["0", "0.05", "-1", "often", "", "  "])
def test_unusable_heartbeat_settings_are_refused_at_start(tmp_path, raw):
    with pytest.raises(SettingsError, match="QUAYMIRROR_HEARTBEAT_SECONDS"):
        Settings.from_env(_env(tmp_path, HEARTBEAT_SECONDS=raw))
