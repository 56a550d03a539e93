"""Every change of ``sync_status`` happens here: the API and the worker both call these transitions.

Each transition is one conditional UPDATE, so concurrent API replicas and
workers never overwrite each other: the row's ``sync_transaction_id`` (config
version) guards the API's writes and the claim, and ``lease_token`` (the
claim) guards the worker's release, so a PUT during a sync cannot strand it.
The numbers these writes use (retries, the next start) come from
:mod:`quaymirror.mirror.worker.policy`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    and_,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from quaymirror.db import rows_changed, utcnow
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus, new_uuid
from quaymirror.mirror.worker import policy

# A time in a clause: a value, or a bound parameter of a statement built once (``claims``).
When = datetime | ColumnElement[datetime]


def request_sync_now(session: Session, config: RepoMirrorConfig) -> bool:
    """Quay's sync-now: from any state but a live SYNCING (an expired lease may be re-queued)."""
    now = utcnow()
    return rows_changed(session, update(RepoMirrorConfig).where(
        RepoMirrorConfig.id == config.id,
        RepoMirrorConfig.sync_transaction_id == config.sync_transaction_id,
        or_(RepoMirrorConfig.sync_status != RepoMirrorStatus.SYNCING,
            and_(RepoMirrorConfig.sync_expiration_date.is_not(None),
                 RepoMirrorConfig.sync_expiration_date <= now)),
    ).values(
        sync_status=RepoMirrorStatus.SYNC_NOW,
        sync_expiration_date=None,
        lease_token=None,
        lease_owner=None,
        sync_retries_remaining=max(config.sync_retries_remaining, policy.ON_DEMAND_RETRIES),
        sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False)) == 1


def cancel(session: Session, config: RepoMirrorConfig) -> bool:
    """Quay's sync-cancel: forced (no version check) from SYNCING or SYNC_NOW; no retries left."""
    return rows_changed(session, update(RepoMirrorConfig).where(
        RepoMirrorConfig.id == config.id,
        RepoMirrorConfig.sync_status.in_([RepoMirrorStatus.SYNCING, RepoMirrorStatus.SYNC_NOW]),
    ).values(
        sync_status=RepoMirrorStatus.CANCEL,
        sync_expiration_date=None,
        sync_retries_remaining=policy.CANCELLED_RETRIES,
        sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False)) == 1


def schedule_many(session: Session, condition: ColumnElement[bool], statuses: Collection[RepoMirrorStatus] | None,
                  now: datetime) -> int:
    """A sync now for every configuration matching ``condition`` (and in ``statuses``, when given) that is not
    running: an organization mirror's discovery scheduling its repositories. Quay's rule for those: the start
    becomes now (the schedule's grid starts there) and the retries are full."""
    conditions = [condition, RepoMirrorConfig.sync_status != RepoMirrorStatus.SYNCING]
    if statuses is not None:
        conditions.append(RepoMirrorConfig.sync_status.in_(list(statuses)))
    return rows_changed(session, update(RepoMirrorConfig).where(*conditions).values(
        sync_status=RepoMirrorStatus.SYNC_NOW, sync_start_date=now, sync_expiration_date=None,
        lease_token=None, lease_owner=None, sync_retries_remaining=policy.MAX_SYNC_RETRIES,
        sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False))


def cancel_many(session: Session, condition: ColumnElement[bool]) -> int:
    """:func:`cancel` for every configuration matching ``condition``: running ones are stopped by their
    worker's keeper (within its tick), queued ones are not taken."""
    return rows_changed(session, update(RepoMirrorConfig).where(
        condition, RepoMirrorConfig.sync_status.in_([RepoMirrorStatus.SYNCING, RepoMirrorStatus.SYNC_NOW]),
    ).values(
        sync_status=RepoMirrorStatus.CANCEL, sync_expiration_date=None,
        sync_retries_remaining=policy.CANCELLED_RETRIES, sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False))


def reset_many(session: Session, condition: ColumnElement[bool]) -> int:
    """Never run again, unscheduled, for every configuration matching ``condition`` that is not running: a
    repository an organization mirror had set aside (SKIP) and finds again."""
    return rows_changed(session, update(RepoMirrorConfig).where(
        condition, RepoMirrorConfig.sync_status != RepoMirrorStatus.SYNCING,
    ).values(
        sync_status=RepoMirrorStatus.NEVER_RUN, sync_start_date=None, sync_expiration_date=None,
        sync_retries_remaining=policy.MAX_SYNC_RETRIES, sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False))


# Quay's second filter, "ready": every status but SYNCING and SYNC_NOW.
READY_STATUSES = (RepoMirrorStatus.CANCEL, RepoMirrorStatus.FAIL, RepoMirrorStatus.NEVER_RUN,
                  RepoMirrorStatus.SUCCESS)


def immediate_clause() -> ColumnElement[bool]:
    """Quay's first filter: a sync-now not taken yet (``is_enabled`` and the schedule do not matter)."""
    return and_(RepoMirrorConfig.sync_status == RepoMirrorStatus.SYNC_NOW,
                RepoMirrorConfig.sync_expiration_date.is_(None))


def ready_filters(status: RepoMirrorStatus | None = None) -> tuple[ColumnElement[bool], ...]:
    """Quay's second filter without its time condition, for one of ``READY_STATUSES`` or all of them.

    The terms besides the status are, word for word, the predicate of the partial index
    ``ix_repomirrorconfig_ready`` (sync_status, sync_start_date, id): SQLite uses a partial index
    only when the query repeats its predicate's terms, so keep the two in step (tests/mirror/worker/test_claims.py
    checks both backends' plans). The 0 is written in the SQL, not bound: a planner
    cannot match ``> $1`` with the index's ``> 0`` in a generic (server-side prepared) plan.
    """
    return (
        (RepoMirrorConfig.sync_status == status if status is not None
         else RepoMirrorConfig.sync_status.in_(READY_STATUSES)),
        RepoMirrorConfig.sync_retries_remaining > literal_column("0"),
        RepoMirrorConfig.sync_expiration_date.is_(None),
        RepoMirrorConfig.is_enabled.is_(True),
    )


def ready_clause(now: When, status: RepoMirrorStatus | None = None) -> ColumnElement[bool]:
    """Quay's second filter: scheduled, start reached, retries left, no lease, enabled."""
    return and_(*ready_filters(status), RepoMirrorConfig.sync_start_date <= now)


def expired_clause(now: When) -> ColumnElement[bool]:
    """The third filter: a SYNCING whose lease ran out (its worker died)."""
    # Unlike Quay, an expired SYNCING lease is reclaimed whatever the schedule says.
    return and_(RepoMirrorConfig.sync_status == RepoMirrorStatus.SYNCING,
                RepoMirrorConfig.sync_expiration_date <= now)


def eligible_clause(now: When) -> ColumnElement[bool]:
    """Quay's three eligibility filters (immediate, ready, expired lease)."""
    return or_(immediate_clause(), ready_clause(now), expired_clause(now))


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a mirror: the token its writes are guarded by, and when it runs out."""

    config_id: int
    token: str
    expires: datetime


def claim(session: Session, config_id: int, transaction_id: str | None, owner: str,
          lease_seconds: float) -> Lease | None:
    """Take the mirror for one run, if it is still eligible and nobody changed it since it was read."""
    now = utcnow()
    token = new_uuid()
    expires = now + timedelta(seconds=lease_seconds)
    changed = rows_changed(session, update(RepoMirrorConfig).where(
        RepoMirrorConfig.id == config_id,
        RepoMirrorConfig.sync_transaction_id == transaction_id,
        eligible_clause(now),
    ).values(
        sync_status=RepoMirrorStatus.SYNCING,
        sync_expiration_date=expires,
        lease_token=token,
        lease_owner=owner,
        sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False))
    return Lease(config_id, token, expires) if changed == 1 else None


def renew(session: Session, lease: Lease, lease_seconds: float) -> Lease | None:
    """Extend a lease still held; None when it was lost (cancelled, or reclaimed after expiry)."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    changed = rows_changed(session, update(RepoMirrorConfig).where(
        RepoMirrorConfig.id == lease.config_id,
        RepoMirrorConfig.lease_token == lease.token,
        RepoMirrorConfig.sync_status == RepoMirrorStatus.SYNCING,
    ).values(sync_expiration_date=expires).execution_options(synchronize_session=False))
    return Lease(lease.config_id, lease.token, expires) if changed == 1 else None


class LeaseRow(NamedTuple):
    """What the lease keeper reads of a running mirror's row."""

    sync_status: int
    lease_token: str | None

    def held_by(self, lease: Lease) -> bool:
        return self.lease_token == lease.token

    @property
    def cancelled(self) -> bool:
        return self.sync_status == RepoMirrorStatus.CANCEL


def leases(session: Session, config_ids: Collection[int]) -> dict[int, LeaseRow]:
    """The status and lease token of each of these mirrors (a deleted one is missing)."""
    found = session.execute(
        select(RepoMirrorConfig.id, RepoMirrorConfig.sync_status, RepoMirrorConfig.lease_token)
        .where(RepoMirrorConfig.id.in_(config_ids))
    )
    return {config_id: LeaseRow(sync_status, token) for config_id, sync_status, token in found}


def release(session: Session, lease: Lease, outcome: RepoMirrorStatus) -> RepoMirrorStatus | None:
    """End a run with SUCCESS, FAIL or CANCEL: the status actually written (a cancel that arrived meanwhile
    wins: CANCEL), or None when the lease was no longer ours (reclaimed after expiry)."""
    row = session.get(RepoMirrorConfig, lease.config_id, populate_existing=True,
                      with_for_update=not _is_sqlite(session))
    if row is None or row.lease_token != lease.token:
        return None
    values: dict[str, Any] = {"sync_expiration_date": None, "lease_token": None, "lease_owner": None,
                              "sync_transaction_id": new_uuid()}
    if row.sync_status == RepoMirrorStatus.CANCEL or outcome == RepoMirrorStatus.CANCEL:
        written = RepoMirrorStatus.CANCEL
        values.update(sync_retries_remaining=policy.CANCELLED_RETRIES)
    else:
        written = outcome
        after = policy.after_run(failed=outcome == RepoMirrorStatus.FAIL,
                                 retries_remaining=row.sync_retries_remaining)
        values.update(sync_retries_remaining=after.retries_remaining)
        if after.reschedule:
            values.update(sync_start_date=policy.next_start(row.sync_start_date, row.sync_interval, utcnow()))
    changed = rows_changed(session, update(RepoMirrorConfig).where(
        RepoMirrorConfig.id == lease.config_id, RepoMirrorConfig.lease_token == lease.token,
    ).values(sync_status=written, **values).execution_options(synchronize_session=False))
    return written if changed == 1 else None


def abandon(session: Session, lease: Lease) -> bool:
    """Give a claim back unfinished (worker shutdown): SYNC_NOW with no lease, so any worker takes it at once.

    Only while the row is still SYNCING under our lease: a cancel that arrived
    meanwhile stays a CANCEL (released as such by the caller). Retries are
    kept (at least one, as sync-now does); the schedule is untouched.
    """
    at_least = func.max if _is_sqlite(session) else func.greatest
    return rows_changed(session, update(RepoMirrorConfig).where(
        RepoMirrorConfig.id == lease.config_id,
        RepoMirrorConfig.lease_token == lease.token,
        RepoMirrorConfig.sync_status == RepoMirrorStatus.SYNCING,
    ).values(
        sync_status=RepoMirrorStatus.SYNC_NOW, sync_expiration_date=None, lease_token=None, lease_owner=None,
        sync_retries_remaining=at_least(RepoMirrorConfig.sync_retries_remaining, policy.ON_DEMAND_RETRIES),
        sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False)) == 1


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"
