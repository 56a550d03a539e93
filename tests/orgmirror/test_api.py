"""The organization mirror API beyond the recorded exchanges: what each operation stores and answers, the
feature flag, the list's paging and filter, sync-now's and cancel's rules (Quay's bugs fixed)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, update

from quaymirror.accounts import service as accounts
from quaymirror.audit import LogEntry
from quaymirror.orgmirror.models import (
    OrgMirrorConfig,
    OrgMirrorRepository,
    OrgMirrorRepoStatus,
    OrgMirrorStatus,
)
from quaymirror.repositories import service as repositories
from quaymirror.repositories.models import Repository, RepositoryState
from tests.common.org_mirror_api import org_mirror_body

MIRROR = "/api/v1/organization/sellnsmall/mirror"


@pytest.fixture
def admin(orgs) -> dict[str, str]:
    return orgs.headers("ORGADMIN")


def configure(client, admin, **overrides) -> None:
    response = client.post(MIRROR, json=org_mirror_body(**overrides), headers=admin)
    assert response.status_code == 201, response.get_data(as_text=True)


def config_row(database) -> OrgMirrorConfig:
    with database.sessionmaker() as session:
        return session.scalars(select(OrgMirrorConfig)).one()


def discover(database, statuses: dict[str, OrgMirrorRepoStatus], *, create: tuple[str, ...] = ()) -> None:
    """What the worker's discovery would leave: one row per name in ``statuses``; ``create``: those whose
    local repository exists (ORG_MIRROR)."""
    with database.transaction() as session:
        org = accounts.get_by_name(session, "sellnsmall")
        config = session.scalars(select(OrgMirrorConfig)).one()
        for name, status in statuses.items():
            row = OrgMirrorRepository(org_mirror_config_id=config.id, repository_name=name, sync_status=status)
            if name in create:
                repo = repositories.create(session, org, name, state=RepositoryState.ORG_MIRROR)
                row.repository_id = repo.id
            session.add(row)


def test_feature_off_the_routes_do_not_exist(app_with, orgs):
    client = app_with(feature_org_mirror=False).test_client()
    for method, path in (("GET", MIRROR), ("POST", MIRROR), ("POST", f"{MIRROR}/sync-now"),
                         ("GET", f"{MIRROR}/repositories"), ("POST", f"{MIRROR}/verify")):
        response = client.open(path, method=method, json=org_mirror_body(), headers=orgs.headers("ORGADMIN"))
        assert response.status_code == 404, (method, path)
        assert response.get_json()["error_type"] == "not_found"
    document = client.get("/api/v1/discovery").get_json()
    assert not any("/mirror" in path and "/organization/" in path for path in document["paths"])


def test_post_then_get_answers_quay_keys_in_order_and_never_the_password(client, admin, database):
    configure(client, admin, external_registry_username="bob", external_registry_password="s3cret",
              external_registry_config={"verify_tls": False, "extra": {"kept": [1, 2]}},
              repository_filters=["app-*"], external_registry_type="registry")
    response = client.get(MIRROR, headers=admin)
    assert response.status_code == 200
    body = json.loads(response.get_data(as_text=True))
    assert list(body) == [
        "is_enabled", "external_registry_type", "external_registry_url", "external_namespace",
        "external_registry_username", "has_external_registry_password", "external_registry_config",
        "repository_filters", "robot_username", "visibility", "sync_interval", "sync_start_date",
        "sync_expiration_date", "sync_status", "sync_retries_remaining", "repo_sync_status_counts",
        "skopeo_timeout", "creation_date"]
    assert body["external_registry_type"] == "registry"
    assert body["external_registry_username"] == "bob" and body["has_external_registry_password"] is True
    assert body["external_registry_config"] == {"verify_tls": False, "extra": {"kept": [1, 2]}}
    assert "s3cret" not in response.get_data(as_text=True)
    row = config_row(database)
    assert "bob" not in (row.external_registry_username or "") and "s3cret" not in (row.external_registry_password or "")
    with database.sessionmaker() as session:
        entry = session.scalars(select(LogEntry).where(LogEntry.kind == "org_mirror_enabled")).one()
        assert "s3cret" not in entry.metadata_json
        assert json.loads(entry.metadata_json)["external_registry_type"] == "registry"


def test_counts_hold_every_status_and_skip_repositories_marked_for_deletion(client, admin, database):
    configure(client, admin)
    discover(database, {"a": OrgMirrorRepoStatus.SKIP, "b": OrgMirrorRepoStatus.FAIL,
                        "c": OrgMirrorRepoStatus.SUCCESS, "gone": OrgMirrorRepoStatus.SUCCESS}, create=("c", "gone"))
    with database.transaction() as session:
        session.execute(update(Repository).where(Repository.name == "gone")
                        .values(state=RepositoryState.MARKED_FOR_DELETION))
    counts = client.get(MIRROR, headers=admin).get_json()["repo_sync_status_counts"]
    assert list(counts) == ["CANCEL", "FAIL", "NEVER_RUN", "SUCCESS", "SYNCING", "SYNC_NOW", "SKIP"]
    assert counts == {"CANCEL": 0, "FAIL": 1, "NEVER_RUN": 0, "SUCCESS": 1, "SYNCING": 0, "SYNC_NOW": 0, "SKIP": 1}
    listed = client.get(f"{MIRROR}/repositories", headers=admin).get_json()
    assert [r["name"] for r in listed["repositories"]] == ["a", "b", "c"]
    assert listed["repositories"][2]["quay_repository"] == "sellnsmall/c"


def test_dates_round_trip(client, admin):
    """GET answers the dates as POST and PUT take them (Quay answers microseconds it then refuses)."""
    configure(client, admin)
    assert client.post(f"{MIRROR}/sync-now", headers=admin).status_code == 204
    start = client.get(MIRROR, headers=admin).get_json()["sync_start_date"]
    assert client.put(MIRROR, json={"sync_start_date": start}, headers=admin).status_code == 200
    assert client.get(MIRROR, headers=admin).get_json()["sync_start_date"] == start


def test_put_applies_nothing_when_a_later_check_fails(client, admin, database):
    configure(client, admin)
    response = client.put(MIRROR, json={"sync_interval": 7200, "external_namespace": "p2",
                                        "robot_username": "buynlarge+coolrobot"}, headers=admin)
    assert response.status_code == 400
    row = config_row(database)
    assert (row.sync_interval, row.external_namespace) == (3600, "my-project")


def test_put_audits_every_key_sent_and_both_references(client, admin, database):
    configure(client, admin)
    body = {"sync_interval": 7200, "external_namespace": "p2", "unknown_key": 1}
    # Sent as written: Flask's test client would sort the keys of json=.
    assert client.put(MIRROR, data=json.dumps(body), content_type="application/json",
                      headers=admin).status_code == 200
    with database.sessionmaker() as session:
        entry = session.scalars(select(LogEntry).where(LogEntry.kind == "org_mirror_config_changed")).one()
    metadata = json.loads(entry.metadata_json)
    assert metadata["updated_fields"] == ["sync_interval", "external_namespace", "unknown_key"]
    assert metadata["old_external_reference"] == "https://harbor.example.com/my-project"
    assert metadata["external_reference"] == "https://harbor.example.com/p2"


def test_put_replaces_the_registry_config_and_clears_credentials(client, admin):
    configure(client, admin, external_registry_username="bob", external_registry_password="pw",
              external_registry_config={"verify_tls": True, "proxy": {"http_proxy": "http://p:3128"}})
    assert client.put(MIRROR, json={"external_registry_config": {"verify_tls": False},
                                    "external_registry_username": "", "external_registry_password": None},
                      headers=admin).status_code == 200
    body = client.get(MIRROR, headers=admin).get_json()
    assert body["external_registry_config"] == {"verify_tls": False}
    assert body["external_registry_username"] is None and body["has_external_registry_password"] is False


def test_delete_frees_the_repositories_it_created_and_only_those(client, admin, database):
    configure(client, admin)
    discover(database, {"mine": OrgMirrorRepoStatus.SUCCESS, "locked": OrgMirrorRepoStatus.SUCCESS},
             create=("mine", "locked"))
    with database.transaction() as session:
        session.execute(update(Repository).where(Repository.name == "locked").values(state=RepositoryState.READ_ONLY))
    assert client.delete(MIRROR, headers=admin).status_code == 204
    with database.sessionmaker() as session:
        states = dict(session.execute(select(Repository.name, Repository.state)
                                      .where(Repository.name.in_(["mine", "locked"]))).all())
        assert states == {"mine": RepositoryState.NORMAL, "locked": RepositoryState.READ_ONLY}
        assert session.scalars(select(OrgMirrorRepository)).all() == []
        assert session.scalars(select(OrgMirrorConfig)).all() == []
    # The organization is no longer empty: a new mirror is refused, as in Quay.
    response = client.post(MIRROR, json=org_mirror_body(), headers=admin)
    assert response.status_code == 400 and "already contains repositories" in response.get_json()["detail"]


@pytest.mark.parametrize(("enabled", "status", "refused"), [
    (True, OrgMirrorRepoStatus.SYNCING, True),
    (False, OrgMirrorRepoStatus.SYNCING, True),
    (True, OrgMirrorRepoStatus.NEVER_RUN, True),
    (True, OrgMirrorRepoStatus.SYNC_NOW, True),
    # Quay refuses these forever: a failed repository, queued ones no worker takes (disabled mirror).
    (True, OrgMirrorRepoStatus.FAIL, False),
    (False, OrgMirrorRepoStatus.NEVER_RUN, False),
    (True, OrgMirrorRepoStatus.SKIP, False),
])
def test_sync_now_and_the_discovered_repositories(client, admin, database, enabled, status, refused):
    configure(client, admin, is_enabled=enabled)
    discover(database, {"a": status})
    response = client.post(f"{MIRROR}/sync-now", headers=admin)
    if refused:
        assert response.status_code == 400
        assert response.get_json()["detail"].startswith("Cannot trigger sync: repositories are still syncing.")
        assert config_row(database).sync_status == OrgMirrorStatus.NEVER_RUN
    else:
        assert response.status_code == 204
        row = config_row(database)
        assert (row.sync_status, row.sync_expiration_date) == (OrgMirrorStatus.SYNC_NOW, None)


def test_cancel_keeps_the_schedule_and_leaves_no_retry(client, admin, database):
    configure(client, admin)
    assert client.post(f"{MIRROR}/sync-cancel", headers=admin).status_code == 204
    row = config_row(database)
    assert row.sync_status == OrgMirrorStatus.CANCEL and row.sync_retries_remaining == 0
    assert row.sync_start_date.isoformat() == "2025-01-01T00:00:00" and row.sync_expiration_date is not None
    assert client.post(f"{MIRROR}/sync-now", headers=admin).status_code == 204
    row = config_row(database)
    assert (row.sync_status, row.sync_retries_remaining, row.sync_expiration_date) == (OrgMirrorStatus.SYNC_NOW, 1,
                                                                                      None)


def test_repository_list_pages_and_filters(client, admin, database):
    configure(client, admin)
    discover(database, {f"r{i}": OrgMirrorRepoStatus.SUCCESS if i % 2 else OrgMirrorRepoStatus.FAIL
                        for i in range(5)})
    page = client.get(f"{MIRROR}/repositories?page=2&limit=2", headers=admin).get_json()
    assert ([r["name"] for r in page["repositories"]], page["total"], page["has_next"]) == (["r2", "r3"], 5, True)
    failed = client.get(f"{MIRROR}/repositories?status=fail", headers=admin).get_json()
    assert [r["name"] for r in failed["repositories"]] == ["r0", "r2", "r4"]
    lenient = client.get(f"{MIRROR}/repositories?page=x&limit=0", headers=admin).get_json()
    assert (lenient["page"], lenient["limit"]) == (1, 100)
    empty = client.get(f"{MIRROR}/repositories?status=", headers=admin)
    assert empty.status_code == 400 and empty.get_json()["detail"].startswith("Invalid status filter ''")
