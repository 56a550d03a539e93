"""Finding due mirrors and claiming them: one query per pass, one conditional UPDATE per claim.

The claim (``status.claim``) and the opening of the run's history row happen
in one transaction, so a run row exists exactly when a claim succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
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


@dataclass(frozen=True)
class Claimed:
    lease: status.Lease
    config_id: int
    repository_id: int
    run_id: int
    trigger: str


def due_query(now: datetime, limit: int):
    """Due mirrors of repositories in state MIRROR, sync-now first, then by due time (Quay bug #37 fixed)."""
    due_time = func.coalesce(C.sync_start_date, C.sync_expiration_date, C.creation_date)
    return (
        select(C.id, C.sync_transaction_id, C.sync_status)
        # A correlated look-up per eligible config (primary key), not a join: a join lets the planner scan
        # every repository (100k rows: ~100 ms), while only the few due configs need their repository's state.
        .where(status.eligible_clause(now),
               select(Repository.state).where(Repository.id == C.repository_id).scalar_subquery()
               == int(RepositoryState.MIRROR))
        .order_by(case((C.sync_status == int(RepoMirrorStatus.SYNC_NOW), 0), else_=1), due_time, C.id)
        .limit(limit)
    )


def next_due(session: Session, now: datetime) -> datetime | None:
    """When the next mirror becomes due without any user action: a scheduled start or a lease expiry.

    Two indexed MIN() queries; the worker sleeps until then instead of waiting for its next poll.
    """
    S = RepoMirrorStatus
    start = session.scalar(
        select(func.min(C.sync_start_date)).where(
            C.sync_status.in_([int(S.NEVER_RUN), int(S.SUCCESS), int(S.FAIL)]),
            C.sync_start_date > now, C.is_enabled.is_(True), C.sync_retries_remaining > 0,
        )
    )
    expiry = session.scalar(
        select(func.min(C.sync_expiration_date)).where(C.sync_status == int(S.SYNCING), C.sync_expiration_date > now)
    )
    times = [t for t in (start, expiry) if t is not None]
    return min(times) if times else None


def due(session: Session, now: datetime, limit: int) -> list[Candidate]:
    return [Candidate(*row) for row in session.execute(due_query(now, limit))]


def claim(database: Database, candidate: Candidate, owner: str, lease_seconds: int) -> Claimed | None:
    """Claim one candidate and open its run; None when another worker (or a user) got there first."""
    with database.transaction() as session:
        lease = status.claim(session, candidate.config_id, candidate.transaction_id, owner, lease_seconds)
        if lease is None:
            return None
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
