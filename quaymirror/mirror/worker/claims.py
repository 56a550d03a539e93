"""Finding due mirrors and claiming them: one query per pass, one conditional UPDATE per claim.

The claims of a pass (``status.claim``, one guarded UPDATE each) and the
opening of their runs' history rows happen in one transaction
(:func:`claim_many`), so a run row exists exactly when a claim succeeded, and
a pass commits (and, on SQLite, syncs its journal) once. The two queries are
built once, at import, and named: :data:`DUE_MIRRORS` and :data:`NEXT_DUE_TIME`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Integer, Select, bindparam, func, literal_column, select, union_all
from sqlalchemy.orm import Session

from quaymirror.db import Database
from quaymirror.mirror import history, status
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus, RunTrigger
from quaymirror.repositories.models import Repository, RepositoryState


@dataclass(frozen=True)
class Candidate:
    """A due mirror as the pass read it; a claim succeeds only on the row version read with it."""

    config_id: int
    transaction_id: str | None
    sync_status: int
    repository_id: int  # never changes for a config
    # The organization mirror's discovered row this configuration syncs (None: a repository mirror).
    org_repository_id: int | None = None


@dataclass(frozen=True)
class Claimed:
    """A mirror this worker holds for one run, and the history row opened for it."""

    lease: status.Lease
    config_id: int
    repository_id: int
    run_id: int
    trigger: RunTrigger
    org_repository_id: int | None = None


def _build_due_query() -> Select[int, str | None, int, int, int | None]:
    """Due mirrors of repositories in state MIRROR (ORG_MIRROR: an organization mirror's), sync-now first, then by due time.

    (Quay orders its candidates by id, so the oldest-due mirrors wait behind the others; here
    they come first.) One statement: a UNION ALL of one branch per way of being due (Quay's
    three filters, the "ready" one once per status so that each branch is one range of
    ``ix_repomirrorconfig_ready`` read in due order), each cut at ``limit`` before the final
    order. A pass reads about ``limit`` rows per branch, whether 1k or 100k mirrors exist and
    however many are due; one ``OR`` of the filters had to fetch and sort every due row (and
    SQLite's planner scanned every ``sync_expiration_date IS NULL`` row through
    ``ix_repomirrorconfig_expiration``).
    """
    now = bindparam("now", type_=DateTime)
    limit = bindparam("limit", type_=Integer)
    due_time = func.coalesce(RepoMirrorConfig.sync_start_date, RepoMirrorConfig.sync_expiration_date,
                             RepoMirrorConfig.creation_date)
    # A correlated look-up per candidate (primary key), not a join: a join lets the planner scan
    # every repository (100k rows: ~100 ms), while only the few due configs need their repository's state.
    state = select(Repository.state).where(Repository.id == RepoMirrorConfig.repository_id).scalar_subquery()
    mirrored = state.in_([int(RepositoryState.MIRROR), int(RepositoryState.ORG_MIRROR)])

    def branch(rank: int, condition, order):
        return select(RepoMirrorConfig.id, RepoMirrorConfig.sync_transaction_id, RepoMirrorConfig.sync_status,
                      RepoMirrorConfig.repository_id, RepoMirrorConfig.org_mirror_repository_id,
                      literal_column(str(rank)).label("rank"),
                      due_time.label("due_time")) \
            .where(condition, mirrored).order_by(order, RepoMirrorConfig.id).limit(limit).subquery()

    branches = [branch(0, status.immediate_clause(), due_time)]
    # In these branches the start is set (<= now), so the due time is the start: the index's order.
    branches += [branch(1, status.ready_clause(now, ready), RepoMirrorConfig.sync_start_date)
                 for ready in status.READY_STATUSES]
    branches.append(branch(1, status.expired_clause(now), due_time))
    found = union_all(*(select(b) for b in branches)).subquery("due")
    return (
        select(found.c.id, found.c.sync_transaction_id, found.c.sync_status, found.c.repository_id,
               found.c.org_mirror_repository_id)
        .order_by(found.c.rank, found.c.due_time, found.c.id)
        .limit(limit)
    )


def _build_next_due_query() -> Select[*tuple[datetime | None, ...]]:
    """One row: the first start after now in each status's range of ``ix_repomirrorconfig_ready``
    (a start counts when Quay's "ready" filter would then select the mirror), and the first lease
    expiry. Index probes only, however many mirrors there are.

    ``ORDER BY ... LIMIT 1`` rather than ``MIN()``: PostgreSQL without statistics (a table just
    filled) plans a ``MIN()`` as an aggregate over the whole range; a LIMIT stops at the first row.
    """
    now = bindparam("now", type_=DateTime)
    probes = [select(RepoMirrorConfig.sync_start_date)
              .where(*status.ready_filters(ready), RepoMirrorConfig.sync_start_date > now)
              .order_by(RepoMirrorConfig.sync_start_date).limit(1).scalar_subquery()
              for ready in status.READY_STATUSES]
    probes.append(select(RepoMirrorConfig.sync_expiration_date)
                  .where(RepoMirrorConfig.sync_status == int(RepoMirrorStatus.SYNCING),
                         RepoMirrorConfig.sync_expiration_date > now)
                  .order_by(RepoMirrorConfig.sync_expiration_date).limit(1).scalar_subquery())
    return select(*probes)


# Built once: a pass runs them with new parameters (``now``, ``limit``) without rebuilding a dozen subqueries.
DUE_MIRRORS = _build_due_query()
NEXT_DUE_TIME = _build_next_due_query()


def due(session: Session, now: datetime, limit: int) -> list[Candidate]:
    rows = session.execute(DUE_MIRRORS, {"now": now, "limit": limit})
    return [Candidate(*row) for row in rows]


def next_due(session: Session, now: datetime) -> datetime | None:
    """When the next mirror becomes due without any user action: a scheduled start or a lease expiry.

    The worker sleeps until then instead of waiting for its next poll.
    """
    times = [t for t in session.execute(NEXT_DUE_TIME, {"now": now}).one() if t is not None]
    return min(times) if times else None


def claim_many(database: Database, candidates: Sequence[Candidate], owner: str,
               lease_seconds: float) -> list[Claimed]:
    """Claim the candidates that are still due and open their runs, in one transaction; in the candidates' order.

    Each claim stays one conditional UPDATE on the row's ``sync_transaction_id``, so exactly one
    of several workers gets a mirror. The rows are claimed by increasing id: two workers' batches
    lock rows in the same order on PostgreSQL and cannot deadlock.
    """
    got: dict[int, Claimed] = {}
    with database.transaction() as session:
        for candidate in sorted(candidates, key=lambda c: c.config_id):
            lease = status.claim(session, candidate.config_id, candidate.transaction_id, owner, lease_seconds)
            if lease is not None:
                got[candidate.config_id] = _open_run(session, candidate, lease, owner)
    return [got[c.config_id] for c in candidates if c.config_id in got]


def _open_run(session: Session, candidate: Candidate, lease: status.Lease, owner: str) -> Claimed:
    if candidate.sync_status == RepoMirrorStatus.SYNC_NOW:
        trigger = RunTrigger.SYNC_NOW
    elif candidate.sync_status == RepoMirrorStatus.SYNCING:  # an expired lease: continue the dead run's trigger
        trigger = history.open_run_trigger(session, candidate.config_id) or RunTrigger.SCHEDULE
    else:
        trigger = RunTrigger.SCHEDULE
    run = history.start_run(session, repository_id=candidate.repository_id, config_id=candidate.config_id,
                            trigger=trigger, worker=owner, lease_token=lease.token)
    return Claimed(lease, candidate.config_id, candidate.repository_id, run.id, trigger, candidate.org_repository_id)
