"""Every change of ``sync_status`` happens here: the API and the worker both call these transitions.

Each transition is one conditional UPDATE, so concurrent API replicas and
workers never overwrite each other: the row's ``sync_transaction_id`` (config
version) guards the API's writes and the claim, and ``lease_token`` (the
claim) guards the worker's release, so a PUT during a sync cannot strand it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, literal_column, or_, update
from sqlalchemy.orm import Session

from quaymirror.db import utcnow
from quaymirror.mirror.models import MAX_SYNC_RETRIES, RepoMirrorConfig, RepoMirrorStatus, new_uuid

S = RepoMirrorStatus
C = RepoMirrorConfig


def request_sync_now(session: Session, config: RepoMirrorConfig) -> bool:
    """Quay's sync-now: from any state but a live SYNCING (an expired lease may be re-queued)."""
    now = utcnow()
    result = session.execute(
        update(C)
        .where(
            C.id == config.id,
            C.sync_transaction_id == config.sync_transaction_id,
            or_(
                C.sync_status != S.SYNCING,
                and_(C.sync_expiration_date.is_not(None), C.sync_expiration_date <= now),
            ),
        )
        .values(
            sync_status=S.SYNC_NOW,
            sync_expiration_date=None,
            lease_token=None,
            lease_owner=None,
            sync_retries_remaining=max(config.sync_retries_remaining, 1),
            sync_transaction_id=new_uuid(),
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def cancel(session: Session, config: RepoMirrorConfig) -> bool:
    """Quay's sync-cancel: forced (no version check) from SYNCING or SYNC_NOW; retries 0."""
    result = session.execute(
        update(C)
        .where(C.id == config.id, C.sync_status.in_([S.SYNCING, S.SYNC_NOW]))
        .values(
            sync_status=S.CANCEL,
            sync_expiration_date=None,
            sync_retries_remaining=0,
            sync_transaction_id=new_uuid(),
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


# Quay's second filter, "ready": every status but SYNCING and SYNC_NOW.
READY_STATUSES = (S.CANCEL, S.FAIL, S.NEVER_RUN, S.SUCCESS)


def immediate_clause():
    """Quay's first filter: a sync-now not taken yet (``is_enabled`` and the schedule do not matter)."""
    return and_(C.sync_status == S.SYNC_NOW, C.sync_expiration_date.is_(None))


def ready_filters(status: RepoMirrorStatus | None = None) -> tuple:
    """Quay's second filter without its time condition, for one of ``READY_STATUSES`` or all of them.

    The terms besides the status are, word for word, the predicate of the partial index
    ``ix_repomirrorconfig_ready`` (sync_status, sync_start_date, id): SQLite uses a partial index
    only when the query repeats its predicate's terms, so keep the two in step. The 0 is written
    in the SQL, not bound: a planner cannot match ``> $1`` with the index's ``> 0`` in a generic
    (server-side prepared) plan.
    """
    return (
        C.sync_status == status if status is not None else C.sync_status.in_(READY_STATUSES),
        C.sync_retries_remaining > literal_column("0"),
        C.sync_expiration_date.is_(None),
        C.is_enabled.is_(True),
    )


def ready_clause(now: datetime, status: RepoMirrorStatus | None = None):
    """Quay's second filter: scheduled, start reached, retries left, no lease, enabled."""
    return and_(*ready_filters(status), C.sync_start_date <= now)


def expired_clause(now: datetime):
    """The third filter: a SYNCING whose lease ran out (its worker died)."""
    # Unlike Quay, an expired SYNCING lease is reclaimed whatever the schedule says.
    return and_(C.sync_status == S.SYNCING, C.sync_expiration_date <= now)


def eligible_clause(now: datetime):
    """Quay's three eligibility filters (immediate, ready, expired lease)."""
    return or_(immediate_clause(), ready_clause(now), expired_clause(now))


@dataclass(frozen=True)
class Lease:
    config_id: int
    token: str
    expires: datetime


def claim(session: Session, config_id: int, transaction_id: str | None, owner: str,
          lease_seconds: int) -> Lease | None:
    """Take the mirror for one run, if it is still eligible and nobody changed it since it was read."""
    now = utcnow()
    token = new_uuid()
    expires = now + timedelta(seconds=lease_seconds)
    result = session.execute(
        update(C)
        .where(C.id == config_id, C.sync_transaction_id == transaction_id, eligible_clause(now))
        .values(
            sync_status=S.SYNCING,
            sync_expiration_date=expires,
            lease_token=token,
            lease_owner=owner,
            sync_transaction_id=new_uuid(),
        )
        .execution_options(synchronize_session=False)
    )
    return Lease(config_id, token, expires) if result.rowcount == 1 else None


def renew(session: Session, lease: Lease, lease_seconds: int) -> Lease | None:
    """Extend a lease still held; None when it was lost (cancelled, or reclaimed after expiry)."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    result = session.execute(
        update(C)
        .where(C.id == lease.config_id, C.lease_token == lease.token, C.sync_status == S.SYNCING)
        .values(sync_expiration_date=expires)
        .execution_options(synchronize_session=False)
    )
    return Lease(lease.config_id, lease.token, expires) if result.rowcount == 1 else None


def next_start(start: datetime | None, interval: int, now: datetime) -> datetime | None:
    """The first point of the grid ``start + k*interval`` strictly after now (Quay's rule).

    Unlike Quay, a zero interval means "no schedule" (only sync-now runs it), a
    missing start counts from now (second precision) instead of crashing the
    release, and the result is exactly on the grid (Quay drops the elapsed
    microseconds, so its dates drift off the grid and gain microseconds).
    """
    if interval <= 0:
        return None
    base = start or now.replace(microsecond=0)
    if base > now:
        return base
    steps = int((now - base).total_seconds() // interval) + 1
    return base + timedelta(seconds=steps * interval)


def release(session: Session, lease: Lease, outcome: RepoMirrorStatus) -> bool:
    """End a run with SUCCESS, FAIL or CANCEL; a cancel that arrived meanwhile wins.

    Returns False when the lease was no longer ours (reclaimed after expiry).
    """
    return release_outcome(session, lease, outcome) is not None


def release_outcome(session: Session, lease: Lease, outcome: RepoMirrorStatus) -> RepoMirrorStatus | None:
    """:func:`release`, returning the status actually written (CANCEL when a cancel won), or None."""
    row = session.get(C, lease.config_id, populate_existing=True, with_for_update=not _is_sqlite(session))
    if row is None or row.lease_token != lease.token:
        return None
    now = utcnow()
    values: dict = {"sync_expiration_date": None, "lease_token": None, "lease_owner": None,
                    "sync_transaction_id": new_uuid()}
    if row.sync_status == S.CANCEL or outcome == S.CANCEL:
        values.update(sync_status=S.CANCEL, sync_retries_remaining=0)
    else:
        retries = row.sync_retries_remaining
        if outcome == S.FAIL:
            retries = max(0, retries - 1)
        if outcome == S.SUCCESS or retries < 1:
            values.update(sync_start_date=next_start(row.sync_start_date, row.sync_interval, now),
                          sync_retries_remaining=MAX_SYNC_RETRIES)
        else:
            values.update(sync_retries_remaining=retries)
        values["sync_status"] = outcome
    result = session.execute(
        update(C).where(C.id == lease.config_id, C.lease_token == lease.token).values(**values)
        .execution_options(synchronize_session=False)
    )
    return RepoMirrorStatus(values["sync_status"]) if result.rowcount == 1 else None


def abandon(session: Session, lease: Lease) -> bool:
    """Give a claim back unfinished (worker shutdown): SYNC_NOW with no lease, so any worker takes it at once.

    Only while the row is still SYNCING under our lease: a cancel that arrived
    meanwhile stays a CANCEL (released as such by the caller). Retries are
    kept (at least 1, as sync-now does); the schedule is untouched.
    """
    result = session.execute(
        update(C)
        .where(C.id == lease.config_id, C.lease_token == lease.token, C.sync_status == S.SYNCING)
        .values(sync_status=S.SYNC_NOW, sync_expiration_date=None, lease_token=None, lease_owner=None,
                sync_retries_remaining=func.max(C.sync_retries_remaining, 1)
                if _is_sqlite(session) else func.greatest(C.sync_retries_remaining, 1),
                sync_transaction_id=new_uuid())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"
