"""The mirror endpoints through HTTP, on SQLite and PostgreSQL: Quay's rules, our fixes, and bad input."""

from __future__ import annotations

import calendar
import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy import inspect as sa_inspect

from quaymirror import audit
from quaymirror.accounts.models import User
from quaymirror.db import utcnow
from quaymirror.errors import InvalidRequest
from quaymirror.mirror import events
from quaymirror.mirror import service as mirror_service
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorRule, RepoMirrorStatus
from quaymirror.repositories.models import Repository, RepositoryPermission, RepositoryState
from tests.common.mirror_api import DROP, MIRROR, mirror_body

pytestmark = pytest.mark.usefixtures("quay_dns")  # no request of these tests asks the real DNS

VIEW_KEYS = [
    "is_enabled", "mirror_type", "external_reference", "external_registry_username", "external_registry_config",
    "sync_interval", "sync_start_date", "sync_expiration_date", "sync_retries_remaining", "sync_status",
    "root_rule", "robot_username", "skopeo_timeout_interval", "architecture_filter",
]
NOT_ALLOWED = "The provided registry location is not allowed"
EMPTY_RULE = "validation failed: rule_value for TAG_GLOB_CSV must be a list with at least one rule"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def columns(obj: Any) -> dict[str, Any]:
    return {attr.key: getattr(obj, attr.key) for attr in sa_inspect(obj).mapper.column_attrs}


def db_state(database) -> dict[str, Any]:
    """Everything a mirror request may touch, to prove a failed one touched nothing."""
    with database.sessionmaker() as s:
        return {
            "configs": [columns(c) for c in s.scalars(select(RepoMirrorConfig).order_by(RepoMirrorConfig.id))],
            "rules": [columns(r) for r in s.scalars(select(RepoMirrorRule).order_by(RepoMirrorRule.id))],
            "permissions": [(p.repository_id, p.user_id, p.role)
                            for p in s.scalars(select(RepositoryPermission).order_by(RepositoryPermission.id))],
            "repositories": [(r.id, r.state) for r in s.scalars(select(Repository).order_by(Repository.id))],
            "log": [(e.kind, e.metadata_json) for e in audit.entries(s)],
        }


def mirror_log(database) -> list[tuple[str, Any]]:
    with database.sessionmaker() as s:
        return [(e.metadata_["changed"], e.metadata_["to"]) for e in audit.entries(s, "repo_mirror_config_changed")]


def set_config(database, **values: Any) -> None:
    with database.transaction() as s:
        s.execute(update(RepoMirrorConfig).values(**values))


def get_config(database) -> RepoMirrorConfig:
    with database.sessionmaker() as s:
        return s.scalars(select(RepoMirrorConfig)).one()


def robot_role(database, robot: str, repo_name: str = "simple") -> str | None:
    with database.sessionmaker() as s:
        user = s.scalars(select(User).where(User.username == robot)).one()
        repo = s.scalars(select(Repository).where(Repository.name == repo_name)).one()
        perm = s.scalars(select(RepositoryPermission).where(
            RepositoryPermission.user_id == user.id, RepositoryPermission.repository_id == repo.id)).first()
        return perm.role if perm else None


def repo_state(database, name: str = "simple") -> RepositoryState:
    with database.sessionmaker() as s:
        return RepositoryState(s.scalars(select(Repository.state).where(Repository.name == name)).one())


def create(client, headers, **overrides: Any):
    response = client.post(MIRROR, json=mirror_body(**overrides), headers=headers)
    assert response.status_code == 201, response.get_json()
    return response


def view(client, headers) -> dict[str, Any]:
    response = client.get(MIRROR, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def assert_invalid_request(response, *needles: str) -> str:
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error_type"] == "invalid_request" and body["title"] == "invalid_request"
    assert body["detail"] == body["error_message"]
    assert "\n" not in body["detail"]
    for needle in needles:
        assert needle in body["detail"]
    return body["detail"]


# ---------------------------------------------------------------------------
# success answers and GET
# ---------------------------------------------------------------------------


def test_post_get_exact_answers(client, world, admin):
    response = create(client, admin)
    assert response.get_data() == b'""\n' and response.mimetype == "application/json"
    got = client.get(MIRROR, headers=admin)
    raw = got.get_data(as_text=True)
    # The raw text keeps Quay's key order (no re-sorting anywhere between the service and the wire).
    assert list(json.loads(raw, object_pairs_hook=dict)) == VIEW_KEYS
    assert [raw.index(f'"{key}"') for key in VIEW_KEYS] == sorted(raw.index(f'"{key}"') for key in VIEW_KEYS)
    body = got.get_json()
    assert body == {
        "is_enabled": True, "mirror_type": "PULL", "external_reference": "quay.io/redhat/quay",
        "external_registry_username": "fakeUsername",
        "external_registry_config": mirror_body()["external_registry_config"],
        "sync_interval": 5000, "sync_start_date": "2020-01-02T06:30:00Z", "sync_expiration_date": None,
        "sync_retries_remaining": 3, "sync_status": "NEVER_RUN",
        "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["latest", "3.3*", "foo"]},
        "robot_username": "devtable+dtrobot", "skopeo_timeout_interval": 300, "architecture_filter": [],
    }
    assert "external_registry_password" not in raw



def test_get_survives_the_database_dropping_its_connections(client, world, admin, database, backend):
    """GET reads through a statement prepared per PostgreSQL connection, from a pool that does not ping
    (SQLite: plainly). When the server drops the connections (a failover, an idle timeout), at most one
    GET answers Quay's JSON 503 and the pool is replaced: the next GET prepares again on a new connection
    and answers, and each GET sees the latest committed PUT (also through the read cache)."""
    create(client, admin)
    first = view(client, admin)
    assert view(client, admin) == first
    if backend == "postgresql":
        with database.engine.connect() as connection:
            dropped = connection.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
        assert dropped >= 1  # at least the GETs' own pooled connection
        statuses = []
        for _ in range(4):
            response = client.get(MIRROR, headers=admin)
            statuses.append(response.status_code)
            if response.status_code != 200:
                assert response.status_code == 503 and response.get_json()["status"] == 503
        assert statuses.count(503) <= 1, statuses
    assert view(client, admin) == first
    assert client.put(MIRROR, json={"sync_interval": 7200}, headers=admin).status_code == 201
    assert view(client, admin) == {**first, "sync_interval": 7200}


def test_post_sets_mirror_state_and_logs(client, world, admin, database):
    assert repo_state(database) == RepositoryState.NORMAL
    create(client, admin)
    assert repo_state(database) == RepositoryState.MIRROR
    with database.sessionmaker() as s:
        kinds = [e.kind for e in audit.entries(s)]
        state_entry = audit.entries(s, "change_repo_state")[-1]
        changed = audit.entries(s, "repo_mirror_config_changed")
    assert state_entry.metadata_["state_changed"] == "MIRROR"
    assert [(e.metadata_["changed"], e.metadata_["to"]) for e in changed] == [
        ("external_reference", "quay.io/redhat/quay")]
    assert changed[0].metadata_["repo"] == "simple" and changed[0].metadata_["namespace"] == "devtable"
    assert kinds.count("change_repo_state") == 1


def test_post_in_mirror_state_keeps_it_without_a_state_entry(client, world, admin, database):
    world.repo("devtable/already", state="MIRROR")
    response = client.post("/api/v1/repository/devtable/already/mirror", json=mirror_body(), headers=admin)
    assert response.status_code == 201
    assert repo_state(database, "already") == RepositoryState.MIRROR
    with database.sessionmaker() as s:
        assert audit.entries(s, "change_repo_state") == []


def test_duplicate_post_is_409_and_changes_nothing(client, world, admin, database):
    create(client, admin)
    before = db_state(database)
    response = client.post(MIRROR, json=mirror_body(external_reference="quay.io/other/repo"), headers=admin)
    assert response.status_code == 409
    assert response.get_json() == {"detail": "Mirror configuration already exits for repository devtable/simple"}
    assert db_state(database) == before


def test_get_put_sync_on_missing_config_or_repo_are_404(client, world, admin):
    for method, path in [("GET", MIRROR), ("PUT", MIRROR), ("DELETE", MIRROR), ("POST", f"{MIRROR}/sync-now"),
                         ("POST", f"{MIRROR}/sync-cancel"),
                         ("GET", "/api/v1/repository/devtable/unicorn/mirror")]:
        response = client.open(path, method=method, headers=admin, json={} if method == "PUT" else None)
        assert response.status_code == 404, (method, path)
        assert response.get_json()["error_type"] == "not_found"


def test_body_is_checked_before_the_repository(client, world, admin):
    """Quay's order: an admin sending a bad body to a missing repository gets 400, not 404."""
    response = client.post("/api/v1/repository/devtable/unicorn/mirror", json={"sync_interval": "x"},
                           headers=admin)
    assert_invalid_request(response, "external_reference")


def test_permissions_come_before_the_body(client, world):
    for label, status in [("read", 403), ("write", 403), ("reader", 403), ("fresh", 403), (None, 401)]:
        response = client.post(MIRROR, data="not json", content_type="application/json",
                               headers=world.headers(label))
        assert response.status_code == status, label


def test_get_authenticates_in_its_own_read_as_everywhere_else(client, world, admin, database):
    """GET /mirror reads the bearer token in the same statement as the configuration: the same answers
    as the plain lookup for every kind of token, in existing and missing namespaces, and a token stops
    working as soon as it expires or is deleted."""
    from quaymirror.auth.models import AccessToken
    from quaymirror.auth.tokens import hash_token

    create(client, admin)
    world.token("late", "devtable", "repo:admin", expires_in=3600)
    cases = [
        ({}, 401), ({"Authorization": "Bearer nope"}, 401), ({"Authorization": "Basic abc"}, 401),
        ({"Authorization": "Bearer"}, 401), ({"Authorization": f"bearer {world.tokens['admin']}"}, 200),
        (world.headers("read"), 403), (world.headers("reader"), 403), (admin, 200), (world.headers("late"), 200),
    ]
    for headers, status in cases:
        assert client.get(MIRROR, headers=headers).status_code == status, headers
        missing = client.get("/api/v1/repository/nosuchns/simple/mirror", headers=headers)
        assert missing.status_code == (401 if status == 401 else 403), headers
    with database.transaction() as s:
        late = s.scalars(select(AccessToken).where(AccessToken.token_hash == hash_token(world.tokens["late"]))).one()
        late.expires_at = utcnow() - timedelta(seconds=1)
    response = client.get(MIRROR, headers=world.headers("late"))
    assert response.status_code == 401 and response.get_json()["error_type"] == "invalid_token"
    with database.transaction() as s:
        s.execute(delete(AccessToken).where(AccessToken.token_hash == hash_token(world.tokens["admin"])))
    assert client.get(MIRROR, headers=admin).status_code == 401


def test_undecryptable_username_is_shown_as_quay_intends(client, world, admin, database):
    create(client, admin)
    set_config(database, external_registry_username="gAAAAA-not-a-fernet-token")
    assert view(client, admin)["external_registry_username"] == "(invalid. please re-enter)"


def test_dates_in_and_out(client, world, admin, database):
    create(client, admin, sync_start_date="2020-1-2T3:4:5Z")  # strptime accepts non-padded fields
    assert view(client, admin)["sync_start_date"] == "2020-01-02T03:04:05Z"
    # A worker-computed date with microseconds still reads back at second precision.
    set_config(database, sync_start_date=datetime(2024, 5, 1, 12, 0, 0, 123456),
               sync_expiration_date=datetime(2024, 5, 1, 13, 0, 0, 999999))
    body = view(client, admin)
    assert body["sync_start_date"] == "2024-05-01T12:00:00Z"
    assert body["sync_expiration_date"] == "2024-05-01T13:00:00Z"
    for bad in ["January 1 2020", "2020-01-01T00:00:00.00Z", "Wed, 01 Jan 2020 00:00:00 -0000",
                "2020-01-01T00:00:00+00:00", "2020-01-01 00:00:00Z", "2020-01-01T24:00:00Z", "", "x" * 5000]:
        response = client.put(MIRROR, json={"sync_start_date": bad}, headers=admin)
        assert response.status_code == 400, bad
        assert response.get_json() == {"detail": "Incorrect DateTime format for sync_start_date."}
    response = client.post("/api/v1/repository/devtable/simple/mirror", json=mirror_body(sync_start_date="tomorrow"),
                           headers=admin)
    assert response.status_code == 409  # the duplicate is found before the date, as in Quay
    assert client.put(MIRROR, json={"sync_start_date": "0001-01-01T00:00:00Z"}, headers=admin).status_code == 201
    assert view(client, admin)["sync_start_date"] == "0001-01-01T00:00:00Z"


# ---------------------------------------------------------------------------
# root_rule in both forms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule, stored", [
    ({"rule_kind": "tag_glob_csv", "rule_value": ["v1.*", "latest"]}, ["v1.*", "latest"]),
    ({"rule_type": "TAG_GLOB_CSV", "rule": "v1.*,latest"}, ["v1.*", "latest"]),
    ({"rule_type": "tag_glob_csv", "rule": "v1.*, latest ,"}, ["v1.*", "latest"]),
    ({"rule_type": "Tag_Glob_Csv", "rule": ["v1.*", "latest"]}, ["v1.*", "latest"]),
])
def test_root_rule_forms_on_post(client, world, admin, rule, stored):
    create(client, admin, root_rule=rule)
    assert view(client, admin)["root_rule"] == {"rule_kind": "tag_glob_csv", "rule_value": stored}


def test_public_docs_example_put_body(client, world, admin, database):
    """The changeRepoMirrorConfig example of Quay's published API reference, with its root_rule shape."""
    create(client, admin)
    body = {
        "is_enabled": False,
        "external_reference": "quay.io/projectquay/quay",
        "external_registry_username": "docsuser",
        "external_registry_password": "docspassword",
        "sync_start_date": "2024-01-01T00:00:00Z",
        "sync_interval": 86400,
        "robot_username": "devtable+dtrobot2",
        "root_rule": {"rule": "v3.*,latest", "rule_type": "TAG_GLOB_CSV"},
    }
    response = client.put(MIRROR, json=body, headers=admin)
    assert response.status_code == 201 and response.get_data() == b'""\n'
    got = view(client, admin)
    assert got["is_enabled"] is False
    assert got["external_reference"] == "quay.io/projectquay/quay"
    assert got["external_registry_username"] == "docsuser"
    assert got["sync_start_date"] == "2024-01-01T00:00:00Z" and got["sync_interval"] == 86400
    assert got["robot_username"] == "devtable+dtrobot2"
    assert got["root_rule"] == {"rule_kind": "tag_glob_csv", "rule_value": ["v3.*", "latest"]}
    assert robot_role(database, "devtable+dtrobot2") == "write"


@pytest.mark.parametrize("rule, needle", [
    ({"rule_kind": "tag_glob_csv"}, "root_rule.rule_value"),
    ({"rule_value": ["a"]}, "root_rule.rule_kind"),
    ({"rule_kind": "incorrect", "rule_value": ["a"]}, "root_rule.rule_kind"),
    ({"rule_kind": "TAG_GLOB_CSV", "rule_value": ["a"]}, "root_rule.rule_kind"),
    ({"rule_kind": "tag_glob_csv", "rule_value": "a,b"}, "root_rule.rule_value"),
    ({"rule_kind": "tag_glob_csv", "rule_value": [1]}, "root_rule.rule_value"),
    ({"rule_kind": "tag_glob_csv", "rule_value": None}, "root_rule.rule_value"),
    ({"rule_type": "REGEX", "rule": "a"}, "root_rule.rule_type"),
    ({"rule_type": "TAG_GLOB_CSV"}, "root_rule.rule"),
    ({"rule": "a"}, "root_rule.rule_type"),
    ({"rule_type": "TAG_GLOB_CSV", "rule": 5}, "root_rule.rule"),
    ({}, "root_rule.rule_kind"),
    ("latest", "root_rule"),
    (None, "root_rule"),
])
def test_root_rule_schema_errors(client, world, admin, database, rule, needle):
    create(client, admin)
    before = db_state(database)
    assert_invalid_request(client.put(MIRROR, json={"root_rule": rule}, headers=admin), needle)
    assert db_state(database) == before


@pytest.mark.parametrize("rule", [
    {"rule_kind": "tag_glob_csv", "rule_value": []},
    {"rule_type": "TAG_GLOB_CSV", "rule": ""},
    {"rule_type": "TAG_GLOB_CSV", "rule": " , "},
    {"rule_type": "TAG_GLOB_CSV", "rule": []},
])
def test_empty_rule_is_quays_400(client, world, admin, database, rule):
    before = db_state(database)
    response = client.post(MIRROR, json=mirror_body(root_rule=rule), headers=admin)
    assert response.get_json()["detail"] == EMPTY_RULE
    assert_invalid_request(response)
    assert db_state(database) == before


def test_put_root_rule_updates_the_configs_own_rule(client, world, admin, database):
    create(client, admin)
    # An unrelated rule row of the same repository (Quay accumulates such orphans) must stay untouched.
    with database.transaction() as s:
        repo = s.scalars(select(Repository).where(Repository.name == "simple")).one()
        orphan = RepoMirrorRule(repository_id=repo.id)
        orphan.rule_value = ["orphan"]
        s.add(orphan)
    response = client.put(MIRROR, json={"root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["v2.*"]}},
                          headers=admin)
    assert response.status_code == 201
    assert view(client, admin)["root_rule"]["rule_value"] == ["v2.*"]
    with database.sessionmaker() as s:
        assert sorted(r.rule_value[0] for r in s.scalars(select(RepoMirrorRule))) == ["orphan", "v2.*"]
    assert mirror_log(database)[-1] == ("mirror_rule", ["v2.*"])


# ---------------------------------------------------------------------------
# external_reference: the format and SSRF checks through the API
# ---------------------------------------------------------------------------


REFERENCE_REJECTIONS = [
    ("", "External registry reference is required"),
    ("   ", "External registry reference is required"),
    ("quay.io/project repo", "External registry reference must not include whitespace"),
    ("https://quay.io/a/b", "External registry reference must not include a URL scheme"),
    ("quay.io/repository?query=value", "External registry reference contains an invalid character"),
    ("quay.io\\repository", "External registry reference contains an invalid character"),
    ("quay.io/%2e%2e", "External registry reference contains an invalid character"),
    ("quay.io", "External registry reference must include a repository path"),
    ("quay.io/", "External registry reference must include a repository path"),
    ("/project/repository", "External registry reference must include a repository path"),
    ("quay.io:bad/repository", "External registry reference contains an invalid registry authority"),
    ("quay.io:70000/repository", "External registry reference contains an invalid registry authority"),
    ("quay.io:/repository", "External registry reference contains an invalid registry port"),
    ("quay.io:0/repository", "External registry reference contains an invalid registry port"),
    ("user@quay.io/repository", "External registry reference must include a valid registry hostname"),
    ("bad_host.example.com/repository", "External registry reference must include a valid registry hostname"),
    # Quay lets these through and then builds broken skopeo references (an invalid reference reaches skopeo).
    ("quay.io/team/repository:latest", "External registry reference must not include a tag or digest"),
    ("quay.io/team/repository@sha256:abc", "External registry reference must not include a tag or digest"),
    ("nothing.invalid/team/repo", "Cannot resolve hostname 'nothing.invalid'"),
    # SSRF: one generic text, so the API is no oracle of the internal network.
    ("localhost/project/repository", NOT_ALLOWED),
    ("localhost:5000/team/repo", NOT_ALLOWED),
    ("127.0.0.1/team/repo", NOT_ALLOWED),
    ("10.0.0.1/team/repo", NOT_ALLOWED),
    ("192.168.1.1/a/b", NOT_ALLOWED),
    ("169.254.169.254/latest/meta-data", NOT_ALLOWED),
    ("[::1]:5000/team/repo", NOT_ALLOWED),
    ("2130706433/team/repo", NOT_ALLOWED),
    ("metadata.google.internal/computeMetadata/v1", NOT_ALLOWED),
    ("registry.local/team/repo", NOT_ALLOWED),
    ("kubernetes.default.svc/team/repo", NOT_ALLOWED),
    ("private.example.com/team/repo", NOT_ALLOWED),
    ("metadata.example.com/team/repo", NOT_ALLOWED),
    ("mixed.example.com/team/repo", NOT_ALLOWED),
]


@pytest.mark.parametrize("reference, message", REFERENCE_REJECTIONS)
def test_post_reference_rejections_leave_nothing_behind(client, world, admin, database, reference, message):
    before = db_state(database)
    response = client.post(MIRROR, json=mirror_body(external_reference=reference), headers=admin)
    assert_invalid_request(response)
    assert response.get_json()["detail"] == message
    after = db_state(database)
    assert after == before  # no config, no rule row, no robot permission, no log entry
    assert after["configs"] == [] and after["rules"] == []


@pytest.mark.parametrize("reference, message", REFERENCE_REJECTIONS[::4])
def test_put_reference_rejections_change_nothing(client, world, admin, database, reference, message):
    create(client, admin)
    before = db_state(database)
    response = client.put(MIRROR, json={"external_reference": reference, "sync_interval": 100}, headers=admin)
    assert response.get_json()["detail"] == message
    assert db_state(database) == before


@pytest.mark.parametrize("allowed, reference", [
    (("10.0.0.0/8",), "10.0.0.1/team/repo"),
    (("10.0.0.1",), "10.0.0.1/team/repo"),
    (("private.example.com",), "private.example.com/team/repo"),
    (("10.0.0.0/8",), "private.example.com/team/repo"),
    (("localhost",), "localhost:5000/team/repo"),
])
def test_ssrf_allow_list(client_with, world, admin, allowed, reference):
    client = client_with(ssrf_allowed_hosts=allowed)
    create(client, admin, external_reference=reference)
    assert view(client, admin)["external_reference"] == reference
    assert client.put(MIRROR, json={"external_reference": "quay.io/a/b"}, headers=admin).status_code == 201
    assert client.put(MIRROR, json={"external_reference": reference}, headers=admin).status_code == 201


def test_allow_list_never_bypasses_format_checks(client_with, world, admin):
    client = client_with(ssrf_allowed_hosts=("10.0.0.0/8", "localhost"))
    for reference in ["https://10.0.0.1/team/repo", "user@localhost/team/repo", "10.0.0.1/team/repo:tag"]:
        assert_invalid_request(client.post(MIRROR, json=mirror_body(external_reference=reference), headers=admin))
    response = client.post(MIRROR, json=mirror_body(external_reference="192.168.0.1/a/b"), headers=admin)
    assert response.get_json()["detail"] == NOT_ALLOWED


# ---------------------------------------------------------------------------
# robots
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("prior, after", [(None, "write"), ("read", "write"), ("write", "write"),
                                          ("admin", "admin")])
def test_robot_grant_on_post(client, world, admin, database, prior, after):
    world.robot("devtable+newmirrorbot")
    if prior:
        world.grant("devtable+newmirrorbot", "devtable/simple", prior)
    create(client, admin, robot_username="devtable+newmirrorbot")
    assert robot_role(database, "devtable+newmirrorbot") == after


@pytest.mark.parametrize("prior, after", [(None, "write"), ("read", "write"), ("write", "write"),
                                          ("admin", "admin")])
def test_robot_grant_on_put(client, world, admin, database, prior, after):
    create(client, admin)
    if prior:
        world.grant("devtable+dtrobot2", "devtable/simple", prior)
    assert client.put(MIRROR, json={"robot_username": "devtable+dtrobot2"}, headers=admin).status_code == 201
    assert robot_role(database, "devtable+dtrobot2") == after
    assert view(client, admin)["robot_username"] == "devtable+dtrobot2"
    assert mirror_log(database)[-1] == ("robot_username", "devtable+dtrobot2")


@pytest.mark.parametrize("robot, message", [
    ("devtable+doesntExist", "Could not find robot with specified username"),
    ("dtrobot", "Could not find robot with specified username"),
    ("devtable", "Could not find robot with specified username"),  # a user is not a robot
    ("dévtable+röbot", "Could not find robot with specified username"),
    ("buynlarge+coolrobot", "Invalid robot"),
])
def test_robot_rejections(client, world, admin, database, robot, message):
    before = db_state(database)
    response = client.post(MIRROR, json=mirror_body(robot_username=robot), headers=admin)
    assert response.status_code == 400 and response.get_json() == {"message": message}
    assert db_state(database) == before
    create(client, admin)
    before = db_state(database)
    response = client.put(MIRROR, json={"robot_username": robot, "is_enabled": False}, headers=admin)
    assert response.status_code == 400 and response.get_json() == {"message": message}
    assert db_state(database) == before


def test_robot_in_use_cannot_be_deleted(client, world, admin):
    create(client, admin)
    response = client.delete("/api/v1/user/robots/dtrobot",
                             headers={"Authorization": f"Bearer {world.token('ua', 'devtable', 'user:admin')}"})
    assert response.status_code == 400


# ---------------------------------------------------------------------------
# PUT: partial, all-or-nothing, audited as Quay, idempotent for Ansible
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"sync_interval": 100, "external_reference": "10.0.0.1/team/repo"},
    {"external_reference": "registry.example.com/team/repo", "sync_start_date": "not-a-date"},
    {"is_enabled": False, "robot_username": "devtable+nope"},
    {"is_enabled": False, "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": []}},
    {"sync_interval": 100, "external_registry_password": "x"},
    {"sync_interval": 100, "external_registry_username": None, "external_registry_password": "x"},
    {"is_enabled": False, "architecture_filter": ["amd64"]},
    {"is_enabled": False, "skopeo_timeout_interval": 60},
    {"is_enabled": False, "sync_interval": -5},
    {"sync_interval": 7, "robot_username": "buynlarge+coolrobot"},
    {"sync_interval": 7, "external_registry_config": {"verify_tls": "abc"}},
    {"sync_interval": 7, "external_registry_config": {"proxy": {"https_proxy": 3}}},
])
def test_put_is_all_or_nothing(client, world, admin, database, body):
    create(client, admin)
    before = db_state(database)
    response = client.put(MIRROR, json=body, headers=admin)
    assert response.status_code == 400
    assert db_state(database) == before


def test_put_failure_after_writes_rolls_everything_back(client, world, admin, database, monkeypatch):
    create(client, admin)
    before = db_state(database)

    def explode(*_args, **_kwargs):
        raise InvalidRequest("boom")

    # ensure_at_least runs after is_enabled and external_reference were assigned.
    monkeypatch.setattr(mirror_service.repositories, "ensure_at_least", explode)
    response = client.put(MIRROR, json={"is_enabled": False, "external_reference": "quay.io/x/y",
                                        "robot_username": "devtable+dtrobot2", "sync_interval": 1}, headers=admin)
    assert response.status_code == 400 and response.get_json()["detail"] == "boom"
    assert db_state(database) == before


def test_post_failure_after_writes_leaves_no_rule_config_or_permission(client, world, admin, database,
                                                                       monkeypatch):
    before = db_state(database)

    def explode(*_args, **_kwargs):
        raise InvalidRequest("boom")

    # change_state runs last: the rule, the permission and the config were already flushed.
    monkeypatch.setattr(mirror_service.repositories, "change_state", explode)
    response = client.post(MIRROR, json=mirror_body(), headers=admin)
    assert response.status_code == 400
    assert db_state(database) == before
    assert robot_role(database, "devtable+dtrobot") is None


def test_put_changes_only_the_keys_sent_and_logs_each_as_quay(client_with, world, admin, database):
    client = client_with(feature_sparse_index=True)
    create(client, admin)
    before = view(client, admin)
    body = {
        "is_enabled": False,
        "external_reference": "example.com/foo/bar",
        "robot_username": "devtable+dtrobot2",
        "sync_start_date": "2030-05-06T07:08:09Z",
        "sync_interval": 86400,
        "skopeo_timeout_interval": 3600,
        "architecture_filter": ["arm64"],
        "external_registry_username": "newUser",
        "external_registry_password": "newPassword",
        "external_registry_config": {"verify_tls": False, "unsigned_images": True,
                                     "proxy": {"http_proxy": None, "https_proxy": "http://p:3128", "no_proxy": "x"}},
        "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["v1.*"]},
    }
    assert client.put(MIRROR, json=body, headers=admin).status_code == 201
    assert mirror_log(database)[1:] == [
        ("is_enabled", False),
        ("external_reference", "example.com/foo/bar"),
        ("robot_username", "devtable+dtrobot2"),
        ("sync_start_date", calendar.timegm((2030, 5, 6, 7, 8, 9))),  # Unix seconds, as Quay logs dates
        ("sync_interval", 86400),
        ("skopeo_timeout_interval", 3600),
        ("architecture_filter", ["arm64"]),
        ("external_registry_username", "newUser"),
        ("external_registry_password", "********"),
        ("verify_tls", False),
        ("unsigned_images", True),
        ("http_proxy", None),
        ("https_proxy", "http://p:3128"),
        ("no_proxy", "x"),
        ("mirror_rule", ["v1.*"]),
    ]
    after = view(client, admin)
    assert after["sync_status"] == before["sync_status"] and after["sync_retries_remaining"] == 3
    assert after["external_registry_config"] == {"verify_tls": False, "unsigned_images": True,
                                                 "proxy": {"http_proxy": None, "https_proxy": "http://p:3128",
                                                           "no_proxy": "x"}}
    # An empty PUT and an unchanged value change nothing and log nothing.
    count = len(mirror_log(database))
    assert client.put(MIRROR, json={}, headers=admin).status_code == 201
    assert client.put(MIRROR, json={"sync_interval": 86400, "is_enabled": False}, headers=admin).status_code == 201
    assert len(mirror_log(database)) == count
    assert repo_state(database) == RepositoryState.MIRROR


@pytest.mark.parametrize("body, status, username", [
    ({"external_registry_username": "newUsername", "external_registry_password": "newPassword"}, 201, "newUsername"),
    ({"external_registry_username": None, "external_registry_password": None}, 201, None),
    ({"external_registry_username": "myUsername", "external_registry_password": None}, 201, "myUsername"),
    ({"external_registry_username": "myNewUsername"}, 201, "myNewUsername"),
    ({"external_registry_username": None}, 201, None),
    ({"external_registry_username": "", "external_registry_password": ""}, 201, ""),
    ({"external_registry_password": "myNewPassword"}, 400, "fakeUsername"),
    ({"external_registry_password": None}, 400, "fakeUsername"),
])
def test_change_credentials(client, world, admin, database, body, status, username):
    create(client, admin)
    response = client.put(MIRROR, json=body, headers=admin)
    assert response.status_code == status
    if status == 400:
        assert response.get_json() == {
            "detail": "Unable to set a new password without also specifying a username."}
    assert view(client, admin)["external_registry_username"] == username


def test_delete_username_while_setting_password(client, world, admin):
    create(client, admin)
    response = client.put(MIRROR, json={"external_registry_username": None, "external_registry_password": "x"},
                          headers=admin)
    assert response.status_code == 400
    assert response.get_json() == {"detail": "Unable to delete username while setting a password."}


def test_proxy_key_lands_in_a_config_without_proxy(client, world, admin):
    """Quay drops the first proxy value when no proxy object was stored yet; we keep it."""
    create(client, admin, external_registry_config=DROP)
    assert view(client, admin)["external_registry_config"] == {}
    body = {"external_registry_config": {"proxy": {"https_proxy": "http://proxy.example.test:3128"}}}
    assert client.put(MIRROR, json=body, headers=admin).status_code == 201
    assert view(client, admin)["external_registry_config"] == {"proxy": {"https_proxy": "http://proxy.example.test:3128"}}
    assert client.put(MIRROR, json={"external_registry_config": {"proxy": {"no_proxy": "quay.io; rm -rf /"}}},
                      headers=admin).status_code == 201
    assert view(client, admin)["external_registry_config"] == {
        "proxy": {"https_proxy": "http://proxy.example.test:3128", "no_proxy": "quay.io; rm -rf /"}}


@pytest.mark.parametrize("key, value, status", [
    ("is_enabled", True, 201), ("is_enabled", False, 201), ("is_enabled", None, 400), ("is_enabled", "foo", 400),
    ("is_enabled", 1, 400),
    ("external_reference", "example.com/foo/bar", 201), ("external_reference", "example.com/foo", 201),
    ("external_reference", "example.com", 400), ("external_reference", None, 400),
    ("external_registry_username", "newTestUsername", 201), ("external_registry_username", None, 201),
    ("external_registry_username", 123, 400),
    ("robot_username", "devtable+dtrobot", 201), ("robot_username", "devtable+doesntExist", 400),
    ("robot_username", None, 400),
    ("sync_start_date", "2020-01-01T00:00:00Z", 201), ("sync_start_date", None, 400),
    ("sync_interval", 2000, 201), ("sync_interval", 0, 201), ("sync_interval", -5, 400),
    ("sync_interval", "60", 400), ("sync_interval", 60.5, 400), ("sync_interval", True, 400),
    ("sync_interval", None, 400), ("sync_interval", 2**31, 400), ("sync_interval", 10**40, 400),
    ("skopeo_timeout_interval", 3000, 201), ("skopeo_timeout_interval", 60, 400),
    ("skopeo_timeout_interval", 2**31, 400),
    ("architecture_filter", [], 201), ("architecture_filter", None, 201), ("architecture_filter", "amd64", 400),
    ("architecture_filter", [1], 400),
])
def test_change_config_one_key(client, world, admin, key, value, status):
    create(client, admin)
    before = view(client, admin)
    response = client.put(MIRROR, json={key: value}, headers=admin)
    assert response.status_code == status, response.get_data(as_text=True)
    after = view(client, admin)
    if status == 201 and key in after and key != "architecture_filter":
        assert after[key] == value
    if status == 400:
        assert after == before
        if key in {"is_enabled", "sync_interval", "skopeo_timeout_interval", "architecture_filter",
                   "external_registry_username"} or value is None:
            assert_invalid_request(response, key)


def test_change_registry_config_flags_and_proxy_values(client, world, admin):
    create(client, admin)
    for key, value, status in [
        ("verify_tls", True, 201), ("verify_tls", False, 201), ("verify_tls", None, 400), ("verify_tls", "abc", 400),
        ("unsigned_images", True, 201), ("unsigned_images", False, 201), ("unsigned_images", None, 400),
        ("unsigned_images", "abc", 400), ("unsigned_images", 1, 400),
    ]:
        before = view(client, admin)["external_registry_config"]
        response = client.put(MIRROR, json={"external_registry_config": {key: value}}, headers=admin)
        assert response.status_code == status, (key, value)
        if status == 400:
            assert_invalid_request(response, f"external_registry_config.{key}")
            assert view(client, admin)["external_registry_config"] == before
        else:
            assert view(client, admin)["external_registry_config"][key] is value
    # Proxy values are only ever environment variables for skopeo, never evaluated: any text is fine.
    for key in ("http_proxy", "https_proxy", "no_proxy"):
        for value in ("http://proxy.corp.example.com", None, "proxy.example.com; rm -rf /"):
            assert client.put(MIRROR, json={"external_registry_config": {"proxy": {key: value}}},
                              headers=admin).status_code == 201
            assert view(client, admin)["external_registry_config"]["proxy"][key] == value


def test_ansible_style_put_of_what_was_read_changes_nothing(client, world, admin, database):
    """Quay's Ansible collection PUTs the GET values back (plus top-level unsigned_images): a no-op."""
    create(client, admin)
    # Move the row away from its creation values as a worker would.
    set_config(database, sync_status=RepoMirrorStatus.SUCCESS, sync_start_date=datetime(2031, 2, 3, 4, 5, 6, 789))
    read = view(client, admin)
    before = db_state(database)
    body = dict(read, unsigned_images=False)  # read-only keys (sync_status, ...) travel along and are ignored
    body["external_registry_config"] = json.loads(json.dumps(read["external_registry_config"]))
    response = client.put(MIRROR, json=body, headers=admin)
    assert response.status_code == 201
    assert db_state(database) == before  # same columns (even the version), same rules, no log entry
    assert view(client, admin) == read


def test_unknown_keys_are_ignored(client, world, admin, database):
    body = mirror_body(unsigned_images=True, no_such_field={"a": [1]}, mirror_type="PUSH", sync_status="SYNCING",
                       external_registry_config={"verify_tls": True, "extra": 1, "proxy": {"ftp_proxy": "x"}})
    assert client.post(MIRROR, json=body, headers=admin).status_code == 201
    got = view(client, admin)
    assert got["sync_status"] == "NEVER_RUN" and got["mirror_type"] == "PULL"
    assert got["external_registry_config"] == {"verify_tls": True, "proxy": {}}
    before = db_state(database)
    assert client.put(MIRROR, json={"no_such_field": 1, "unsigned_images": True}, headers=admin).status_code == 201
    assert db_state(database) == before


# ---------------------------------------------------------------------------
# password secrecy
# ---------------------------------------------------------------------------

SECRET = "S3cret-Upstream-Passw0rd-4711"
SECRET2 = "An0ther-Upstream-Secret-0815"
SECRET_USER = "secret-upstream-user-0042"


def test_password_never_leaves_in_clear(client, world, admin, database, settings, caplog):
    caplog.set_level(logging.DEBUG)
    create(client, admin, external_registry_username=SECRET_USER, external_registry_password=SECRET)
    responses = [client.get(MIRROR, headers=admin)]
    responses.append(client.put(MIRROR, json={"external_registry_username": SECRET_USER,
                                              "external_registry_password": SECRET2}, headers=admin))
    responses.append(client.put(MIRROR, json={"external_registry_password": SECRET}, headers=admin))  # 400
    responses.append(client.put(MIRROR, json={"external_registry_username": None,
                                              "external_registry_password": SECRET}, headers=admin))  # 400
    responses.append(client.put(MIRROR, json={"external_registry_username": SECRET_USER,
                                              "external_registry_password": SECRET, "sync_interval": "x"},
                                headers=admin))  # 400
    responses.append(client.get(MIRROR, headers=admin))
    for response in responses:
        text_ = response.get_data(as_text=True)
        assert SECRET not in text_ and SECRET2 not in text_
        assert "external_registry_password" not in text_ or response.status_code == 400
    assert SECRET not in caplog.text and SECRET2 not in caplog.text

    with database.sessionmaker() as s:
        entries = audit.entries(s)
        raw_config = s.execute(text("SELECT * FROM repomirrorconfig")).all()
        raw_log = s.execute(text("SELECT * FROM logentry")).all()
    dumped = json.dumps([e.metadata_ for e in entries]) + repr(raw_config) + repr(raw_log)
    assert SECRET not in dumped and SECRET2 not in dumped
    assert ("external_registry_password", "********") in mirror_log(database)
    # The username is encrypted at rest too (only Quay's audit entry of a PUT names it).
    assert SECRET_USER not in repr(raw_config)

    if settings.is_sqlite:
        path = Path(settings.database_url.removeprefix("sqlite:///"))
        files = [p for p in path.parent.glob(path.name + "*") if p.is_file()]
        assert path in files
        for file in files:
            data = file.read_bytes()
            assert SECRET.encode() not in data and SECRET2.encode() not in data, file


# ---------------------------------------------------------------------------
# DELETE
# ---------------------------------------------------------------------------


def test_delete(client, world, admin, database):
    create(client, admin)
    assert repo_state(database) == RepositoryState.MIRROR
    assert client.delete(MIRROR, headers=world.headers("read")).status_code == 403
    assert client.delete(MIRROR).status_code == 401
    response = client.delete(MIRROR, headers=admin)
    assert response.status_code == 204 and response.get_data() == b""
    assert client.delete(MIRROR, headers=admin).status_code == 404
    assert client.get(MIRROR, headers=admin).status_code == 404
    assert repo_state(database) == RepositoryState.NORMAL
    state = db_state(database)
    assert state["configs"] == [] and state["rules"] == []
    assert robot_role(database, "devtable+dtrobot") == "write"  # as Quay when a mirror is disabled
    with database.sessionmaker() as s:
        deleted = audit.entries(s, "repo_mirror_config_deleted")
        assert [e.metadata_["external_reference"] for e in deleted] == ["quay.io/redhat/quay"]
        assert audit.entries(s, "change_repo_state")[-1].metadata_["state_changed"] == "NORMAL"
    create(client, admin)  # and a new configuration can be made
    assert view(client, admin)["sync_status"] == "NEVER_RUN"


def test_delete_keeps_a_read_only_repository_read_only(client, world, admin, database):
    create(client, admin)
    with database.transaction() as s:
        s.execute(update(Repository).where(Repository.name == "simple").values(state=RepositoryState.READ_ONLY))
    assert client.delete(MIRROR, headers=admin).status_code == 204
    assert repo_state(database) == RepositoryState.READ_ONLY


# ---------------------------------------------------------------------------
# architecture_filter
# ---------------------------------------------------------------------------


def test_architecture_filter_without_sparse_index(client, world, admin, database):
    before = db_state(database)
    response = client.post(MIRROR, json=mirror_body(architecture_filter=["amd64"]), headers=admin)
    assert response.status_code == 400
    assert response.get_json() == {"detail": "Architecture filtering requires FEATURE_SPARSE_INDEX to be enabled."}
    response = client.post(MIRROR, json=mirror_body(architecture_filter=["invalid_arch"]), headers=admin)
    assert "FEATURE_SPARSE_INDEX" in response.get_json()["detail"]  # the setting is checked first
    assert db_state(database) == before
    create(client, admin, architecture_filter=[])
    assert view(client, admin)["architecture_filter"] == []
    response = client.put(MIRROR, json={"architecture_filter": ["amd64", "arm64"]}, headers=admin)
    assert response.status_code == 400 and "FEATURE_SPARSE_INDEX" in response.get_json()["detail"]
    assert client.put(MIRROR, json={"architecture_filter": []}, headers=admin).status_code == 201
    assert client.put(MIRROR, json={"architecture_filter": None}, headers=admin).status_code == 201
    assert view(client, admin)["architecture_filter"] == []


def test_architecture_filter_with_sparse_index(client_with, world, admin):
    client = client_with(feature_sparse_index=True)
    create(client, admin, architecture_filter=["amd64", "s390x"])
    assert view(client, admin)["architecture_filter"] == ["amd64", "s390x"]
    for value in (["amd64", "arm64"], ["amd64", "arm64", "ppc64le", "s390x"], ["amd64"]):
        assert client.put(MIRROR, json={"architecture_filter": value}, headers=admin).status_code == 201
        assert view(client, admin)["architecture_filter"] == value
    for value, detail in [(["invalid_arch"], "Invalid architectures: invalid_arch"),
                          (["amd64", "zzz", "bad", "zzz"], "Invalid architectures: bad, zzz"),
                          (["AMD64"], "Invalid architectures: AMD64")]:
        response = client.put(MIRROR, json={"architecture_filter": value}, headers=admin)
        assert response.status_code == 400 and response.get_json() == {"detail": detail}
    assert_invalid_request(client.put(MIRROR, json={"architecture_filter": "amd64"}, headers=admin),
                           "architecture_filter")
    assert view(client, admin)["architecture_filter"] == ["amd64"]
    assert client.put(MIRROR, json={"architecture_filter": None}, headers=admin).status_code == 201
    assert view(client, admin)["architecture_filter"] == []


# ---------------------------------------------------------------------------
# sync-now and sync-cancel
# ---------------------------------------------------------------------------

LIVE = timedelta(hours=1)


@pytest.mark.parametrize("status, retries, expiration, enabled, expected", [
    (RepoMirrorStatus.NEVER_RUN, 3, None, True, 204),
    (RepoMirrorStatus.SUCCESS, 3, None, True, 204),
    (RepoMirrorStatus.FAIL, 2, None, True, 204),
    (RepoMirrorStatus.CANCEL, 0, None, True, 204),
    (RepoMirrorStatus.SYNC_NOW, 1, None, True, 204),
    (RepoMirrorStatus.NEVER_RUN, 3, None, False, 204),  # also when disabled
    (RepoMirrorStatus.SYNCING, 3, LIVE, True, 404),
    (RepoMirrorStatus.SYNCING, 3, -LIVE, True, 204),  # an expired lease may be re-queued
])
def test_sync_now_states(client, world, admin, database, status, retries, expiration, enabled, expected):
    create(client, admin)
    set_config(database, sync_status=status, sync_retries_remaining=retries, is_enabled=enabled,
               sync_expiration_date=utcnow() + expiration if expiration is not None else None)
    before = get_config(database)
    woken: list[int] = []
    events.subscribe(woken.append)
    try:
        response = client.post(f"{MIRROR}/sync-now", headers=admin)
    finally:
        events.unsubscribe(woken.append)
    assert response.status_code == expected
    after = get_config(database)
    if expected == 204:
        assert response.get_data() == b""
        assert after.sync_status == RepoMirrorStatus.SYNC_NOW
        assert after.sync_retries_remaining == max(retries, 1)
        assert after.sync_expiration_date is None
        assert after.sync_start_date == before.sync_start_date
        assert woken == [after.id]
        assert mirror_log(database)[-1] == ("sync_status", "SYNC_NOW")
    else:
        assert columns(after) == columns(before)
        assert woken == []


@pytest.mark.parametrize("status, expected", [
    (RepoMirrorStatus.SYNCING, 204), (RepoMirrorStatus.SYNC_NOW, 204),
    (RepoMirrorStatus.NEVER_RUN, 404), (RepoMirrorStatus.SUCCESS, 404), (RepoMirrorStatus.FAIL, 404),
    (RepoMirrorStatus.CANCEL, 404),
])
def test_sync_cancel_states(client, world, admin, database, status, expected):
    create(client, admin)
    set_config(database, sync_status=status,
               sync_expiration_date=utcnow() + LIVE if status == RepoMirrorStatus.SYNCING else None)
    before = get_config(database)
    response = client.post(f"{MIRROR}/sync-cancel", headers=admin)
    assert response.status_code == expected
    after = get_config(database)
    if expected == 204:
        assert response.get_data() == b""
        assert after.sync_status == RepoMirrorStatus.CANCEL and after.sync_retries_remaining == 0
        assert after.sync_expiration_date is None and after.sync_start_date == before.sync_start_date
        assert mirror_log(database)[-1] == ("sync_status", "SYNC_CANCEL")
        # The only way out of CANCEL is sync-now.
        assert client.post(f"{MIRROR}/sync-now", headers=admin).status_code == 204
        assert view(client, admin)["sync_retries_remaining"] == 1
    else:
        assert response.get_json()["error_type"] == "not_found"
        assert columns(after) == columns(before)


def test_put_does_not_change_status_or_lease(client, world, admin, database):
    create(client, admin)
    expires = utcnow().replace(microsecond=0) + LIVE
    set_config(database, sync_status=RepoMirrorStatus.SYNCING, sync_expiration_date=expires, lease_token="L",
               lease_owner="w1")
    assert client.put(MIRROR, json={"sync_interval": 42, "is_enabled": False}, headers=admin).status_code == 201
    config = get_config(database)
    assert (config.sync_status, config.sync_expiration_date, config.lease_token) == (
        RepoMirrorStatus.SYNCING, expires, "L")
    assert config.sync_interval == 42


@pytest.mark.parametrize("path", ["/sync-now", "/sync-cancel"])
def test_sync_endpoints_auth(client, world, path):
    for label, status in [(None, 401), ("read", 403), ("write", 403), ("reader", 403), ("fresh", 403)]:
        assert client.post(MIRROR + path, headers=world.headers(label)).status_code == status
    garbage = client.post(MIRROR + path, headers={"Authorization": "Bearer notarealtoken"})
    assert garbage.status_code == 401 and garbage.get_json()["error_type"] == "invalid_token"


def test_sync_now_ignores_a_body(client, world, admin):
    """Quay's Ansible collection sends ``{}``."""
    create(client, admin)
    assert client.post(f"{MIRROR}/sync-now", json={}, headers=admin).status_code == 204


# ---------------------------------------------------------------------------
# superusers
# ---------------------------------------------------------------------------


ORG_MIRROR = "/api/v1/repository/buynlarge/orgrepo/mirror"


def org_body() -> dict[str, Any]:
    return mirror_body(robot_username="buynlarge+coolrobot")


@pytest.mark.parametrize("full_access, scopes, expected", [
    (False, "repo:admin super:user", 403),
    (True, "repo:admin super:user", 201),
    (True, "repo:admin", 403),  # full access needs a super:user token
])
def test_superuser_access(client_with, world, full_access, scopes, expected):
    world.repo("buynlarge/orgrepo")
    headers = {"Authorization": f"Bearer {world.token('su', 'devtable', scopes)}"}
    client = client_with(superusers_full_access=full_access)
    assert client.post(ORG_MIRROR, json=org_body(), headers=headers).status_code == expected
    if expected == 201:
        assert client.get(ORG_MIRROR, headers=headers).status_code == 200
        assert client.put(ORG_MIRROR, json={"sync_interval": 5}, headers=headers).status_code == 201
        assert client.post(f"{ORG_MIRROR}/sync-now", headers=headers).status_code == 204
        assert client.post(f"{ORG_MIRROR}/sync-cancel", headers=headers).status_code == 204
        assert client.delete(ORG_MIRROR, headers=headers).status_code == 204
    else:
        for method in ("GET", "PUT", "DELETE"):
            assert client.open(ORG_MIRROR, method=method, headers=headers, json={}).status_code == 403


def test_org_admin_manages_the_org_mirror(client, world):
    world.repo("buynlarge/orgrepo")
    fresh = world.headers("fresh")
    assert client.post(ORG_MIRROR, json=org_body(), headers=fresh).status_code == 201
    assert view_org(client, fresh)["robot_username"] == "buynlarge+coolrobot"
    # devtable is no member of buynlarge: with superuser full access off, it is an outsider.
    assert client.get(ORG_MIRROR, headers=world.headers("admin")).status_code == 403
    response = client.post(ORG_MIRROR.replace("orgrepo", "other"), json=org_body(), headers=fresh)
    assert response.status_code == 404


def view_org(client, headers) -> dict[str, Any]:
    response = client.get(ORG_MIRROR, headers=headers)
    assert response.status_code == 200
    return response.get_json()


# ---------------------------------------------------------------------------
# bad input: always a JSON 4xx, never a 500
# ---------------------------------------------------------------------------


def test_malformed_and_missing_bodies(client, world, admin):
    create(client, admin)
    for method in ("POST", "PUT"):
        response = client.open(MIRROR, method=method, data="this is not json", content_type="application/json",
                               headers=admin)
        assert response.status_code == 400
        assert response.get_json() == {
            "message": "The browser (or proxy) sent a request that this server could not understand."}
        response = client.open(MIRROR, method=method, data="", content_type="application/json", headers=admin)
        assert response.status_code == 400 and "message" in response.get_json()
        response = client.open(MIRROR, method=method, data="{}", content_type="text/plain", headers=admin)
        assert response.status_code == 415 and "message" in response.get_json()
        response = client.open(MIRROR, method=method, data="null", content_type="application/json", headers=admin)
        assert response.get_json()["detail"] == "Missing JSON body"
        for body in ("[]", '"text"', "42", "true"):
            response = client.open(MIRROR, method=method, data=body, content_type="application/json",
                                   headers=admin)
            assert_invalid_request(response)
        deep = "[" * 100_000 + "]" * 100_000
        response = client.open(MIRROR, method=method, data=deep, content_type="application/json", headers=admin)
        assert response.status_code == 400 and response.is_json
        deep_object = '{"root_rule": ' * 50_000 + "1" + "}" * 50_000
        response = client.open(MIRROR, method=method, data=deep_object, content_type="application/json",
                               headers=admin)
        assert response.status_code == 400 and response.is_json


@pytest.mark.parametrize("key, value, needle", [
    ("external_reference", "quay.io/" + "a" * 2048, "external_reference"),
    ("external_reference", 5, "external_reference"),
    ("external_reference", ["quay.io/a/b"], "external_reference"),
    ("external_registry_username", "u" * 1025, "external_registry_username"),
    ("external_registry_username", "\u00e9" * 1025, "external_registry_username"),
    ("external_registry_username", "\U0001F600" * 600, "external_registry_username"),
    ("external_registry_password", "p" * 1025, "external_registry_password"),
    ("external_registry_password", {"a": 1}, "external_registry_password"),
    ("robot_username", "devtable+" + "r" * 300, "robot_username"),
    ("robot_username", 7, "robot_username"),
    ("sync_start_date", 20200102, "sync_start_date"),
    ("sync_interval", 1e3, "sync_interval"),
    ("sync_interval", float("nan"), "sync_interval"),
    ("skopeo_timeout_interval", "300", "skopeo_timeout_interval"),
    ("skopeo_timeout_interval", 10**30, "skopeo_timeout_interval"),
    ("is_enabled", "true", "is_enabled"),
    ("is_enabled", 0, "is_enabled"),
    ("external_registry_config", None, "external_registry_config"),
    ("external_registry_config", "verify", "external_registry_config"),
    ("external_registry_config", {"proxy": None}, "external_registry_config.proxy"),
    ("external_registry_config", {"proxy": {"https_proxy": "h" * 2049}}, "external_registry_config.proxy"),
    ("root_rule", {"rule_kind": "tag_glob_csv", "rule_value": ["x" * 1025]}, "root_rule.rule_value"),
    ("root_rule", {"rule_kind": "tag_glob_csv", "rule_value": ["v"] * 1001}, "root_rule.rule_value"),
    ("architecture_filter", ["amd64"] * 65, "architecture_filter"),
    ("architecture_filter", ["a" * 65], "architecture_filter"),
    ("architecture_filter", {"arch": "amd64"}, "architecture_filter"),
])
def test_wrong_types_and_oversized_values(client, world, admin, database, key, value, needle):
    before = db_state(database)
    payload = json.dumps(mirror_body(**{key: value}))
    response = client.post(MIRROR, data=payload, content_type="application/json", headers=admin)
    assert_invalid_request(response, needle)
    assert db_state(database) == before
    create(client, admin)
    before = db_state(database)
    response = client.put(MIRROR, data=json.dumps({key: value}), content_type="application/json", headers=admin)
    assert_invalid_request(response, needle)
    assert db_state(database) == before


def test_longest_accepted_values_are_stored(client, world, admin):
    """At the limits everything fits its column on PostgreSQL too (no 500 at flush)."""
    username = "\U0001F600" * 512  # 2048 bytes of UTF-8: the longest accepted username
    body = mirror_body(
        external_reference="quay.io/" + "a" * 2040,
        external_registry_username=username,
        external_registry_password="\U0001F600" * 512,
        robot_username="devtable+dtrobot",
        sync_interval=2**31 - 1,
        skopeo_timeout_interval=2**31 - 1,
        sync_start_date="9999-12-31T23:59:59Z",
        root_rule={"rule_kind": "tag_glob_csv", "rule_value": ["x" * 1024] * 1000},
        external_registry_config={"proxy": {"https_proxy": "h" * 2048}},
    )
    assert client.post(MIRROR, json=body, headers=admin).status_code == 201
    got = view(client, admin)
    assert got["external_registry_username"] == username
    assert got["sync_start_date"] == "9999-12-31T23:59:59Z" and got["sync_interval"] == 2**31 - 1


@pytest.mark.parametrize("key, value", [
    ("external_reference", "quay.io/a\u0000b"),
    ("external_reference", "quay.io/a\ud800b"),
    ("external_registry_username", "a\u0000"),
    ("external_registry_password", "\udfff"),
    ("robot_username", "devtable+dt\u0000robot"),
    ("sync_start_date", "2020-01-02T06:30:00Z\u0000"),
    ("external_registry_config", {"proxy": {"no_proxy": "a\u0000"}}),
    ("root_rule", {"rule_kind": "tag_glob_csv", "rule_value": ["a\u0000"]}),
    ("root_rule", {"rule_type": "TAG_GLOB_CSV", "rule": "a\ud800"}),
    ("no_such_field", "\u0000"),
])
def test_unstorable_text_is_refused(client, world, admin, database, key, value):
    """NUL and lone surrogates cannot reach PostgreSQL: refused (by the request plumbing) before any check."""
    before = db_state(database)
    response = client.post(MIRROR, data=json.dumps(mirror_body(**{key: value})), content_type="application/json",
                           headers=admin)
    assert_invalid_request(response)
    assert db_state(database) == before
    create(client, admin)
    before = db_state(database)
    response = client.put(MIRROR, data=json.dumps({key: value}), content_type="application/json", headers=admin)
    assert_invalid_request(response)
    assert db_state(database) == before


@pytest.mark.parametrize("path", [
    "/api/v1/repository/devtable/sim%00ple/mirror",
    "/api/v1/repository/dev%00table/simple/mirror",
    "/api/v1/repository/devtable/%ED%A0%80/mirror",
    "/api/v1/repository/devtable/" + "a" * 5000 + "/mirror",
])
def test_odd_paths_answer_json(client, world, admin, path):
    for method in ("GET", "POST", "PUT", "DELETE"):
        response = client.open(path, method=method, json=mirror_body(), headers=admin)
        assert response.status_code in (400, 403, 404) and response.is_json, (method, response.status_code)


def test_unsupported_methods(client, world, admin):
    assert client.patch(MIRROR, json={}, headers=admin).status_code == 405
    assert client.get(f"{MIRROR}/sync-now", headers=admin).status_code == 405
    assert client.put(f"{MIRROR}/sync-cancel", headers=admin).status_code == 405


def test_concurrent_posts_create_one_configuration(app, world, admin, database, settings):
    """Racing POSTs: one 201, the others 409 (SQLite may also answer 503 to a writer it had to refuse)."""
    import threading

    barrier = threading.Barrier(6)
    statuses: list[int] = []

    def post() -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(client.post(MIRROR, json=mirror_body(), headers=admin).status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= ({201, 409, 503} if settings.is_sqlite else {201, 409}), statuses
    state = db_state(database)
    assert len(state["configs"]) == 1 and len(state["rules"]) == 1
