"""Repository endpoints as Quay's clients use them: create, read, change state, delete, permissions."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, select

from quaymirror import audit
from quaymirror.accounts.models import OrganizationMember, User
from quaymirror.repositories.models import Repository, RepositoryState

FULL = "repo:admin repo:create user:admin org:admin"
SIMPLE = "/api/v1/repository/devtable/simple"


@pytest.fixture
def owner(world):
    world.token("owner", "devtable", FULL)
    return world.headers("owner")


def state_of(database, name: str) -> int:
    with database.transaction() as s:
        return s.scalars(select(Repository.state).where(Repository.name == name)).one()


# --- create -----------------------------------------------------------------------------------

def test_create_repository_as_ansible_does(client, owner, database):
    body = {"namespace": "devtable", "repository": "mirrored", "visibility": "private", "description": "",
            "repo_kind": "image"}
    response = client.post("/api/v1/repository", headers=owner, json=body)
    assert response.status_code == 201
    assert response.get_json() == {"namespace": "devtable", "name": "mirrored", "kind": "image"}
    with database.transaction() as s:
        entry = audit.entries(s, "create_repo")[-1]
        assert entry.metadata_ == {"namespace": "devtable", "repo": "mirrored"}
        assert entry.performer_id == s.scalars(select(User.id).where(User.username == "devtable")).one()
    again = client.post("/api/v1/repository", headers=owner, json=body)
    assert again.status_code == 400
    assert again.get_json()["detail"] == "Repository already exists"


def test_create_repository_defaults_and_fields(client, owner):
    created = client.post("/api/v1/repository", headers=owner,
                          json={"namespace": "devtable", "repository": "pub", "visibility": "public",
                                "description": "A public one"})
    assert created.status_code == 201
    body = client.get("/api/v1/repository/devtable/pub", headers=owner).get_json()
    assert body["is_public"] is True and body["description"] == "A public one"
    assert body["state"] == "NORMAL" and body["kind"] == "image"
    minimal = client.post("/api/v1/repository", headers=owner, json={"namespace": "devtable", "repository": "min"})
    assert minimal.status_code == 201
    assert client.get("/api/v1/repository/devtable/min", headers=owner).get_json()["is_public"] is False


def test_create_repository_in_an_organization(client, world):
    world.token("fresh-full", "freshuser", FULL)
    response = client.post("/api/v1/repository", headers=world.headers("fresh-full"),
                           json={"namespace": "buynlarge", "repository": "orgrepo"})
    assert response.status_code == 201
    body = client.get("/api/v1/repository/buynlarge/orgrepo", headers=world.headers("fresh-full")).get_json()
    assert body["is_organization"] is True and body["can_admin"] is True


def test_create_repository_under_a_robot_name_is_forbidden(client, owner):
    response = client.post("/api/v1/repository", headers=owner,
                           json={"namespace": "devtable+dtrobot", "repository": "x"})
    assert response.status_code == 403


# --- read -------------------------------------------------------------------------------------

def test_get_repository(client, owner):
    response = client.get(SIMPLE, headers=owner)
    assert response.status_code == 200
    body = response.get_json()
    assert body["namespace"] == "devtable" and body["name"] == "simple"
    assert body["state"] == "NORMAL"
    assert body["can_write"] is True and body["can_admin"] is True
    # The keys quay_repository reads.
    assert {"state", "is_public", "description", "is_starred"} <= set(body)


@pytest.mark.parametrize(("state", "can_write"), [("NORMAL", True), ("READ_ONLY", False), ("MIRROR", False)])
def test_can_write_is_false_unless_normal(state, can_write, client, owner):
    assert client.put(f"{SIMPLE}/changestate", headers=owner, json={"state": state}).status_code == 200
    body = client.get(SIMPLE, headers=owner).get_json()
    assert body["state"] == state
    assert body["can_write"] is can_write
    assert body["can_admin"] is True


@pytest.mark.parametrize(("scope", "can_write", "can_admin"), [
    ("repo:read", False, False), ("repo:write", True, False), ("repo:admin", True, True)])
def test_roles_are_capped_by_the_token_scope(scope, can_write, can_admin, client, world):
    world.token(scope, "devtable", scope)
    body = client.get(SIMPLE, headers=world.headers(scope)).get_json()
    assert (body["can_write"], body["can_admin"]) == (can_write, can_admin)


@pytest.mark.parametrize(("role", "can_write", "can_admin"), [
    ("read", False, False), ("write", True, False), ("admin", True, True)])
def test_direct_permissions(role, can_write, can_admin, client, world):
    world.grant("reader", "devtable/simple", role)
    body = client.get(SIMPLE, headers=world.headers("reader")).get_json()
    assert (body["can_write"], body["can_admin"]) == (can_write, can_admin)
    changestate = client.put(f"{SIMPLE}/changestate", headers=world.headers("reader"), json={"state": "MIRROR"})
    assert changestate.status_code == (200 if role == "admin" else 403)


def test_org_admin_holds_admin_on_every_repository_but_members_hold_nothing(client, world):
    world.repo("buynlarge/orgrepo")
    world.user("member")
    with world.database.transaction() as s:
        org = s.scalars(select(User).where(User.username == "buynlarge")).one()
        member = s.scalars(select(User).where(User.username == "member")).one()
        s.add(OrganizationMember(organization_id=org.id, user_id=member.id, role="member"))
    world.token("member", "member", FULL)
    assert client.get("/api/v1/repository/buynlarge/orgrepo", headers=world.headers("fresh")).get_json()[
        "can_admin"] is True
    assert client.get("/api/v1/repository/buynlarge/orgrepo", headers=world.headers("member")).status_code == 403
    world.grant("member", "buynlarge/orgrepo", "read")
    assert client.get("/api/v1/repository/buynlarge/orgrepo", headers=world.headers("member")).status_code == 200


def test_marked_for_deletion_is_not_found(client, owner, database):
    with database.transaction() as s:
        s.scalars(select(Repository).where(Repository.name == "simple")).one().state = \
            RepositoryState.MARKED_FOR_DELETION
    assert client.get(SIMPLE, headers=owner).status_code == 404
    assert client.put(f"{SIMPLE}/changestate", headers=owner, json={"state": "NORMAL"}).status_code == 404


# --- changestate ------------------------------------------------------------------------------

def test_changestate(client, owner, database):
    response = client.put(f"{SIMPLE}/changestate", headers=owner, json={"state": "MIRROR"})
    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    assert state_of(database, "simple") == RepositoryState.MIRROR == 2
    with database.transaction() as s:
        entry = audit.entries(s, "change_repo_state")[-1]
        assert entry.metadata_ == {"namespace": "devtable", "repo": "simple", "state_changed": "MIRROR"}
        assert entry.repository_id == s.scalars(select(Repository.id).where(Repository.name == "simple")).one()
        assert entry.performer_id is not None
    assert client.put(f"{SIMPLE}/changestate", headers=owner, json={"state": "READ_ONLY"}).status_code == 200
    assert state_of(database, "simple") == RepositoryState.READ_ONLY == 1
    assert client.put(f"{SIMPLE}/changestate", headers=owner, json={"state": "NORMAL"}).status_code == 200
    assert state_of(database, "simple") == RepositoryState.NORMAL == 0


def test_changestate_checks_permission_then_body_then_existence(client, owner, world):
    """Quay's order: 401/403 first, then the body (400), then the repository (404)."""
    missing = "/api/v1/repository/devtable/nosuchrepo/changestate"
    assert client.put(missing, headers=owner, json={"state": "bogus"}).status_code == 400
    assert client.put(missing, headers=owner, json={"state": "MIRROR"}).status_code == 404
    assert client.put(f"{SIMPLE}/changestate", headers=world.headers("read"), json={"state": "bogus"}).status_code \
        == 403
    assert client.put(f"{SIMPLE}/changestate", json={"state": "bogus"}).status_code == 401


# --- delete -----------------------------------------------------------------------------------

def test_delete_repository(client, owner, database):
    assert client.delete(SIMPLE, headers=owner).status_code == 204
    assert client.get(SIMPLE, headers=owner).status_code == 404
    assert client.delete(SIMPLE, headers=owner).status_code == 404
    with database.transaction() as s:
        entry = audit.entries(s, "delete_repo")[-1]
        assert entry.metadata_ == {"namespace": "devtable", "repo": "simple"}
        assert s.scalars(select(Repository).where(Repository.name == "simple")).first() is None
    # The name is free again.
    recreated = client.post("/api/v1/repository", headers=owner, json={"namespace": "devtable", "repository": "simple"})
    assert recreated.status_code == 201


def test_delete_repository_removes_its_mirror_configuration_and_permissions(client, owner, world, database):
    from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorRule
    from quaymirror.repositories.models import RepositoryPermission

    world.grant("devtable+dtrobot", "devtable/simple", "write")
    with database.transaction() as s:
        repo = s.scalars(select(Repository).where(Repository.name == "simple")).one()
        robot = s.scalars(select(User).where(User.username == "devtable+dtrobot")).one()
        rule = RepoMirrorRule(repository_id=repo.id)
        rule.rule_value = ["latest"]
        s.add(rule)
        s.flush()
        s.add(RepoMirrorConfig(repository_id=repo.id, internal_robot_id=robot.id, external_reference="quay.io/a/b",
                               root_rule_id=rule.id, sync_interval=60))
    assert client.delete(SIMPLE, headers=owner).status_code == 204
    with database.transaction() as s:
        assert s.scalars(select(RepoMirrorConfig)).all() == []
        assert s.scalars(select(RepoMirrorRule)).all() == []
        assert s.scalars(select(RepositoryPermission)).all() == []
    # With the mirror gone, its robot may be deleted.
    assert client.delete("/api/v1/user/robots/dtrobot", headers=owner).status_code == 204


# --- permissions ------------------------------------------------------------------------------

def test_permissions_as_ansible_reads_and_writes_them(client, owner, database):
    assert client.get(f"{SIMPLE}/permissions/team/", headers=owner).get_json() == {"permissions": {}}
    assert client.get(f"{SIMPLE}/permissions/user/", headers=owner).get_json() == {"permissions": {}}
    put = client.put(f"{SIMPLE}/permissions/user/devtable+dtrobot", headers=owner, json={"role": "admin"})
    assert put.status_code == 200
    assert put.get_json() == {"role": "admin", "name": "devtable+dtrobot", "is_robot": True}
    put = client.put(f"{SIMPLE}/permissions/user/reader", headers=owner, json={"role": "read"})
    assert put.get_json() == {"role": "read", "name": "reader", "is_robot": False,
                              "avatar": {"name": "reader", "kind": "user"}}
    listed = client.get(f"{SIMPLE}/permissions/user/", headers=owner).get_json()["permissions"]
    assert {name: view["role"] for name, view in listed.items()} == {"devtable+dtrobot": "admin", "reader": "read"}
    assert listed["reader"]["name"] == "reader"
    # Changing a role replaces it.
    client.put(f"{SIMPLE}/permissions/user/reader", headers=owner, json={"role": "write"})
    assert client.get(f"{SIMPLE}/permissions/user/", headers=owner).get_json()["permissions"]["reader"]["role"] == \
        "write"
    with database.transaction() as s:
        entry = audit.entries(s, "change_repo_permission")[-1]
        assert entry.metadata_ == {"namespace": "devtable", "repo": "simple", "username": "reader", "role": "write"}


def test_single_permission_get_and_delete(client, owner):
    path = f"{SIMPLE}/permissions/user/reader"
    assert client.get(path, headers=owner).status_code == 404
    client.put(path, headers=owner, json={"role": "read"})
    assert client.get(path, headers=owner).get_json()["role"] == "read"
    assert client.delete(path, headers=owner).status_code == 204
    assert client.get(path, headers=owner).status_code == 404
    assert client.delete(path, headers=owner).status_code == 404


def test_concurrent_writes_of_one_permission_never_answer_500(app, owner):
    """PUTs and DELETEs of one user's permission racing each other (as a fuzzer or two admins do): each
    answers as if it ran alone, or Quay's conflict 400; never a 500 from a row another request removed."""
    path = f"{SIMPLE}/permissions/user/reader"
    requests = [("put", {"role": "read"}), ("put", {"role": "write"}), ("delete", None)]
    statuses: list[int] = []

    def hammer(method: str, body) -> None:
        client = app.test_client()
        for _ in range(40):
            response = getattr(client, method)(path, headers=owner, json=body)
            statuses.append(response.status_code)

    threads = [threading.Thread(target=hammer, args=request) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(statuses) == 120
    assert set(statuses) <= {200, 204, 400, 404}, sorted(set(statuses))
    final = app.test_client().put(path, headers=owner, json={"role": "admin"})
    assert final.status_code == 200 and final.get_json()["role"] == "admin"


def test_permissions_in_an_organization_say_who_is_a_member(client, world):
    world.repo("buynlarge/orgrepo")
    headers = world.headers("fresh")
    base = "/api/v1/repository/buynlarge/orgrepo/permissions/user"
    client.put(f"{base}/buynlarge+coolrobot", headers=headers, json={"role": "write"})
    client.put(f"{base}/reader", headers=headers, json={"role": "read"})
    client.put(f"{base}/freshuser", headers=headers, json={"role": "admin"})
    listed = client.get(f"{base}/", headers=headers).get_json()["permissions"]
    assert {name: view["is_org_member"] for name, view in listed.items()} == {
        "buynlarge+coolrobot": True, "reader": False, "freshuser": True}


@pytest.mark.parametrize(("name", "why"), [
    ("nosuchuser", "Invalid username: nosuchuser"),
    ("buynlarge", "Invalid username: buynlarge"),
    ("buynlarge+coolrobot", "Cannot add robot permission for robot in a different namespace"),
])
def test_permission_for_someone_who_cannot_hold_it(name, why, client, owner):
    response = client.put(f"{SIMPLE}/permissions/user/{name}", headers=owner, json={"role": "read"})
    assert response.status_code == 400
    assert response.get_json()["detail"] == why


def test_permission_on_a_missing_repository(client, owner):
    response = client.put("/api/v1/repository/devtable/nosuchrepo/permissions/user/reader", headers=owner,
                          json={"role": "read"})
    assert response.status_code == 404


# --- the Ansible collection's whole sequence --------------------------------------------------

def test_ansible_quay_repository_sequence(client, world):
    """Requests 1-5 of the recorded quay_repository_mirror trace, plus quay_robot and perms, in order."""
    world.org("testorg", owner="freshuser")
    world.token("ansible", "freshuser", f"{FULL} user:read")
    h = world.headers("ansible")
    assert client.get("/api/v1/user/", headers=h).get_json()["username"] == "freshuser"
    assert client.get("/api/v1/organization/testorg", headers=h).status_code == 200
    assert client.get("/api/v1/repository/testorg/mirrored", headers=h).status_code == 404
    created = client.post("/api/v1/repository", headers=h, json={
        "namespace": "testorg", "repository": "mirrored", "repo_kind": "image", "description": "",
        "visibility": "private"})
    assert created.status_code == 201
    assert client.put("/api/v1/repository/testorg/mirrored/changestate", headers=h,
                      json={"state": "MIRROR"}).get_json() == {"success": True}
    assert client.get("/api/v1/repository/testorg/mirrored", headers=h).get_json()["state"] == "MIRROR"
    # quay_robot: name resolution, GET (400 = absent), PUT, read name and token.
    assert client.get("/api/v1/organization/testorg/robots/mirrorbot", headers=h).status_code == 400
    robot = client.put("/api/v1/organization/testorg/robots/mirrorbot", headers=h, json={}).get_json()
    assert robot["name"] == "testorg+mirrorbot" and robot["token"]
    # quay_repository perms: team and user lists, then PUT for the robot.
    assert client.get("/api/v1/repository/testorg/mirrored/permissions/team/", headers=h).status_code == 200
    assert client.get("/api/v1/repository/testorg/mirrored/permissions/user/", headers=h).status_code == 200
    put = client.put("/api/v1/repository/testorg/mirrored/permissions/user/testorg+mirrorbot", headers=h,
                     json={"role": "write"})
    assert put.status_code == 200 and put.get_json()["role"] == "write"
    # state: absent
    assert client.delete("/api/v1/repository/testorg/mirrored", headers=h).status_code == 204


def test_ansible_name_resolution_of_a_personal_namespace(client, world):
    world.token("ansible", "devtable", f"{FULL} user:read")
    h = world.headers("ansible")
    assert client.get("/api/v1/organization/devtable", headers=h).status_code == 404
    assert client.get("/api/v1/user/robots/devtable", headers=h).status_code == 400
    results = client.get("/api/v1/entities/devtable?includeOrgs=False&includeTeams=False",
                         headers=h).get_json()["results"]
    assert results[0] == {"name": "devtable", "kind": "user", "is_robot": False,
                          "avatar": {"name": "devtable", "kind": "user"}}


# --- one read of the caller's access per request ----------------------------------------------

@pytest.fixture
def access_reads(database):
    """The SELECTs of a request that read the caller's roles (org membership or direct permission)."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        text = statement.lower()
        if text.lstrip().startswith("select") and ("organizationmember" in text or "repositorypermission" in text):
            seen.append(statement)

    engines = {database.engine, database.read_engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    yield seen
    for engine in engines:
        event.remove(engine, "before_cursor_execute", record)


def test_the_repository_get_reads_the_callers_roles_once(client, world, access_reads):
    """Owner, org admin, direct writer, direct reader: one query says who the caller is to the repository, and
    can_write/can_admin come from it (no second lookup of the same roles)."""
    world.repo("buynlarge/shared")
    world.grant("reader", "devtable/simple", "write")
    world.grant("reader", "buynlarge/shared", "read")
    world.token("fresh-full", "freshuser", FULL)
    world.token("reader-full", "reader", FULL)
    cases = [
        ("admin", SIMPLE, True, True),  # devtable owns its namespace
        ("fresh-full", "/api/v1/repository/buynlarge/shared", True, True),  # buynlarge's admin
        ("reader-full", SIMPLE, True, False),  # a direct write permission
        ("reader-full", "/api/v1/repository/buynlarge/shared", False, False),  # a direct read permission
    ]
    for label, path, can_write, can_admin in cases:
        access_reads.clear()
        body = client.get(path, headers=world.headers(label)).get_json()
        assert (body["can_write"], body["can_admin"]) == (can_write, can_admin), (label, path, body)
        assert len(access_reads) == 1, (label, path, access_reads)


@pytest.mark.parametrize("method, path, body", [
    ("PUT", f"{SIMPLE}/changestate", {"state": "READ_ONLY"}),
    ("PUT", f"{SIMPLE}/permissions/user/reader", {"role": "read"}),
])
def test_a_write_checks_the_caller_once_before_its_body(client, owner, access_reads, method, path, body):
    """Auth (401/403) before the body (400) before the repository (404), with one read of the caller's roles."""
    response = client.open(path, method=method, headers=owner, json=body)
    assert response.status_code == 200, response.get_json()
    [access] = [s for s in access_reads if "organizationmember" in s.lower()]
    assert "repository" in access.lower()
