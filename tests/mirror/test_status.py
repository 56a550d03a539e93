"""State machine and scheduling, on the database alone: claim, lease, release arithmetic, due order."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from quaymirror.db import utcnow
from quaymirror.mirror import status
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus
from quaymirror.mirror.worker import claims
from quaymirror.repositories.models import Repository, RepositoryState
from tests.common.mirrors import bulk_configs

S = RepoMirrorStatus


def _claim(database, config_id: int, owner: str = "w1", lease_seconds: int = 60) -> status.Lease | None:
    with database.transaction() as session:
        row = session.get(RepoMirrorConfig, config_id)
        return status.claim(session, config_id, row.sync_transaction_id, owner, lease_seconds)


def _release(database, lease, outcome) -> S | None:
    with database.transaction() as session:
        return status.release(session, lease, outcome)


def _due(database, limit: int = 100) -> list[int]:
    with database.transaction() as session:
        return [c.config_id for c in claims.due(session, utcnow(), limit)]


def test_fail_three_times_then_wait_for_the_next_interval(database, mirrors):
    start = utcnow() - timedelta(seconds=125)
    config_id = mirrors.create("org/a", "quay.io/a/b", status=S.NEVER_RUN, interval=60, start=start)
    for expected in (2, 1):
        lease = _claim(database, config_id)
        assert lease is not None
        assert _release(database, lease, S.FAIL) == S.FAIL
        row = mirrors.config(config_id)
        assert (row.sync_retries_remaining, row.sync_start_date) == (expected, start)  # retried at once
        assert config_id in _due(database)
    lease = _claim(database, config_id)
    before = utcnow()
    assert _release(database, lease, S.FAIL) == S.FAIL
    row = mirrors.config(config_id)
    assert row.sync_retries_remaining == 3
    # The next point of the grid start + k*60 strictly after now.
    assert row.sync_start_date == start + timedelta(seconds=180) or (
        before < row.sync_start_date <= before + timedelta(seconds=60))
    assert (row.sync_start_date - start).total_seconds() % 60 == 0
    assert config_id not in _due(database)


def test_success_interval_zero_and_null_start(database, mirrors):
    zero = mirrors.create("org/zero", "quay.io/a/b", status=S.NEVER_RUN, interval=0)
    lease = _claim(database, zero)
    assert _release(database, lease, S.SUCCESS) == S.SUCCESS  # Quay: ZeroDivisionError, stuck in SYNCING
    row = mirrors.config(zero)
    assert (row.sync_start_date, row.sync_retries_remaining) == (None, 3)
    assert zero not in _due(database)  # only sync-now runs it from now on
    with database.transaction() as session:
        assert status.request_sync_now(session, session.get(RepoMirrorConfig, zero))
    assert zero in _due(database)

    null = mirrors.create("org/null", "quay.io/a/b", status=S.SYNC_NOW, interval=300)
    mirrors.update(null, sync_start_date=None)
    lease = _claim(database, null)
    before = utcnow()
    assert _release(database, lease, S.SUCCESS) == S.SUCCESS  # Quay: TypeError (now - None)
    row = mirrors.config(null)
    assert before + timedelta(seconds=299) <= row.sync_start_date <= utcnow() + timedelta(seconds=300)


def test_cancel_wins_and_a_put_does_not_strand_the_run(database, mirrors):
    config_id = mirrors.create("org/a", "quay.io/a/b")
    lease = _claim(database, config_id)
    with database.transaction() as session:  # a PUT renews the config's version
        row = session.get(RepoMirrorConfig, config_id)
        row.sync_interval = 120
        row.sync_transaction_id = "put-during-the-sync"
    assert _release(database, lease, S.SUCCESS) == S.SUCCESS  # Quay: release lost, SYNCING forever
    row = mirrors.config(config_id)
    assert (S(row.sync_status), row.lease_token, row.sync_expiration_date) == (S.SUCCESS, None, None)

    with database.transaction() as session:
        assert status.request_sync_now(session, session.get(RepoMirrorConfig, config_id))
    lease = _claim(database, config_id)
    with database.transaction() as session:
        assert status.cancel(session, session.get(RepoMirrorConfig, config_id))
    assert _release(database, lease, S.SUCCESS) == S.CANCEL
    row = mirrors.config(config_id)
    assert (S(row.sync_status), row.sync_retries_remaining, row.lease_token) == (S.CANCEL, 0, None)
    assert config_id not in _due(database)


def test_expired_lease_is_reclaimed_and_the_old_worker_cannot_release(database, mirrors):
    config_id = mirrors.create("org/a", "quay.io/a/b")
    old = _claim(database, config_id, owner="dead-worker", lease_seconds=60)
    assert _claim(database, config_id, owner="w2") is None  # a live lease is not taken
    assert config_id not in _due(database)
    mirrors.update(config_id, sync_expiration_date=utcnow() - timedelta(seconds=1))
    assert config_id in _due(database)
    new = _claim(database, config_id, owner="w2")
    assert new is not None and new.token != old.token
    assert mirrors.config(config_id).lease_owner == "w2"
    assert _release(database, old, S.SUCCESS) is None
    with database.transaction() as session:
        assert status.renew(session, old, 60) is None
        assert status.renew(session, new, 60) is not None
    assert _release(database, new, S.SUCCESS) == S.SUCCESS


def test_abandon_gives_the_claim_back_at_once(database, mirrors):
    config_id = mirrors.create("org/a", "quay.io/a/b", status=S.NEVER_RUN, enabled=False)
    mirrors.update(config_id, sync_status=int(S.SYNC_NOW))
    lease = _claim(database, config_id)
    mirrors.update(config_id, sync_retries_remaining=0)
    with database.transaction() as session:
        assert status.abandon(session, lease)
    row = mirrors.config(config_id)
    assert (S(row.sync_status), row.lease_token, row.sync_expiration_date, row.sync_retries_remaining) == (
        S.SYNC_NOW, None, None, 1)
    assert _due(database) == [config_id]
    with database.transaction() as session:
        assert not status.abandon(session, lease)


def test_the_lease_keeper_reads_status_and_token_of_running_mirrors(database, mirrors):
    running = mirrors.create("org/a", "quay.io/a/b")
    idle = mirrors.create("org/b", "quay.io/a/b", status=S.SUCCESS)
    lease = _claim(database, running)
    with database.transaction() as session:
        rows = status.leases(session, [running, idle, running + idle + 1])
    assert set(rows) == {running, idle}  # a deleted mirror is missing
    assert rows[running].held_by(lease) and not rows[running].cancelled
    assert not rows[idle].held_by(lease)
    with database.transaction() as session:
        assert status.cancel(session, session.get(RepoMirrorConfig, running))
        row = status.leases(session, [running])[running]
    assert row.held_by(lease) and row.cancelled  # cancelled under our lease: the keeper stops the run
    with database.transaction() as session:
        assert status.request_sync_now(session, session.get(RepoMirrorConfig, running))
    taken = _claim(database, running, owner="w2")
    with database.transaction() as session:
        row = status.leases(session, [running])[running]
    assert row.held_by(taken) and not row.held_by(lease)  # another worker's claim: ours is lost


def test_due_order_state_and_enabled(database, mirrors):
    now = utcnow()
    late = mirrors.create("org/late", "quay.io/a/b", status=S.SUCCESS, start=now - timedelta(minutes=1))
    early = mirrors.create("org/early", "quay.io/a/b", status=S.FAIL, start=now - timedelta(hours=1))
    asked = mirrors.create("org/asked", "quay.io/a/b", status=S.SYNC_NOW, start=now + timedelta(hours=1))
    future = mirrors.create("org/future", "quay.io/a/b", status=S.SUCCESS, start=now + timedelta(hours=1))
    disabled = mirrors.create("org/disabled", "quay.io/a/b", status=S.SUCCESS, enabled=False)
    disabled_now = mirrors.create("org/dnow", "quay.io/a/b", status=S.SYNC_NOW, enabled=False,
                                  start=now + timedelta(hours=2))
    normal = mirrors.create("org/normal", "quay.io/a/b", status=S.SYNC_NOW)
    with database.transaction() as session:
        repo = session.get(Repository, mirrors.config(normal).repository_id)
        repo.state = int(RepositoryState.NORMAL)
    assert _due(database) == [asked, disabled_now, early, late]
    assert _due(database, limit=2) == [asked, disabled_now]
    assert future not in _due(database) and disabled not in _due(database)


def test_due_query_uses_indexes_on_postgresql(pg_database):
    """3000 mirrors, 5 due: the planner finds them through the partial ix_repomirrorconfig_ready index."""
    now = utcnow()
    bulk_configs(pg_database, [
        {"sync_status": int(S.SUCCESS) if i >= 5 else int(S.FAIL),
         "sync_start_date": now + timedelta(hours=1) if i >= 5 else now - timedelta(minutes=i)}
        for i in range(3000)])
    with pg_database.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
        compiled = claims.DUE_MIRRORS.params(now=utcnow(), limit=10).compile(
            pg_database.engine, compile_kwargs={"literal_binds": True})
        plan = "\n".join(row[0] for row in conn.execute(text(f"EXPLAIN {compiled}")))
        compiled = claims.NEXT_DUE_TIME.params(now=utcnow()).compile(
            pg_database.engine, compile_kwargs={"literal_binds": True})
        next_plan = "\n".join(row[0] for row in conn.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_repomirrorconfig_ready" in plan, plan
    assert "Seq Scan on repomirrorconfig" not in plan, plan
    assert "ix_repomirrorconfig_ready" in next_plan, next_plan
    assert "Seq Scan on repomirrorconfig" not in next_plan, next_plan
    with pg_database.transaction() as session:
        assert len(claims.due(session, utcnow(), 100)) == 5


def test_the_worker_wakes_when_a_schedule_or_a_lease_falls_due_not_at_its_next_poll(database, mirrors, make_worker,
                                                                                   due_reads):
    """With an hour-long poll, a mirror due in a second and a dead worker's lease ending in a
    second are both taken within about that second."""
    from tests.common.ports import wait_for

    soon = mirrors.create("org/soon", "127.0.0.1:9/up/x", ["*"], status=RepoMirrorStatus.SUCCESS,
                          start=utcnow() + timedelta(seconds=1))
    orphan = mirrors.create("org/orphan", "127.0.0.1:9/up/y", ["*"], status=RepoMirrorStatus.SUCCESS,
                            start=utcnow() + timedelta(hours=1))
    with database.transaction() as session:
        row = session.get(RepoMirrorConfig, orphan)
        row.sync_status = int(RepoMirrorStatus.SYNCING)
        row.sync_expiration_date = utcnow() + timedelta(seconds=1.5)
        row.lease_token = "a-dead-workers-lease"
    # The references are refused by the SSRF re-check: each run fails at once, which is all we need.
    make_worker(poll=True, worker_poll_seconds=3600, ssrf_allowed_hosts=(), retry_seconds=3600)
    wait_for(lambda: len(mirrors.runs(soon)) == 1 and len(mirrors.runs(orphan)) == 1, timeout=6,
             what="both mirrors to be run")
    assert len(due_reads) < 10  # each pass reads the due mirrors at least once
