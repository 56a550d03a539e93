"""A deleted mirror's history: the history routes answer 404 like the config, and a new mirror on the same
repository starts with an empty history; the old runs stay in the table for the audit trail. Both backends.

The runs are written with the worker's own history functions (quaymirror.mirror.history), as a sync writes
them; no skopeo is needed to show what the API lists.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from quaymirror.mirror import history
from quaymirror.mirror.models import MirrorSyncRun, RepoMirrorConfig, RunStatus, RunTrigger, TagOutcome
from tests.common.mirror_api import MIRROR, mirror_body

pytestmark = pytest.mark.usefixtures("quay_dns")  # no request of these tests asks the real DNS

SYNCS = f"{MIRROR}/syncs"


def _create(client, admin) -> None:
    response = client.post(MIRROR, json=mirror_body(), headers=admin)
    assert response.status_code == 201, response.get_json()


def _run(database) -> int:
    """One finished run of the repository's current configuration."""
    with database.transaction() as session:
        config = session.scalars(select(RepoMirrorConfig)).one()
        run = history.start_run(session, repository_id=config.repository_id, config_id=config.id,
                                trigger=RunTrigger.SYNC_NOW, worker="test", lease_token="t")
        history.record_tag(session, run.id, "latest", TagOutcome.COPIED, digest="sha256:" + "b" * 64, size=10)
        history.finish_run(session, run.id, RunStatus.SUCCESS)
        return run.id


def _listed(client, admin) -> list[int]:
    response = client.get(SYNCS, headers=admin)
    assert response.status_code == 200, response.get_json()
    return [run["id"] for run in response.get_json()["syncs"]]


def test_a_deleted_mirror_has_no_history_and_a_new_one_starts_empty(client, world, admin, database):
    not_found = client.get(SYNCS, headers=admin)
    assert (not_found.status_code, not_found.get_json()["error_type"]) == (404, "not_found")  # never a mirror

    _create(client, admin)
    old = [_run(database), _run(database)]
    assert _listed(client, admin) == old[::-1]
    assert client.get(f"{SYNCS}/{old[0]}", headers=admin).status_code == 200

    assert client.delete(MIRROR, headers=admin).status_code == 204
    config = client.get(MIRROR, headers=admin)
    for url in (SYNCS, f"{SYNCS}/{old[0]}", f"{SYNCS}/{old[1]}"):
        answer = client.get(url, headers=admin)
        assert (answer.status_code, answer.get_json()) == (404, config.get_json()), url  # as the config
    assert client.get(SYNCS).status_code == 401  # the caller is still checked first

    _create(client, admin)
    listed = client.get(SYNCS, headers=admin).get_json()
    assert listed == {"syncs": [], "page": 1, "has_additional": False}
    assert client.get(f"{SYNCS}/{old[1]}", headers=admin).status_code == 404  # an older mirror's run
    new = _run(database)
    assert _listed(client, admin) == [new]
    assert client.get(f"{SYNCS}/{new}", headers=admin).get_json()["tag_results"][0]["tag"] == "latest"

    with database.transaction() as session:  # the audit trail keeps the old runs, detached from any mirror
        kept = session.scalar(select(func.count()).select_from(MirrorSyncRun)
                              .where(MirrorSyncRun.id.in_(old), MirrorSyncRun.config_id.is_(None)))
    assert kept == 2
