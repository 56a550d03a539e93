"""The account endpoints Quay's clients call before the mirror: /user/, organizations, robots, entities."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from sqlalchemy import select

from quaymirror.accounts.models import OrganizationMember, User
from quaymirror.repositories.models import RepositoryPermission

FULL = "repo:admin repo:create user:admin org:admin"
NO_ROBOT = {"message": "Could not find robot with specified username"}


@pytest.fixture
def tokens(world):
    """Full-scope tokens for devtable, freshuser (buynlarge's admin), member (plain member) and reader."""
    world.user("member")
    with world.database.transaction() as s:
        org = s.scalars(select(User).where(User.username == "buynlarge")).one()
        member = s.scalars(select(User).where(User.username == "member")).one()
        s.add(OrganizationMember(organization_id=org.id, user_id=member.id, role="member"))
    for label, owner in [("devtable", "devtable"), ("freshuser", "freshuser"), ("member", "member"),
                         ("reader", "reader"), ("robot", "devtable+dtrobot")]:
        world.token(f"full-{label}", owner, FULL)
    return world


def get(client, world, path, label="full-devtable"):
    return client.get(path, headers=world.headers(label))


# --- GET /api/v1/user/ -------------------------------------------------------------------------

def test_current_user(client, tokens):
    body = get(client, tokens, "/api/v1/user/", "full-freshuser").get_json()
    assert body["username"] == "freshuser"
    assert body["anonymous"] is False
    assert body["kind"] == "user"
    assert body["super_user"] is False
    assert body["email"] == "freshuser@example.com"
    assert body["organizations"] == [{"name": "buynlarge", "kind": "org"}]
    assert get(client, tokens, "/api/v1/user/").get_json()["super_user"] is True


def test_current_user_with_a_token_of_any_single_scope(client, world):
    for scope in ("repo:read", "repo:create", "user:read", "org:admin", "super:user"):
        world.token(scope, "reader", scope)
        response = client.get("/api/v1/user/", headers=world.headers(scope))
        assert response.status_code == 200 and response.get_json()["username"] == "reader"


def test_current_user_for_a_robot_token(client, tokens):
    body = get(client, tokens, "/api/v1/user/", "full-robot").get_json()
    assert body["username"] == "devtable+dtrobot"
    assert body["kind"] == "robot"
    assert body["organizations"] == []


# --- organizations ----------------------------------------------------------------------------

def test_organization_seen_by_its_admin(client, tokens):
    response = get(client, tokens, "/api/v1/organization/buynlarge", "full-freshuser")
    assert response.status_code == 200
    body = response.get_json()
    assert body["name"] == "buynlarge"
    assert body["is_admin"] is True and body["is_member"] is True and body["can_create_repo"] is True


def test_organization_seen_by_a_member_and_by_a_stranger(client, tokens):
    member = get(client, tokens, "/api/v1/organization/buynlarge", "full-member").get_json()
    assert (member["is_admin"], member["is_member"], member["email"]) == (False, True, "")
    stranger = get(client, tokens, "/api/v1/organization/buynlarge", "full-reader").get_json()
    assert (stranger["is_admin"], stranger["is_member"], stranger["can_create_repo"]) == (False, False, False)


def test_organization_admin_without_org_admin_scope_is_not_shown_as_admin(client, world):
    """Quay's AdministerOrganizationPermission needs the org:admin scope on an OAuth token."""
    world.token("repo-only", "freshuser", "repo:admin")
    body = client.get("/api/v1/organization/buynlarge", headers=world.headers("repo-only")).get_json()
    assert body["is_admin"] is False and body["is_member"] is True


@pytest.mark.parametrize("name", ["devtable", "nosuchorg", "devtable+dtrobot"])
def test_organization_get_is_404_for_anything_but_an_organization(name, client, tokens):
    """The Ansible collection tells user namespaces from organizations by this 404."""
    response = get(client, tokens, f"/api/v1/organization/{name}")
    assert response.status_code == 404
    assert response.get_json()["error_type"] == "not_found"


def test_create_organization(client, tokens, database):
    response = client.post("/api/v1/organization/", headers=tokens.headers("full-reader"),
                           json={"name": "neworg", "email": "org@example.com"})
    assert response.status_code == 201
    assert response.get_json() == "Created"
    body = get(client, tokens, "/api/v1/organization/neworg", "full-reader").get_json()
    assert body["is_admin"] is True and body["email"] == "org@example.com"
    # The creator administers it: it can create repositories there.
    created = client.post("/api/v1/repository", headers=tokens.headers("full-reader"),
                          json={"namespace": "neworg", "repository": "app"})
    assert created.status_code == 201


def test_create_organization_without_email(client, tokens):
    response = client.post("/api/v1/organization/", headers=tokens.headers("full-reader"), json={"name": "noemail"})
    assert response.status_code == 201


@pytest.mark.parametrize("name", ["buynlarge", "devtable", "devtable+dtrobot"])
def test_create_organization_with_a_taken_name(name, client, tokens):
    response = client.post("/api/v1/organization/", headers=tokens.headers("full-reader"), json={"name": name})
    assert response.status_code == 400
    assert response.get_json()["error_type"] == "invalid_request"


def test_robots_cannot_create_organizations(client, tokens):
    response = client.post("/api/v1/organization/", headers=tokens.headers("full-robot"), json={"name": "botorg"})
    assert response.status_code == 403


# --- robots -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("base", "label", "namespace"), [
    ("/api/v1/organization/buynlarge/robots", "full-freshuser", "buynlarge"),
    ("/api/v1/user/robots", "full-reader", "reader"),
], ids=["org", "user"])
def test_robot_lifecycle(base, label, namespace, client, tokens, database):
    headers = tokens.headers(label)
    # Ansible: GET (400 means absent), then PUT, reading name and token from the answer.
    absent = client.get(f"{base}/builder", headers=headers)
    assert absent.status_code == 400 and absent.get_json() == NO_ROBOT
    created = client.put(f"{base}/builder", headers=headers, json={"description": "builds things"})
    assert created.status_code == 201
    body = created.get_json()
    assert body["name"] == f"{namespace}+builder"
    assert body["description"] == "builds things"
    assert len(body["token"]) >= 32
    assert set(body) >= {"name", "token", "created", "last_accessed", "description", "unstructured_metadata"}
    again = client.get(f"{base}/builder", headers=headers).get_json()
    assert again["token"] == body["token"] and again["name"] == body["name"]
    # The secret is stored encrypted, never in clear.
    with database.transaction() as s:
        stored = s.scalars(select(User).where(User.username == f"{namespace}+builder")).one()
        assert stored.is_robot and body["token"] not in (stored.robot_token or "")
    duplicate = client.put(f"{base}/builder", headers=headers, json={})
    assert duplicate.status_code == 400
    assert duplicate.get_json() == {"message": f"Existing robot with name: {namespace}+builder"}
    assert client.delete(f"{base}/builder", headers=headers).status_code == 204
    assert client.get(f"{base}/builder", headers=headers).get_json() == NO_ROBOT
    gone = client.delete(f"{base}/builder", headers=headers)  # Ansible reads 400 as "already absent"
    assert gone.status_code == 400 and gone.get_json() == NO_ROBOT


@pytest.mark.parametrize("short", ["Upper", "1digit", "a", "has-dash", "has+plus", "has.dot"])
def test_robot_shortname_rules(short, client, tokens):
    response = client.put(f"/api/v1/user/robots/{short}", headers=tokens.headers("full-devtable"), json={})
    assert response.status_code == 400
    assert response.get_json()["error_type"] == "invalid_request"


def test_robot_of_another_namespace_is_not_reachable(client, tokens):
    """/user/robots/ always means the caller's own namespace."""
    response = get(client, tokens, "/api/v1/user/robots/coolrobot", "full-freshuser")
    assert response.get_json() == NO_ROBOT


@pytest.fixture
def mirror_using(world, database):
    """Insert a mirror configuration that uses ``robot`` on ``repo`` (straight into the tables)."""
    from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorRule

    def insert(robot: str, repo: str) -> None:
        from quaymirror.accounts import service as accounts
        from quaymirror.repositories import service as repositories

        ns, name = repo.split("/")
        with database.transaction() as s:
            repository = repositories.get(s, accounts.get_by_name(s, ns), name)
            rule = RepoMirrorRule(repository_id=repository.id)
            rule.rule_value = ["latest"]
            s.add(rule)
            s.flush()
            s.add(RepoMirrorConfig(repository_id=repository.id, internal_robot_id=accounts.get_by_name(s, robot).id,
                                   external_reference="quay.io/library/app", external_registry_config={},
                                   root_rule_id=rule.id, sync_interval=60, sync_status=0))

    return insert


@pytest.mark.parametrize(("path", "robot", "repo", "label"), [
    ("/api/v1/user/robots/dtrobot", "devtable+dtrobot", "devtable/simple", "full-devtable"),
    ("/api/v1/organization/buynlarge/robots/coolrobot", "buynlarge+coolrobot", "buynlarge/orgrepo",
     "full-freshuser"),
], ids=["user", "org"])
def test_robot_used_by_a_mirror_cannot_be_deleted(path, robot, repo, label, client, tokens, mirror_using):
    if repo == "buynlarge/orgrepo":
        tokens.repo(repo)
    mirror_using(robot, repo)
    response = client.delete(path, headers=tokens.headers(label))
    assert response.status_code == 400
    body = response.get_json()
    assert body["detail"] == "Robot is being used by a mirror"
    assert body["error_type"] == "invalid_request"
    assert client.get(path, headers=tokens.headers(label)).status_code == 200


def test_deleting_a_robot_removes_its_permissions(client, tokens, database):
    tokens.grant("devtable+dtrobot", "devtable/simple", "write")
    assert client.delete("/api/v1/user/robots/dtrobot", headers=tokens.headers("full-devtable")).status_code == 204
    with database.transaction() as s:
        assert s.scalars(select(RepositoryPermission)).all() == []


# --- entities ---------------------------------------------------------------------------------

def names(response) -> list[str]:
    assert response.status_code == 200
    return [entry["name"] for entry in response.get_json()["results"]]


def test_entities_as_ansible_asks_for_a_user_namespace(client, tokens):
    response = get(client, tokens, "/api/v1/entities/devtable?includeOrgs=False&includeTeams=False")
    results = response.get_json()["results"]
    assert results[0]["name"] == "devtable" and results[0]["kind"] == "user"
    assert results[0]["is_robot"] is False


def test_entities_of_an_unknown_name_are_empty(client, tokens):
    """Ansible: empty results mean "The namespace does not exist"."""
    assert names(get(client, tokens, "/api/v1/entities/nosuchuser?includeOrgs=False&includeTeams=False")) == []


def test_entities_match_by_prefix_and_never_list_organizations_or_foreign_robots(client, tokens):
    assert names(get(client, tokens, "/api/v1/entities/dev")) == ["devtable"]
    assert names(get(client, tokens, "/api/v1/entities/buy")) == []
    assert names(get(client, tokens, "/api/v1/entities/fresh")) == ["freshuser"]
    assert names(get(client, tokens, "/api/v1/entities/Dev%20table")) == ["devtable"]  # Quay: lowercase, no spaces


def test_entities_exact_match_comes_first(client, world):
    world.token("t", "devtable", "repo:read")
    for index in range(12):
        world.user(f"reader{index:02d}")
    found = names(client.get("/api/v1/entities/reader", headers=world.headers("t")))
    assert found[0] == "reader"
    assert len(found) == 10


def test_entities_treat_like_wildcards_literally(client, tokens):
    assert names(get(client, tokens, "/api/v1/entities/d_vtable")) == []
    assert names(get(client, tokens, "/api/v1/entities/%25")) == []


def test_entities_list_the_callers_own_robots_with_user_admin(client, tokens, world):
    results = get(client, tokens, "/api/v1/entities/dt?namespace=devtable").get_json()["results"]
    assert [(r["name"], r["kind"], r["is_robot"]) for r in results] == [
        ("devtable+dtrobot", "user", True), ("devtable+dtrobot2", "user", True)]
    world.token("no-user-admin", "devtable", "repo:admin")
    assert names(client.get("/api/v1/entities/dt?namespace=devtable", headers=world.headers("no-user-admin"))) == []
    # Somebody else's namespace: no robots.
    assert names(get(client, tokens, "/api/v1/entities/dt?namespace=devtable", "full-reader")) == []


def test_entities_list_an_organizations_robots_to_its_members(client, tokens):
    results = get(client, tokens, "/api/v1/entities/cool?namespace=buynlarge", "full-member").get_json()["results"]
    assert results == [{"name": "buynlarge+coolrobot", "kind": "user", "is_robot": True, "is_org_member": True,
                        "avatar": {"name": "buynlarge+coolrobot", "kind": "robot"}}]
    members = get(client, tokens, "/api/v1/entities/fresh?namespace=buynlarge", "full-member").get_json()["results"]
    assert [(m["name"], m["is_org_member"]) for m in members] == [("freshuser", True)]
    assert names(get(client, tokens, "/api/v1/entities/cool?namespace=buynlarge", "full-reader")) == []


def test_entities_include_the_organization_for_its_admin_when_asked(client, tokens):
    found = get(client, tokens, "/api/v1/entities/buy?namespace=buynlarge&includeOrgs=true", "full-freshuser")
    assert found.get_json()["results"][0] == {"name": "buynlarge", "kind": "org", "is_org_member": True,
                                              "avatar": {"name": "buynlarge", "kind": "org"}}
    assert names(get(client, tokens, "/api/v1/entities/buy?namespace=buynlarge&includeOrgs=False",
                     "full-freshuser")) == []
    assert names(get(client, tokens, "/api/v1/entities/buy?namespace=buynlarge&includeOrgs=true",
                     "full-member")) == []


def test_robot_token_under_another_secret_key_is_null_not_500(client, tokens, app_with):
    """The instance key changed: the robot still answers, its token shows as null."""
    other = app_with(secret_key="a-different-key").test_client()
    response = other.get("/api/v1/user/robots/dtrobot", headers=tokens.headers("full-devtable"))
    assert response.status_code == 200
    assert response.get_json()["token"] is None


def ordered(response) -> list:
    """The body with every object as its list of (key, value) pairs, in the order the server wrote them."""
    return json.loads(response.get_data(as_text=True), object_pairs_hook=list)


def keys(pairs: list) -> list[str]:
    return [key for key, _value in pairs]


def test_account_bodies_keep_quays_key_order(client, tokens):
    """Key order as Quay writes it (its organization entry differs from its user entries)."""
    found = get(client, tokens, "/api/v1/entities/buy?namespace=buynlarge&includeOrgs=true", "full-freshuser")
    [(_results, [org])] = ordered(found)
    assert keys(org) == ["name", "kind", "is_org_member", "avatar"]
    members = get(client, tokens, "/api/v1/entities/fresh?namespace=buynlarge", "full-member")
    assert keys(ordered(members)[0][1][0]) == ["name", "kind", "is_robot", "avatar", "is_org_member"]
    plain = get(client, tokens, "/api/v1/entities/fresh")
    assert keys(ordered(plain)[0][1][0]) == ["name", "kind", "is_robot", "avatar"]
    user = ordered(get(client, tokens, "/api/v1/user/"))
    assert keys(user) == ["anonymous", "username", "email", "verified", "kind", "super_user", "is_me",
                          "organizations"]
    robot = ordered(get(client, tokens, "/api/v1/user/robots/dtrobot"))
    assert keys(robot) == ["name", "created", "last_accessed", "description", "token", "unstructured_metadata"]
    org_view = ordered(get(client, tokens, "/api/v1/organization/buynlarge", "full-freshuser"))
    assert keys(org_view) == ["name", "email", "is_admin", "is_member", "is_org_admin", "can_create_repo"]


def test_robot_created_is_quays_email_date(client, tokens, database):
    """Quay writes a robot's ``created`` as an e-mail date, in UTC."""
    with database.transaction() as s:
        robot = s.scalars(select(User).where(User.username == "devtable+dtrobot")).one()
        robot.created = datetime(2006, 1, 2, 15, 4, 5, 999999)
    body = get(client, tokens, "/api/v1/user/robots/dtrobot").get_json()
    assert body["created"] == "Mon, 02 Jan 2006 15:04:05 -0000"
