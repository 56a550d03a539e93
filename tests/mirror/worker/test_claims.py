"""The due scan and the claims at scale: Quay's three filters answered through indexes, claims batched.

* ``claims.due`` answers exactly what the one ``OR`` of ``status.eligible_clause`` ordered by
  sync-now first, due time, id answers, over every combination of status, start, lease,
  enabled, retries and repository state; ``claims.next_due`` is the first start the "ready"
  filter will select or the first lease expiry.
* Both read ``ix_repomirrorconfig_ready`` (the partial index) and never scan the table, on
  SQLite (whose planner has no statistics) and on PostgreSQL.
* ``claims.claim_many`` claims a pass's mirrors in one transaction, each still by a conditional
  UPDATE, so concurrent batches claim each mirror exactly once (and, by id order, never deadlock).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from datetime import timedelta

import pytest
from sqlalchemy import case, event, func, select, update

from quaymirror.db import utcnow
from quaymirror.mirror import status
from quaymirror.mirror.models import MirrorSyncRun, RepoMirrorConfig, RepoMirrorStatus
from quaymirror.mirror.worker import claims
from quaymirror.repositories.models import Repository, RepositoryState
from tests.common.mirrors import bulk_configs

S = RepoMirrorStatus
C = RepoMirrorConfig


def _matrix(now) -> list[dict]:
    """Every status x start x lease x enabled x retries, with shared times (ties across branches)
    and some repositories not in state MIRROR."""
    past = [now - timedelta(hours=2), now - timedelta(hours=1)]
    future = [now + timedelta(hours=1), now + timedelta(hours=2)]
    rows = []
    combos = itertools.product(list(S), [None, "past", "future"], [None, "past", "future"], [True, False], [0, 2])
    for i, (state, start, lease, enabled, retries) in enumerate(combos):
        pick = {None: None, "past": past[i % 2], "future": future[i % 2]}
        rows.append({
            "sync_status": int(state), "sync_start_date": pick[start], "sync_expiration_date": pick[lease],
            "is_enabled": enabled, "sync_retries_remaining": retries,
            "creation_date": now - timedelta(minutes=i % 3),
            "state": RepositoryState.NORMAL if i % 7 == 3 else RepositoryState.MIRROR,
        })
    return rows


def _one_or(session, now, limit: int) -> list[int]:
    """The previous statement: Quay's three filters in one OR, sync-now first, then due time, then id."""
    due_time = func.coalesce(C.sync_start_date, C.sync_expiration_date, C.creation_date)
    mirrored = select(Repository.state).where(Repository.id == C.repository_id).scalar_subquery() \
        == int(RepositoryState.MIRROR)
    return list(session.scalars(
        select(C.id).where(status.eligible_clause(now), mirrored)
        .order_by(case((C.sync_status == int(S.SYNC_NOW), 0), else_=1), due_time, C.id).limit(limit)
    ))


def test_due_answers_exactly_quays_three_filters(database):
    now = utcnow()
    bulk_configs(database, _matrix(now))
    with database.transaction() as session:
        every = _one_or(session, now, 10_000)
        assert len(every) > 20  # the matrix has due rows of every kind
        statuses = set(session.scalars(select(C.sync_status).where(C.id.in_(every))))
        assert statuses == {int(S.SYNC_NOW), int(S.SYNCING), *(int(s) for s in status.READY_STATUSES)}
        for limit in (1, 2, 5, 8, 13, len(every) - 1, len(every), 10_000):
            assert [c.config_id for c in claims.due(session, now, limit)] == _one_or(session, now, limit), limit


def test_next_due_is_the_first_start_the_ready_filter_selects_or_the_first_lease_expiry(database):
    now = utcnow()
    rows = _matrix(now)
    bulk_configs(database, rows)
    with database.transaction() as session:
        configs = session.execute(select(C.sync_status, C.sync_start_date, C.sync_expiration_date, C.is_enabled,
                                         C.sync_retries_remaining)).all()
        starts = [r.sync_start_date for r in configs
                  if r.sync_status in {int(s) for s in status.READY_STATUSES} and r.sync_retries_remaining > 0
                  and r.sync_expiration_date is None and r.is_enabled and r.sync_start_date
                  and r.sync_start_date > now]
        expiries = [r.sync_expiration_date for r in configs
                    if r.sync_status == S.SYNCING and r.sync_expiration_date and r.sync_expiration_date > now]
        assert claims.next_due(session, now) == min(starts + expiries)
        # Only a lease left: its expiry; nothing at all: None.
        later = now + timedelta(hours=1, minutes=30)
        assert claims.next_due(session, later) == now + timedelta(hours=2)
        assert claims.next_due(session, now + timedelta(days=1)) is None


def _sqlite_plan(database, run) -> str:
    """SQLite's plan for the last statement ``run(session)`` executes, with its very parameters."""
    captured = []

    def capture(_conn, _cursor, statement, parameters, _context, _executemany):
        captured.append((statement, parameters))

    event.listen(database.engine, "before_cursor_execute", capture)
    try:
        with database.transaction() as session:
            run(session)
    finally:
        event.remove(database.engine, "before_cursor_execute", capture)
    statement, parameters = captured[-1]
    with database.engine.connect() as conn:
        return "\n".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))


def test_due_and_next_due_read_the_ready_index_and_never_scan_the_table_on_sqlite(backend, database):
    """SQLite's planner has no statistics: it used to scan every ``sync_expiration_date IS NULL`` row
    through ix_repomirrorconfig_expiration (30-120 ms at 100k). PostgreSQL: test_status.py."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL's plans depend on its statistics: test_due_query_uses_indexes_on_postgresql")
    now = utcnow()
    bulk_configs(database, _matrix(now) + [{"sync_start_date": now + timedelta(days=1)}] * 300)
    due_plan = _sqlite_plan(database, lambda session: claims.due(session, utcnow(), 8))
    next_plan = _sqlite_plan(database, lambda session: claims.next_due(session, utcnow()))
    for plan in (due_plan, next_plan):
        assert plan.count("USING INDEX ix_repomirrorconfig_ready") == len(status.READY_STATUSES), plan
        assert "SCAN repomirrorconfig" not in plan, plan
        assert "sync_expiration_date=?" not in plan, plan


def test_claim_many_claims_in_one_transaction_in_the_candidates_order(database):
    now = utcnow()
    ids = bulk_configs(database, [{"sync_start_date": now - timedelta(minutes=m)} for m in (40, 30, 20, 10)])
    with database.transaction() as session:
        candidates = claims.due(session, utcnow(), 10)
    assert [c.config_id for c in candidates] == ids
    with database.transaction() as session:  # a PUT between the read and the claim: that claim loses
        session.get(RepoMirrorConfig, ids[1]).sync_transaction_id = "changed-meanwhile"
    commits = []
    count = commits.append  # one bound method, to remove the listener
    event.listen(database.engine, "commit", count)
    try:
        got = claims.claim_many(database, list(reversed(candidates)), "w1", 60)
    finally:
        event.remove(database.engine, "commit", count)
    assert len(commits) == 1
    assert [g.config_id for g in got] == [ids[3], ids[2], ids[0]]
    assert len({g.lease.token for g in got}) == 3
    with database.transaction() as session:
        rows = {r.id: r for r in session.scalars(select(C))}
        runs = session.execute(select(MirrorSyncRun.config_id, MirrorSyncRun.id, MirrorSyncRun.trigger, MirrorSyncRun.lease_token)).all()
    for g in got:
        assert (S(rows[g.config_id].sync_status), rows[g.config_id].lease_owner) == (S.SYNCING, "w1")
        assert (rows[g.config_id].lease_token, rows[g.config_id].repository_id) == (g.lease.token, g.repository_id)
    assert S(rows[ids[1]].sync_status) == S.SUCCESS
    assert sorted((r.config_id, r.id, r.trigger, r.lease_token) for r in runs) == sorted(
        (g.config_id, g.run_id, "schedule", g.lease.token) for g in got)
    assert claims.claim_many(database, candidates, "w2", 60) == []  # nobody claims them twice


def test_concurrent_batches_claim_each_mirror_exactly_once(database):
    """Two workers claim the same twelve candidates at once, one in due order and one reversed.

    Each claim is a conditional UPDATE on the row's transaction id, so each mirror goes to one of
    them; on PostgreSQL the rows are locked by increasing id, so the two batches never deadlock.
    """
    now = utcnow()
    ids = bulk_configs(database, [{"sync_start_date": now - timedelta(minutes=m)} for m in range(12, 0, -1)])
    for round_ in range(4):
        with database.transaction() as session:  # due again, as after a successful run
            for config_id in ids:
                session.execute(update(C).where(C.id == config_id).values(
                    sync_status=int(S.SUCCESS), sync_expiration_date=None, lease_token=None, lease_owner=None,
                    sync_transaction_id=f"round{round_}-{config_id}"))
        with database.transaction() as session:
            candidates = claims.due(session, utcnow(), 100)
        assert [c.config_id for c in candidates] == ids
        barrier = threading.Barrier(2)
        results: dict[str, list] = {}
        errors: list[BaseException] = []

        def work(name: str, order: list, results=results, errors=errors, barrier=barrier) -> None:
            try:
                barrier.wait(5)
                results[name] = claims.claim_many(database, order, name, 60)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=("a", candidates)),
                   threading.Thread(target=work, args=("b", list(reversed(candidates))))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        a = {g.config_id for g in results["a"]}
        b = {g.config_id for g in results["b"]}
        assert not a & b and a | b == set(ids), (a, b)
    with database.transaction() as session:
        counts = dict(session.execute(select(MirrorSyncRun.config_id, func.count()).group_by(MirrorSyncRun.config_id)).all())
    assert counts == {config_id: 4 for config_id in ids}


def test_a_pass_claims_its_free_slots_in_one_transaction(database, make_worker, monkeypatch):
    """Three free slots, five due mirrors: the three first, in one claim transaction; a candidate
    changed since the read is replaced by the next one in a second transaction."""
    now = utcnow()
    ids = bulk_configs(database, [{"sync_start_date": now - timedelta(minutes=m)} for m in (50, 40, 30, 20, 10)])
    worker = make_worker(worker_concurrency=3)
    launched: list = []
    monkeypatch.setattr(worker, "_launch", launched.append)  # no sync: only find and claim
    commits: list = []
    count = commits.append  # one bound method, to remove the listener
    event.listen(database.engine, "commit", count)
    try:
        assert worker.run_pass() == 3
        first = len(commits)
        with database.transaction() as session:
            session.execute(C.__table__.update().values(sync_status=int(S.SUCCESS), sync_expiration_date=None,
                                                        lease_token=None, sync_transaction_id="again"))
        commits.clear()
        read = claims.due

        def stale_first(session, when, limit):
            found = read(session, when, limit)
            return [dataclasses.replace(found[0], transaction_id="stale"), *found[1:]]

        monkeypatch.setattr(claims, "due", stale_first)
        launched_before = len(launched)
        assert worker.run_pass() == 3
        second = len(commits)
    finally:
        event.remove(database.engine, "commit", count)
    assert first == 2  # the due query's transaction and the claims'
    assert [c.config_id for c in launched[:launched_before]] == ids[:3]
    assert second == 3  # the due query's, the first batch's (two of three claimed), the replacement's
    assert [c.config_id for c in launched[launched_before:]] == ids[1:4]
