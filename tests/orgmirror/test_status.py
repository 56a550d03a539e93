"""The organization mirror's status changes: one guarded UPDATE each, so a write that read an older version
of the configuration changes nothing (the API then answers Quay's conflict text)."""

from __future__ import annotations

from sqlalchemy import select, update

from quaymirror.orgmirror import status
from quaymirror.orgmirror.models import OrgMirrorConfig, OrgMirrorStatus
from tests.common.org_mirror_api import org_mirror_body

MIRROR = "/api/v1/organization/sellnsmall/mirror"


def _config(session) -> OrgMirrorConfig:
    return session.scalars(select(OrgMirrorConfig)).one()


def test_sync_now_from_a_stale_read_changes_nothing(client, orgs, database):
    assert client.post(MIRROR, json=org_mirror_body(), headers=orgs.headers("ORGADMIN")).status_code == 201
    with database.transaction() as session:
        stale = _config(session)
        session.expunge(stale)
    with database.transaction() as session:  # someone else's change in between
        assert status.cancel(session, _config(session))
    with database.transaction() as session:
        assert status.request_sync_now(session, stale) is False
        assert _config(session).sync_status == OrgMirrorStatus.CANCEL
        fresh = _config(session)
        assert status.request_sync_now(session, fresh) is True
    with database.sessionmaker() as session:
        row = _config(session)
        assert row.sync_status == OrgMirrorStatus.SYNC_NOW and row.sync_transaction_id != fresh.sync_transaction_id


def test_sync_now_never_interrupts_a_running_discovery(client, orgs, database):
    assert client.post(MIRROR, json=org_mirror_body(), headers=orgs.headers("ORGADMIN")).status_code == 201
    with database.transaction() as session:
        session.execute(update(OrgMirrorConfig).values(sync_status=OrgMirrorStatus.SYNCING))
    with database.transaction() as session:
        assert status.request_sync_now(session, _config(session)) is False
        assert status.cancel(session, _config(session)) is True
        assert status.cancel(session, _config(session)) is False  # already cancelled
