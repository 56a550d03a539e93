"""What an organization mirror changes for the rest of the API: repositories of its namespace are its own
(no repository mirror, no new repository, no state change), its robot cannot be deleted, and the
organization's own PUT and DELETE (which takes the mirror with it)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from quaymirror.accounts.models import User
from quaymirror.orgmirror.models import OrgMirrorConfig, OrgMirrorRepository, OrgMirrorRepoStatus
from tests.common.org_mirror_api import org_mirror_body

MIRROR = "/api/v1/organization/sellnsmall/mirror"
REPO_MIRROR_BODY = {
    "is_enabled": True, "external_reference": "quay.io/redhat/quay", "sync_interval": 5000,
    "sync_start_date": "2020-01-02T06:30:00Z", "robot_username": "sellnsmall+mirrorbot",
    "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["latest"]}, "skopeo_timeout_interval": 300,
}


@pytest.fixture
def mirrored(client, orgs):
    """sellnsmall with an organization mirror (disabled: Quay refuses either way) and a repository ``app`` in it,
    as the worker creates them (so the per-repository endpoints have a target)."""
    response = client.post(MIRROR, headers=orgs.headers("ORGADMIN"), json=org_mirror_body(is_enabled=False))
    assert response.status_code == 201
    orgs.repo("sellnsmall/app", state="ORG_MIRROR")
    return orgs


def test_repository_mirror_is_refused_before_its_conflict(client, mirrored):
    headers = mirrored.headers("ALL")
    for method in ("POST", "PUT"):
        response = client.open("/api/v1/repository/sellnsmall/app/mirror", method=method, json=REPO_MIRROR_BODY,
                               headers=headers)
        assert response.status_code == 400, method
        assert response.get_json()["detail"] == ("Repository mirror configuration cannot be managed when "
                                                 "organization-level mirroring is configured")


def test_new_repositories_are_refused_after_the_name_checks(client, mirrored):
    headers = mirrored.headers("ALL")
    create = {"namespace": "sellnsmall", "repository": "manual", "visibility": "private", "description": ""}
    refused = client.post("/api/v1/repository", json=create, headers=headers)
    assert refused.status_code == 400
    assert refused.get_json()["detail"] == ("Cannot create repository: organization is managed by "
                                            "organization-level mirroring")
    existing = client.post("/api/v1/repository", json={**create, "repository": "app"}, headers=headers)
    assert existing.get_json()["detail"] == "Repository already exists"


def test_new_repositories_pass_with_the_feature_off(app_with, mirrored):
    client = app_with(feature_org_mirror=False).test_client()
    create = {"namespace": "sellnsmall", "repository": "manual", "visibility": "private", "description": ""}
    assert client.post("/api/v1/repository", json=create, headers=mirrored.headers("ALL")).status_code == 201


def test_state_changes_are_refused_with_quays_bare_detail(client, mirrored):
    response = client.put("/api/v1/repository/sellnsmall/app/changestate", json={"state": "READ_ONLY"},
                          headers=mirrored.headers("ALL"))
    assert response.status_code == 400
    assert response.get_json() == {"detail": "Repository state changes are not allowed in an organization "
                                             "managed by organization-level mirroring"}


def test_the_mirrors_robot_cannot_be_deleted(client, mirrored):
    """Quay deletes it (and with it the configuration, or fails silently); we refuse as for a repository mirror."""
    response = client.delete("/api/v1/organization/sellnsmall/robots/mirrorbot", headers=mirrored.headers("ORGADMIN"))
    assert response.status_code == 400
    assert response.get_json()["detail"] == "Robot is being used by a mirror"
    with mirrored.database.sessionmaker() as session:
        assert session.scalars(select(OrgMirrorConfig)).one() is not None


def test_org_admin_token_creates_repositories_in_the_organization(client, orgs):
    """Quay caps an org:admin token at its owner's organization role: an org admin may create there."""
    create = {"namespace": "sellnsmall", "repository": "made", "visibility": "private", "description": ""}
    assert client.post("/api/v1/repository", json=create, headers=orgs.headers("ALL")).status_code == 201
    # Not in a user namespace (org:admin says nothing about those), nor for a plain member.
    own = client.post("/api/v1/repository", json={**create, "namespace": "devtable"}, headers=orgs.headers("ALL"))
    assert own.status_code == 403
    member = client.post("/api/v1/repository", json={**create, "namespace": "buynlarge"},
                         headers=orgs.headers("ORGREADER"))
    assert member.status_code == 403


# ------------------------------------------------------------------ the organization's PUT and DELETE
def test_put_organization_answers_the_organization_as_get(client, orgs):
    headers = orgs.headers("ORGADMIN")
    body = {"email": "billing@example.com", "invoice_email": True, "invoice_email_address": None,
            "tag_expiration_s": 1209600}
    response = client.put("/api/v1/organization/sellnsmall", json=body, headers=headers)
    assert response.status_code == 200
    assert response.get_json() == client.get("/api/v1/organization/sellnsmall", headers=headers).get_json()
    assert response.get_json()["email"] == "billing@example.com"
    bad = client.put("/api/v1/organization/sellnsmall", json={"tag_expiration_s": "x"}, headers=headers)
    assert bad.status_code == 400


@pytest.mark.parametrize(("token", "org", "status"), [
    ("ORGREADER", "buynlarge", 403),  # a plain member
    ("ADMIN", "sellnsmall", 403),  # an admin without org:admin
    ("ORGADMIN", "nosuchorg", 403),
    ("ORGADMIN", "devtable", 404),  # the caller's own user namespace
    ("SUPER", "subscriptionsorg", 204),
])
def test_organization_delete_rights(quay_client, orgs, token, org, status):
    assert quay_client.delete(f"/api/v1/organization/{org}", headers=orgs.headers(token)).status_code == status


def test_deleting_the_organization_takes_its_mirror(client, orgs):
    headers = orgs.headers("ORGADMIN")
    assert client.post(MIRROR, json=org_mirror_body(), headers=headers).status_code == 201
    with orgs.database.transaction() as session:
        config = session.scalars(select(OrgMirrorConfig)).one()
        session.add(OrgMirrorRepository(org_mirror_config_id=config.id, repository_name="a",
                                        sync_status=OrgMirrorRepoStatus.NEVER_RUN))
    orgs.repo("sellnsmall/kept-by-nobody")
    assert client.delete("/api/v1/organization/sellnsmall", headers=headers).status_code == 204
    assert client.get("/api/v1/organization/sellnsmall", headers=headers).status_code == 404
    with orgs.database.sessionmaker() as session:
        assert session.scalars(select(OrgMirrorConfig)).all() == []
        assert session.scalars(select(OrgMirrorRepository)).all() == []
        assert session.scalars(select(User).where(User.username.like("sellnsmall%"))).all() == []
    assert client.delete("/api/v1/organization/sellnsmall", headers=headers).status_code == 403
