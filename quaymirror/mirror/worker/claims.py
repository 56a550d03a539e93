"""Finding due mirrors and claiming them: one query per pass, one conditional UPDATE per claim.

The claims of a pass (``status.claim``) and the opening of their runs' history
rows happen in one transaction, so a run row exists exactly when a claim
succeeded, and a pass commits (and, on SQLite, syncs its journal) once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Integer, bindparam, func, literal_column, select, union_all
from sqlalchemy.orm import Session

from quaymirror.db import Database
from quaymirror.mirror import history, status
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus
from quaymirror.repositories.models import Repository, RepositoryState

C = RepoMirrorConfig


@dataclass(frozen=True)
class Candidate:
    config_id: int
    transaction_id: str | None
    status: int
    # Never changes for a config; a claim succeeds only on the row version read with it.
    repository_id: int | None = None


@dataclass(frozen=True)
class Claimed:
    lease: status.Lease
    config_id: int
    repository_id: int
    run_id: int
    trigger: str


def _build_due_query():
    """Due mirrors of repositories in state MIRROR, sync-now first, then by due time (Quay bug #37 fixed).

    One statement: a UNION ALL of one branch per way of being due (Quay's three filters, the
    "ready" one once per status so that each branch is one range of ``ix_repomirrorconfig_ready``
    read in due order), each cut at ``limit`` before the final order. A pass reads about
    ``limit`` rows per branch, whether 1k or 100k mirrors exist and however many are due; one
    ``OR`` of the filters had to fetch and sort every due row (and SQLite's planner scanned
    every ``sync_expiration_date IS NULL`` row through ``ix_repomirrorconfig_expiration``).
    """
    now = bindparam("now", type_=DateTime)
    limit = bindparam("limit", type_=Integer)
    due_time = func.coalesce(C.sync_start_date, C.sync_expiration_date, C.creation_date)
    # A correlated look-up per candidate (primary key), not a join: a join lets the planner scan
    # every repository (100k rows: ~100 ms), while only the few due configs need their repository's state.
    mirrored = select(Repository.state).where(Repository.id == C.repository_id).scalar_subquery() \
        == int(RepositoryState.MIRROR)

    def branch(rank: int, condition, order):
        return select(C.id, C.sync_transaction_id, C.sync_status, C.repository_id,
                      literal_column(str(rank)).label("rank"), due_time.label("due_time")) \
            .where(condition, mirrored).order_by(order, C.id).limit(limit).subquery()

    branches = [branch(0, status.immediate_clause(), due_time)]
    # In these branches the start is set (<= now), so the due time is the start: the index's order.
    branches += [branch(1, status.ready_clause(now, s), C.sync_start_date) for s in status.READY_STATUSES]
    branches.append(branch(1, status.expired_clause(now), due_time))
    found = union_all(*(select(b) for b in branches)).subquery("due")
    return (
        select(found.c.id, found.c.sync_transaction_id, found.c.sync_status, found.c.repository_id)
        .order_by(found.c.rank, found.c.due_time, found.c.id)
        .limit(limit)
    )


def _build_next_due_query():
    """One row: the first start after now in each status's range of ``ix_repomirrorconfig_ready``
    (a start counts when Quay's "ready" filter would then select the mirror), and the first lease
    expiry. Index probes only, however many mirrors there are.

    ``ORDER BY ... LIMIT 1`` rather than ``MIN()``: PostgreSQL without statistics (a table just
    filled) plans a ``MIN()`` as an aggregate over the whole range; a LIMIT stops at the first row.
    """
    now = bindparam("now", type_=DateTime)
    probes = [select(C.sync_start_date).where(*status.ready_filters(s), C.sync_start_date > now)
              .order_by(C.sync_start_date).limit(1).scalar_subquery() for s in status.READY_STATUSES]
    probes.append(select(C.sync_expiration_date)
                  .where(C.sync_status == int(RepoMirrorStatus.SYNCING), C.sync_expiration_date > now)
                  .order_by(C.sync_expiration_date).limit(1).scalar_subquery())
    return select(*probes)


# Built once: a pass runs them with new parameters, without rebuilding a dozen subqueries in Python.
_DUE = _build_due_query()
_NEXT_DUE = _build_next_due_query()


def due_query(now: datetime, limit: int):
    return _DUE.params(now=now, limit=limit)


def next_due_query(now: datetime):
    return _NEXT_DUE.params(now=now)


def due(session: Session, now: datetime, limit: int) -> list[Candidate]:
    return [Candidate(*row) for row in session.execute(_DUE, {"now": now, "limit": limit})]


def next_due(session: Session, now: datetime) -> datetime | None:
    """When the next mirror becomes due without any user action: a scheduled start or a lease expiry.

    The worker sleeps until then instead of waiting for its next poll.
    """
    times = [t for t in session.execute(_NEXT_DUE, {"now": now}).one() if t is not None]
    return min(times) if times else None


def claim(database: Database, candidate: Candidate, owner: str, lease_seconds: int) -> Claimed | None:
    """Claim one candidate and open its run; None when another worker (or a user) got there first."""
    got = claim_many(database, [candidate], owner, lease_seconds)
    return got[0] if got else None


def claim_many(database: Database, candidates: Sequence[Candidate], owner: str, lease_seconds: int) -> list[Claimed]:
    """Claim the candidates that are still due and open their runs, in one transaction; in the candidates' order.

    Each claim stays one conditional UPDATE on the row's ``sync_transaction_id``, so exactly one
    of several workers gets a mirror. The rows are claimed by increasing id: two workers' batches
    lock rows in the same order on PostgreSQL and cannot deadlock.
    """
    got: dict[int, Claimed] = {}
    with database.transaction() as session:
        for candidate in sorted(candidates, key=lambda c: c.config_id):
            claimed = _claim(session, candidate, owner, lease_seconds)
            if claimed is not None:
                got[candidate.config_id] = claimed
    return [got[c.config_id] for c in candidates if c.config_id in got]


def _claim(session: Session, candidate: Candidate, owner: str, lease_seconds: int) -> Claimed | None:
    lease = status.claim(session, candidate.config_id, candidate.transaction_id, owner, lease_seconds)
    if lease is None:
        return None
    repository_id = candidate.repository_id
    if repository_id is None:
        repository_id = session.scalar(select(C.repository_id).where(C.id == candidate.config_id))
    if candidate.status == RepoMirrorStatus.SYNC_NOW:
        trigger = history.TRIGGER_SYNC_NOW
    elif candidate.status == RepoMirrorStatus.SYNCING:  # an expired lease: continue the dead run's trigger
        trigger = session.scalar(
            select(history.SyncRun.trigger)
            .where(history.SyncRun.config_id == candidate.config_id, history.SyncRun.finished.is_(None))
            .order_by(history.SyncRun.id.desc()).limit(1)
        ) or history.TRIGGER_SCHEDULE
    else:
        trigger = history.TRIGGER_SCHEDULE
    run = history.start_run(session, repository_id=repository_id, config_id=candidate.config_id,
                            trigger=trigger, worker=owner, lease_token=lease.token)
    return Claimed(lease, candidate.config_id, repository_id, run.id, trigger)
