"""Every change of an organization mirror's ``sync_status`` happens here, one guarded UPDATE each, so the API
and (later) the worker never overwrite each other's change: a status change of the API renews the row's
``sync_transaction_id``, and a write that read an older version changes nothing."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from quaymirror.db import rows_changed, utcnow
from quaymirror.mirror.models import new_uuid
from quaymirror.orgmirror.models import OrgMirrorConfig, OrgMirrorStatus

# Quay's numbers: a sync asked for keeps at least one try, a cancelled one has none left.
ON_DEMAND_RETRIES = 1
CANCELLED_RETRIES = 0


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
        sync_retries_remaining=max(config.sync_retries_remaining, ON_DEMAND_RETRIES),
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
        sync_retries_remaining=CANCELLED_RETRIES,
        sync_transaction_id=new_uuid(),
    ).execution_options(synchronize_session=False)) == 1
