"""What the organization mirror's bodies and query accept: Quay's types, and bounds Quay lacks so that nothing
oversized or unstorable reaches the database (a 400 naming the field, never a 500, nothing written)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from quaymirror.orgmirror.models import OrgMirrorConfig
from tests.common.org_mirror_api import org_mirror_body

MIRROR = "/api/v1/organization/sellnsmall/mirror"


@pytest.mark.parametrize(("overrides", "field"), [
    ({"sync_interval": 2**31}, "sync_interval"),
    ({"external_registry_url": "https://h.example.com/" + "p" * 2048}, "external_registry_url"),
    ({"repository_filters": ["a"] * 1001}, "repository_filters"),
    ({"repository_filters": ["a" * 1025]}, "repository_filters"),
    ({"external_registry_config": {"blob": "x" * 20000}}, "external_registry_config"),
    ({"external_registry_config": {"proxy": {"http_proxy": 3}}}, "external_registry_config"),
    ({"external_registry_config": []}, "external_registry_config"),
    ({"external_registry_password": "p" * 2000}, "external_registry_password"),
    ({"robot_username": None}, "robot_username"),
    ({"skopeo_timeout": True}, "skopeo_timeout"),
])
def test_out_of_bounds_bodies_are_a_400_naming_the_field(client, orgs, database, overrides, field):
    response = client.post(MIRROR, json=org_mirror_body(**overrides), headers=orgs.headers("ORGADMIN"))
    assert response.status_code == 400
    assert response.get_json()["detail"].startswith(f"{field}"), response.get_json()
    with database.sessionmaker() as session:
        assert session.scalars(select(OrgMirrorConfig)).all() == []


def test_unstorable_text_is_refused(client, orgs):
    response = client.post(MIRROR, json=org_mirror_body(external_namespace="a\x00b"),
                           headers=orgs.headers("ORGADMIN"))
    assert response.status_code == 400 and "NUL" in response.get_json()["detail"]


def test_the_list_query_never_fails_on_numbers(client, orgs):
    headers = orgs.headers("ORGADMIN")
    assert client.post(MIRROR, json=org_mirror_body(), headers=headers).status_code == 201
    for query in ("page=99999999999999999999999&limit=-5", "page=-1&limit=99999999999999999999", "page=1.5"):
        body = client.get(f"{MIRROR}/repositories?{query}", headers=headers).get_json()
        assert 1 <= body["page"] <= 1_000_000 and 1 <= body["limit"] <= 500, query
        assert body["repositories"] == [] and body["total"] == 0
