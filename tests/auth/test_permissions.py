"""Quay's auth outcomes for every foundation endpoint, caller by caller: the tables, and edge cases.

Each row of ``EXPECTED`` is one caller (a token, or none); each column one request. Every cell is
checked against the real server (gunicorn) on SQLite and PostgreSQL by
tests/e2e/test_authz_server.py, and a failing test lists every cell that disagrees. The rules the tables
hold are listed once, in tests/common/authz.py (Quay's ``auth/permissions.py``).
"""

from __future__ import annotations

import pytest

from tests.common.authz import CALLERS, COLUMNS, EXPECTED, FULL


def test_every_caller_has_a_complete_row():
    assert sorted(EXPECTED) == sorted(CALLERS)
    for name, cells in EXPECTED.items():
        assert sorted(cells) == sorted(COLUMNS), name


def test_expired_token_worked_before_it_expired(matrix_world, client):
    """The expired row fails only because of the expiry: the same scopes, unexpired, pass."""
    matrix_world.token("fresh-sudo", "devtable", f"{FULL} super:user", expires_in=3600)
    assert client.get("/api/v1/user/", headers=matrix_world.headers("fresh-sudo")).status_code == 200
    assert client.get("/api/v1/user/", headers=matrix_world.headers("expired")).status_code == 401


@pytest.mark.parametrize("header", [
    "Basic ZGV2dGFibGU6cGFzc3dvcmQ=",
    "Bearer",
    "Bearer ",
    "bearer notarealtoken",
    "Token abc",
    "Bearer a b c",
])
def test_malformed_authorization_headers_are_unauthenticated(header, world, client):
    response = client.get("/api/v1/repository/devtable/simple", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.get_json()["error_type"] == "invalid_token"


def test_lower_case_bearer_scheme_is_accepted(world, client):
    token = world.tokens["admin"]
    response = client.get("/api/v1/user/", headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200


def test_public_repository_is_readable_anonymously_but_not_writable(world, client):
    world.repo("devtable/public", visibility="public")
    response = client.get("/api/v1/repository/devtable/public")
    assert response.status_code == 200
    body = response.get_json()
    assert body["is_public"] is True
    assert body["can_write"] is False and body["can_admin"] is False
    assert client.delete("/api/v1/repository/devtable/public").status_code == 401
    assert client.put("/api/v1/repository/devtable/public/changestate", json={"state": "MIRROR"}).status_code == 401
    assert client.delete("/api/v1/repository/devtable/public", headers=world.headers("reader")).status_code == 403


def test_unknown_scope_in_a_stored_token_grants_nothing(world, database, client):
    """Quay: one unknown scope invalidates the whole scope string."""
    from sqlalchemy import select

    from quaymirror.auth.models import AccessToken
    from quaymirror.auth.tokens import hash_token

    raw = world.token("odd", "devtable", "repo:admin")
    with database.transaction() as s:
        s.scalars(select(AccessToken).where(AccessToken.token_hash == hash_token(raw))).one().scope = \
            "repo:admin nonsense:scope"
    assert client.get("/api/v1/user/", headers=world.headers("odd")).status_code == 200
    assert client.get("/api/v1/repository/devtable/simple", headers=world.headers("odd")).status_code == 403
