"""The authorization matrix's tables: every foundation endpoint (a column) x every caller (a row).

``EXPECTED`` holds Quay's status for each cell; tests/auth/test_permissions.py checks the tables
themselves and the edge cases, tests/e2e/test_authz_server.py every cell against the real server.
``matrix_world`` builds the callers and targets the columns need. The rules (Quay's
``auth/permissions.py``):

* no token, a garbage token, an expired token, a robot's own password used as a bearer: 401
  ``invalid_token`` "Requires authentication";
* authenticated without the right: 403 ``insufficient_scope`` "Unauthorized";
* a repository that does not exist in a namespace the caller administers: 404; a namespace that
  does not exist: 403;
* the role on a repository is the caller's permission capped by the token's repo:* scope;
  namespace owners and org admins hold admin on every repository of the namespace;
* scopes: ``/user/``, ``/organization/{org}`` and ``/entities/`` any valid token; organization
  create ``user:admin``; repository create ``repo:create`` + namespace admin; repository read
  ``repo:read``; admin operations ``repo:admin``; organization robots ``org:admin`` + org admin;
  the caller's own robots ``user:admin``;
* the organization's PUT and its mirror's endpoints: ``org:admin`` + org admin; a body failing the mirror's
  schema is a 400 before any check of the caller, as in Quay; a missing organization 403;
* superusers pass admin checks only with QUAYMIRROR_SUPERUSERS_FULL_ACCESS on and a token that
  carries ``super:user``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from quaymirror.accounts.models import OrganizationMember

FULL = "repo:admin repo:create user:admin org:admin"  # every scope but super:user

# Column id -> (method, path, JSON body or None). Each mutating column has a target of its own, so
# the order of the requests does not matter.
ENDPOINTS: dict[str, tuple[str, str, dict | None]] = {
    "user": ("GET", "/api/v1/user/", None),
    "org_get": ("GET", "/api/v1/organization/buynlarge", None),
    "org_get_user_ns": ("GET", "/api/v1/organization/devtable", None),
    "org_create": ("POST", "/api/v1/organization/", {"name": "neworg", "email": "new@example.com"}),
    "repo_create": ("POST", "/api/v1/repository",
                    {"namespace": "devtable", "repository": "created", "visibility": "private",
                     "description": "", "repo_kind": "image"}),
    "repo_create_org": ("POST", "/api/v1/repository",
                        {"namespace": "buynlarge", "repository": "created", "visibility": "private"}),
    "repo_create_no_ns": ("POST", "/api/v1/repository", {"namespace": "nosuchns", "repository": "created"}),
    "repo_get": ("GET", "/api/v1/repository/devtable/simple", None),
    "repo_get_org": ("GET", "/api/v1/repository/buynlarge/orgrepo", None),
    "repo_get_missing": ("GET", "/api/v1/repository/devtable/nosuchrepo", None),
    "repo_get_org_missing": ("GET", "/api/v1/repository/buynlarge/nosuchrepo", None),
    "repo_get_no_ns": ("GET", "/api/v1/repository/nosuchns/repo", None),
    "repo_delete": ("DELETE", "/api/v1/repository/devtable/doomed", None),
    "repo_delete_org": ("DELETE", "/api/v1/repository/buynlarge/orgdoomed", None),
    "changestate": ("PUT", "/api/v1/repository/devtable/simple/changestate", {"state": "READ_ONLY"}),
    "changestate_org": ("PUT", "/api/v1/repository/buynlarge/orgrepo/changestate", {"state": "MIRROR"}),
    "changestate_missing": ("PUT", "/api/v1/repository/devtable/nosuchrepo/changestate", {"state": "MIRROR"}),
    "perms_user": ("GET", "/api/v1/repository/devtable/simple/permissions/user/", None),
    "perms_team": ("GET", "/api/v1/repository/devtable/simple/permissions/team/", None),
    "perm_put": ("PUT", "/api/v1/repository/devtable/simple/permissions/user/devtable+dtrobot2",
                 {"role": "write"}),
    "perms_user_org": ("GET", "/api/v1/repository/buynlarge/orgrepo/permissions/user/", None),
    "perm_put_org": ("PUT", "/api/v1/repository/buynlarge/orgrepo/permissions/user/buynlarge+coolrobot",
                     {"role": "read"}),
    "org_robot_get": ("GET", "/api/v1/organization/buynlarge/robots/coolrobot", None),
    "org_robot_put": ("PUT", "/api/v1/organization/buynlarge/robots/newbot", {"description": "made"}),
    "org_robot_delete": ("DELETE", "/api/v1/organization/buynlarge/robots/doomedbot", None),
    "org_robot_no_org": ("GET", "/api/v1/organization/nosuchorg/robots/coolrobot", None),
    "user_robot_get": ("GET", "/api/v1/user/robots/dtrobot", None),
    "user_robot_put": ("PUT", "/api/v1/user/robots/newbot", {}),
    "user_robot_delete": ("DELETE", "/api/v1/user/robots/doomedbot", None),
    "entities": ("GET", "/api/v1/entities/dev?includeOrgs=False&includeTeams=False", None),
    "org_put": ("PUT", "/api/v1/organization/buynlarge", {"email": "billing@example.com"}),
    "orgmirror_get": ("GET", "/api/v1/organization/buynlarge/mirror", None),
    "orgmirror_post_empty": ("POST", "/api/v1/organization/buynlarge/mirror", {}),
    "orgmirror_sync_now": ("POST", "/api/v1/organization/buynlarge/mirror/sync-now", None),
    "orgmirror_no_org": ("GET", "/api/v1/organization/nosuchorg/mirror", None),
}
COLUMNS = list(ENDPOINTS)


@dataclass(frozen=True)
class Caller:
    """Who calls: ``token`` is a label resolved by ``bearer()``; ``full_access`` the superuser switch."""

    token: str | None
    full_access: bool = False


CALLERS: dict[str, Caller] = {
    "anonymous": Caller(None),
    "garbage token": Caller("garbage"),
    "expired token": Caller("expired"),
    "robot password as bearer": Caller("robot-password"),
    "only repo:read": Caller("only:repo:read"),
    "only repo:write": Caller("only:repo:write"),
    "only repo:admin": Caller("only:repo:admin"),
    "only repo:create": Caller("only:repo:create"),
    "only user:read": Caller("only:user:read"),
    "only user:admin": Caller("only:user:admin"),
    "only org:admin": Caller("only:org:admin"),
    "only super:user": Caller("only:super:user"),
    "namespace owner": Caller("owner"),
    "org admin": Caller("orgadmin"),
    "org plain member": Caller("member"),
    "other user": Caller("other"),
    "robot oauth token": Caller("robot"),
    "superuser, full access off, super:user": Caller("sudo"),
    "superuser, full access on, super:user only": Caller("only:super:user", full_access=True),
    "superuser, full access on, no super:user": Caller("owner", full_access=True),
}


def row(cells: str) -> dict[str, int]:
    """``"user=200 org_get=200 ..."`` -> {column: status}; every column must be given exactly once."""
    parsed = dict(cell.split("=") for cell in cells.split())
    assert sorted(parsed) == sorted(COLUMNS), sorted(set(COLUMNS) ^ set(parsed))
    return {column: int(status) for column, status in parsed.items()}


def same_for_all(status: int) -> dict[str, int]:
    return dict.fromkeys(COLUMNS, status)


def unauthenticated() -> dict[str, int]:
    """401 everywhere but the org mirror's POST of a body its schema refuses: Quay validates it first."""
    return {**same_for_all(401), "orgmirror_post_empty": 400}


# Reading aid: devtable owns devtable/simple (and is a superuser); freshuser administers buynlarge;
# "member" is a plain member of buynlarge; reader is unrelated; devtable+dtrobot has read on
# devtable/simple.
_REPO_DENIED = (
    "repo_create=403 repo_create_org=403 repo_create_no_ns=403 repo_get=403 repo_get_org=403 "
    "repo_get_missing=403 repo_get_org_missing=403 repo_get_no_ns=403 repo_delete=403 repo_delete_org=403 "
    "changestate=403 changestate_org=403 changestate_missing=403 perms_user=403 perms_team=403 perm_put=403 "
    "perms_user_org=403 perm_put_org=403"
)
_ORG_ROBOTS_DENIED = ("org_robot_get=403 org_robot_put=403 org_robot_delete=403 org_robot_no_org=403 "
                      "org_put=403 orgmirror_get=403 orgmirror_post_empty=400 orgmirror_sync_now=403 "
                      "orgmirror_no_org=403")
_ANY_TOKEN = "user=200 org_get=200 org_get_user_ns=404 entities=200"
_NO_USER_ADMIN = "org_create=403 user_robot_get=403 user_robot_put=403 user_robot_delete=403"
_OWNER = row(
    f"{_ANY_TOKEN} org_create=201 "
    "repo_create=201 repo_create_org=403 repo_create_no_ns=403 repo_get=200 repo_get_org=403 "
    "repo_get_missing=404 repo_get_org_missing=403 repo_get_no_ns=403 repo_delete=204 repo_delete_org=403 "
    "changestate=200 changestate_org=403 changestate_missing=404 perms_user=200 perms_team=200 perm_put=200 "
    f"perms_user_org=403 perm_put_org=403 {_ORG_ROBOTS_DENIED} "
    "user_robot_get=200 user_robot_put=201 user_robot_delete=204"
)
# A user with user:admin but no robot named dtrobot/doomedbot of their own: Quay's 400 "Could not find robot".
_UNRELATED_USER = row(
    f"{_ANY_TOKEN} org_create=201 {_REPO_DENIED} {_ORG_ROBOTS_DENIED} "
    "user_robot_get=400 user_robot_put=201 user_robot_delete=400"
)
_READ_ONLY_OWNER = row(
    f"{_ANY_TOKEN} {_NO_USER_ADMIN} {_ORG_ROBOTS_DENIED} "
    "repo_create=403 repo_create_org=403 repo_create_no_ns=403 repo_get=200 repo_get_org=403 "
    "repo_get_missing=404 repo_get_org_missing=403 repo_get_no_ns=403 repo_delete=403 repo_delete_org=403 "
    "changestate=403 changestate_org=403 changestate_missing=403 perms_user=403 perms_team=403 perm_put=403 "
    "perms_user_org=403 perm_put_org=403"
)
_NOTHING_BUT_LOGIN = row(f"{_ANY_TOKEN} {_NO_USER_ADMIN} {_REPO_DENIED} {_ORG_ROBOTS_DENIED}")

EXPECTED: dict[str, dict[str, int]] = {
    "anonymous": unauthenticated(),
    "garbage token": unauthenticated(),
    "expired token": unauthenticated(),
    "robot password as bearer": unauthenticated(),
    "only repo:read": _READ_ONLY_OWNER,
    "only repo:write": _READ_ONLY_OWNER,
    "only repo:admin": row(
        f"{_ANY_TOKEN} {_NO_USER_ADMIN} {_ORG_ROBOTS_DENIED} "
        "repo_create=403 repo_create_org=403 repo_create_no_ns=403 repo_get=200 repo_get_org=403 "
        "repo_get_missing=404 repo_get_org_missing=403 repo_get_no_ns=403 repo_delete=204 repo_delete_org=403 "
        "changestate=200 changestate_org=403 changestate_missing=404 perms_user=200 perms_team=200 perm_put=200 "
        "perms_user_org=403 perm_put_org=403"
    ),
    "only repo:create": {**_NOTHING_BUT_LOGIN, "repo_create": 201},
    "only user:read": _NOTHING_BUT_LOGIN,
    "only user:admin": {**_NOTHING_BUT_LOGIN, "org_create": 201, "user_robot_get": 200, "user_robot_put": 201,
                        "user_robot_delete": 204},
    # devtable is no admin of buynlarge: org:admin alone opens nothing.
    "only org:admin": _NOTHING_BUT_LOGIN,
    "only super:user": _NOTHING_BUT_LOGIN,
    "namespace owner": _OWNER,
    "org admin": row(
        f"{_ANY_TOKEN} org_create=201 "
        "repo_create=403 repo_create_org=201 repo_create_no_ns=403 repo_get=403 repo_get_org=200 "
        "repo_get_missing=403 repo_get_org_missing=404 repo_get_no_ns=403 repo_delete=403 repo_delete_org=204 "
        "changestate=403 changestate_org=200 changestate_missing=403 perms_user=403 perms_team=403 perm_put=403 "
        "perms_user_org=200 perm_put_org=200 "
        "org_robot_get=200 org_robot_put=201 org_robot_delete=204 org_robot_no_org=403 "
        "org_put=200 orgmirror_get=404 orgmirror_post_empty=400 orgmirror_sync_now=404 orgmirror_no_org=403 "
        "user_robot_get=400 user_robot_put=201 user_robot_delete=400"
    ),
    "org plain member": _UNRELATED_USER,
    "other user": _UNRELATED_USER,
    # A robot's OAuth token: its direct read permission works; it administers nothing, owns no robots.
    "robot oauth token": {**_NOTHING_BUT_LOGIN, "repo_get": 200},
    "superuser, full access off, super:user": _OWNER,
    "superuser, full access on, super:user only": row(
        f"{_ANY_TOKEN} {_NO_USER_ADMIN} "
        "repo_create=201 repo_create_org=201 repo_create_no_ns=403 repo_get=200 repo_get_org=200 "
        "repo_get_missing=404 repo_get_org_missing=404 repo_get_no_ns=404 repo_delete=204 repo_delete_org=204 "
        "changestate=200 changestate_org=200 changestate_missing=404 perms_user=200 perms_team=200 perm_put=200 "
        "perms_user_org=200 perm_put_org=200 "
        "org_robot_get=200 org_robot_put=201 org_robot_delete=204 org_robot_no_org=403 "
        "org_put=200 orgmirror_get=404 orgmirror_post_empty=400 orgmirror_sync_now=404 orgmirror_no_org=404"
    ),
    "superuser, full access on, no super:user": _OWNER,
}

ERROR_BODIES = {
    401: ("invalid_token", "Requires authentication"),
    403: ("insufficient_scope", "Unauthorized"),
    404: ("not_found", "Not Found"),
}


@pytest.fixture
def matrix_world(world):
    """The recorded-exchange fixtures plus: an org member, org repositories, doomed targets, tokens."""
    world.user("member")
    with world.database.transaction() as s:
        from quaymirror.accounts import service as accounts

        org = accounts.get_by_name(s, "buynlarge")
        s.add(OrganizationMember(organization_id=org.id, user_id=accounts.get_by_name(s, "member").id,
                                 role="member"))
    world.repo("devtable/doomed")
    world.repo("buynlarge/orgrepo")
    world.repo("buynlarge/orgdoomed")
    world.robot("devtable+doomedbot")
    world.robot("buynlarge+doomedbot")
    world.grant("devtable+dtrobot", "devtable/simple", "read")

    world.tokens["garbage"] = "notarealtoken"
    world.token("expired", "devtable", f"{FULL} super:user", expires_in=-60)
    world.tokens["robot-password"] = world.robot_tokens["devtable+dtrobot"]
    for scope in ("repo:read", "repo:write", "repo:admin", "repo:create", "user:read", "user:admin",
                  "org:admin", "super:user"):
        world.token(f"only:{scope}", "devtable", scope)
    world.token("owner", "devtable", FULL)
    world.token("orgadmin", "freshuser", FULL)
    world.token("member", "member", FULL)
    world.token("other", "reader", FULL)
    world.token("robot", "devtable+dtrobot", FULL)
    world.token("sudo", "devtable", f"{FULL} super:user")
    return world
