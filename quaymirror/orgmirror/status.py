"""Every change of an organization mirror's ``sync_status`` happens here, one guarded UPDATE each, so the API
and the worker never overwrite each other's change: a status change of the API renews the row's
``sync_transaction_id``, and a write that read an older version changes nothing."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from quaymirror.db import rows_changed, utcnow
from quaymirror.mirror.models import new_uuid
from quaymirror.mirror.worker import policy
from quaymirror.mirror.worker.policy import MAX_SYNC_RETRIES
from quaymirror.orgmirror.models import (
    OrgMirrorConfig,
    OrgMirrorRepository,
    OrgMirrorRepoStatus,
    OrgMirrorStatus,
)


def request_sync_now(session: Session, config: OrgMirrorConfig) -> bool:
    """Quay's sync-now: a discovery now, unless one runs or the row changed since it was read (False).

    Also from CANCEL: a pending cancel is replaced by the new sync, as in Quay.
    """
    return rows_changed(session, update(OrgMirrorConfig).where(
        OrgMirrorConfig.id == config.id,
        OrgMirrorConfig.sync_transaction_id == config.sync_transaction_id,
        OrgMirrorConfig.sync_status != OrgMirrorStatus.SYNCING,
    ).values(
        sync_status=OrgMirrorStatus.SYNC_NOW,
        sync_start_date=utcnow(),
        sync_expiration_date=None,
        sync_retries_remaining=max(config.sync_retries_remaining, policy.ON_DEMAND_RETRIES),
        sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False)) == 1


def cancel(session: Session, config: OrgMirrorConfig) -> bool:
    """Quay's sync-cancel: forced from every status but CANCEL (False then). ``sync_expiration_date`` set to
    now marks the cancel as pending for the worker; the next scheduled start is kept."""
    return rows_changed(session, update(OrgMirrorConfig).where(
        OrgMirrorConfig.id == config.id,
        OrgMirrorConfig.sync_status != OrgMirrorStatus.CANCEL,
    ).values(
        sync_status=OrgMirrorStatus.CANCEL,
        sync_expiration_date=utcnow(),
        sync_retries_remaining=policy.CANCELLED_RETRIES,
        sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False)) == 1


# ------------------------------------------------------------------ the worker's discovery
# How long a discovery's claim lasts (Quay's ORG_MIRROR_MAX_DISCOVERY_DURATION): a worker that died during one
# leaves the configuration to another worker after this.
DISCOVERY_SECONDS = 1800


def _due_clause(now: datetime) -> ColumnElement[bool]:
    """Quay's four ways for an enabled configuration to be due for a discovery: a sync-now not taken, a pending
    cancel, a scheduled start reached with retries left, a discovery whose claim ran out (its worker died;
    unlike Quay, whatever the schedule says)."""
    return and_(OrgMirrorConfig.is_enabled.is_(True), or_(
        and_(OrgMirrorConfig.sync_status == OrgMirrorStatus.SYNC_NOW, OrgMirrorConfig.sync_expiration_date.is_(None)),
        and_(OrgMirrorConfig.sync_status == OrgMirrorStatus.CANCEL,
             OrgMirrorConfig.sync_expiration_date.is_not(None)),
        and_(OrgMirrorConfig.sync_status != OrgMirrorStatus.SYNCING, OrgMirrorConfig.sync_start_date <= now,
             OrgMirrorConfig.sync_retries_remaining > 0, OrgMirrorConfig.sync_expiration_date.is_(None)),
        and_(OrgMirrorConfig.sync_status == OrgMirrorStatus.SYNCING, OrgMirrorConfig.sync_expiration_date <= now),
    ))


@dataclass(frozen=True)
class DueConfig:
    """A configuration due for a discovery, as read: its claim succeeds only on this version of the row."""

    config_id: int
    transaction_id: str | None
    sync_status: int


def due(session: Session, now: datetime, limit: int) -> list[DueConfig]:
    """The configurations due for a discovery, the longest waiting first (Quay's order: the start date)."""
    rows = session.execute(
        select(OrgMirrorConfig.id, OrgMirrorConfig.sync_transaction_id, OrgMirrorConfig.sync_status)
        .where(_due_clause(now))
        .order_by(OrgMirrorConfig.sync_start_date.is_(None), OrgMirrorConfig.sync_start_date, OrgMirrorConfig.id)
        .limit(limit))
    return [DueConfig(config_id, transaction_id, sync_status) for config_id, transaction_id, sync_status in rows]


def claim(session: Session, due_config: DueConfig) -> str | None:
    """Take the configuration for one discovery (SYNCING); the claim's token (the row's new version), or None
    when another worker or a user changed the row since it was read. Writes guarded by the token are the
    discovery's; a cancel or a PUT meanwhile renews the version, and the discovery's release then changes
    nothing (the cancel stays pending for the next pass, as in Quay)."""
    now = utcnow()
    token = new_uuid()
    changed = rows_changed(session, update(OrgMirrorConfig).where(
        OrgMirrorConfig.id == due_config.config_id,
        OrgMirrorConfig.sync_transaction_id == due_config.transaction_id,
        _due_clause(now),
    ).values(
        sync_status=OrgMirrorStatus.SYNCING,
        sync_expiration_date=now + timedelta(seconds=DISCOVERY_SECONDS),
        sync_transaction_id=token,
    ).execution_options(synchronize_session=False))
    return token if changed == 1 else None


def release(session: Session, config_id: int, token: str, outcome: OrgMirrorStatus) -> bool:
    """End a discovery with SUCCESS or FAIL (a processed cancel ends as SUCCESS, as in Quay): Quay's schedule
    arithmetic (:mod:`quaymirror.mirror.worker.policy`, the repository mirror's): a success, or a failure with
    no retry left, waits for the next point of the schedule's grid with full retries; a failure with retries
    left is due again at the next pass. False when the claim was no longer ours."""
    row = session.execute(select(OrgMirrorConfig.sync_start_date, OrgMirrorConfig.sync_interval,
                                 OrgMirrorConfig.sync_retries_remaining)
                          .where(OrgMirrorConfig.id == config_id, OrgMirrorConfig.sync_transaction_id == token)
                          ).first()
    if row is None:
        return False
    written = OrgMirrorStatus.FAIL if outcome == OrgMirrorStatus.FAIL else OrgMirrorStatus.SUCCESS
    after = policy.after_run(failed=written == OrgMirrorStatus.FAIL, retries_remaining=row.sync_retries_remaining)
    values: dict[str, Any] = {"sync_status": written, "sync_expiration_date": None,
                              "sync_retries_remaining": after.retries_remaining, "sync_transaction_id": new_uuid()}
    if after.reschedule:
        values["sync_start_date"] = policy.next_start(row.sync_start_date, row.sync_interval, utcnow())
    return rows_changed(session, update(OrgMirrorConfig).where(
        OrgMirrorConfig.id == config_id, OrgMirrorConfig.sync_transaction_id == token,
    ).values(**values).execution_options(synchronize_session=False)) == 1


# ------------------------------------------------------------------ the discovered repositories' rows
def _rows(config_id: int, *conditions: ColumnElement[bool]) -> Any:
    return update(OrgMirrorRepository).where(OrgMirrorRepository.org_mirror_config_id == config_id, *conditions) \
        .execution_options(synchronize_session=False)


def skip(session: Session, config_id: int, names: Collection[str], message: str) -> int:
    """Set these repositories aside (SKIP, Quay's ``message`` saying why), unless running. One aside already
    for another reason takes the new one (Quay keeps the first: a repository filtered out and then deleted
    upstream would still say it is filtered out)."""
    changed = 0
    for chunk in chunks(names):
        changed += rows_changed(session, _rows(
            config_id, OrgMirrorRepository.repository_name.in_(chunk),
            OrgMirrorRepository.sync_status != OrgMirrorRepoStatus.SYNCING,
            or_(OrgMirrorRepository.sync_status != OrgMirrorRepoStatus.SKIP,
                OrgMirrorRepository.status_message.is_(None), OrgMirrorRepository.status_message != message),
        ).values(sync_status=OrgMirrorRepoStatus.SKIP, status_message=message, sync_start_date=None,
                 sync_expiration_date=None, sync_retries_remaining=0, sync_transaction_id=new_uuid()))
    return changed


def unskip(session: Session, config_id: int, names: Collection[str]) -> int:
    """Repositories set aside and found again: never run, unscheduled, full retries."""
    changed = 0
    for chunk in chunks(names):
        changed += rows_changed(session, _rows(
            config_id, OrgMirrorRepository.repository_name.in_(chunk),
            OrgMirrorRepository.sync_status == OrgMirrorRepoStatus.SKIP,
        ).values(sync_status=OrgMirrorRepoStatus.NEVER_RUN, status_message=None, sync_start_date=None,
                 sync_expiration_date=None, sync_retries_remaining=MAX_SYNC_RETRIES, sync_transaction_id=new_uuid()))
    return changed


def schedule(session: Session, config_id: int, statuses: Collection[OrgMirrorRepoStatus] | None,
             now: datetime) -> int:
    """Due now (SYNC_NOW) for every repository in ``statuses`` (None: all but SKIP) that is not running."""
    conditions = [OrgMirrorRepository.sync_status.not_in([OrgMirrorRepoStatus.SKIP, OrgMirrorRepoStatus.SYNCING,
                                                           OrgMirrorRepoStatus.SYNC_NOW])]
    if statuses is not None:
        conditions.append(OrgMirrorRepository.sync_status.in_(list(statuses)))
    return rows_changed(session, _rows(config_id, *conditions).values(
        sync_status=OrgMirrorRepoStatus.SYNC_NOW, sync_start_date=now, sync_expiration_date=None,
        sync_retries_remaining=MAX_SYNC_RETRIES, status_message=None, sync_transaction_id=new_uuid()))


def cancel_repositories(session: Session, config_id: int) -> int:
    """Every repository but those cancelled or set aside becomes CANCEL (running ones too: their runs stop),
    unscheduled, with no retry left; Quay's propagation of a cancel."""
    return rows_changed(session, _rows(
        config_id, OrgMirrorRepository.sync_status.not_in([OrgMirrorRepoStatus.CANCEL, OrgMirrorRepoStatus.SKIP]),
    ).values(sync_status=OrgMirrorRepoStatus.CANCEL, sync_start_date=None, sync_retries_remaining=0,
             status_message=None))


def creation_failed(session: Session, row_id: int, message: str) -> None:
    """The local repository could not be created: FAIL, with Quay's message, not retried until found again."""
    session.execute(update(OrgMirrorRepository).where(OrgMirrorRepository.id == row_id).values(
        sync_status=OrgMirrorRepoStatus.FAIL, status_message=message, sync_retries_remaining=0,
        sync_transaction_id=new_uuid()).execution_options(synchronize_session=False))


def running(session: Session, row_id: int) -> None:
    """The repository's sync run started."""
    session.execute(update(OrgMirrorRepository).where(OrgMirrorRepository.id == row_id).values(
        sync_status=OrgMirrorRepoStatus.SYNCING, sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False))


def follow_run(session: Session, row_id: int, sync_status: int, start: datetime | None, retries: int,
               message: str | None, *, finished: bool) -> None:
    """A repository's row takes the status its sync run's configuration was released with (the same values:
    SUCCESS, FAIL, CANCEL, or SYNC_NOW when a shutdown gave the run back), so the API's list and counts say
    what the worker does; ``finished``: the run ended (its end is the last sync date). A row set aside
    meanwhile stays aside."""
    values: dict[str, Any] = {"sync_status": sync_status, "sync_start_date": start,
                              "sync_retries_remaining": retries, "status_message": message,
                              "sync_transaction_id": new_uuid()}
    if finished:
        values["last_sync_date"] = utcnow()
    session.execute(update(OrgMirrorRepository).where(
        OrgMirrorRepository.id == row_id, OrgMirrorRepository.sync_status != OrgMirrorRepoStatus.SKIP,
    ).values(**values).execution_options(synchronize_session=False))


# IN lists are cut to this many names (Quay's 900: below every backend's bound-parameter limit).
IN_CHUNK = 900


def chunks(names: Collection[str]) -> list[list[str]]:
    ordered = list(names)
    return [ordered[i:i + IN_CHUNK] for i in range(0, len(ordered), IN_CHUNK)]
