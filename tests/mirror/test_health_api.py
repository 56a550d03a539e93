"""GET /api/v1/repository/mirror/health and /api/v1/superuser/mirror/health: Quay's body, rules and auth
on both backends; QUAYMIRROR_WORKER_REPLICAS (Quay's REPO_MIRROR_WORKER_REPLICAS)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from quaymirror.accounts import service as accounts
from quaymirror.accounts.models import User
from quaymirror.db import utcnow
from quaymirror.mirror import heartbeat
from quaymirror.mirror.models import (
    MirrorSyncRun,
    RepoMirrorConfig,
    RepoMirrorRule,
    RepoMirrorStatus,
    RunStatus,
    new_uuid,
)
from quaymirror.repositories import service as repositories
from quaymirror.repositories.models import Repository, RepositoryState
from quaymirror.settings import Settings, SettingsError

pytestmark = pytest.mark.usefixtures("quay_dns")  # no request of these tests asks the real DNS

HEALTH = "/api/v1/repository/mirror/health"
SUPER_HEALTH = "/api/v1/superuser/mirror/health"
NO_CACHE = "no-cache, no-store, must-revalidate"
S = RepoMirrorStatus


@pytest.fixture
def hw(world):
    """The world plus a super:user token for devtable (a superuser) and an org member."""
    world.user("member")
    world.user("outsider")
    from quaymirror.accounts.models import OrganizationMember

    with world.database.transaction() as s:
        org = accounts.get_by_name(s, "buynlarge")
        s.add(OrganizationMember(organization_id=org.id, user_id=accounts.get_by_name(s, "member").id,
                                 role="member"))
    world.token("super", "devtable", "super:user repo:admin")
    world.token("member", "member", "repo:read")
    world.token("outsider", "outsider", "repo:read")
    return world


@pytest.fixture
def su_client(app_with):
    return app_with(superusers_full_access=True).test_client()


def mirror(world, path: str, status: S = S.SUCCESS, *, enabled: bool = True, retries: int = 3,
           state: RepositoryState = RepositoryState.MIRROR, last_sync_age: timedelta | None = None,
           lease_owner: str | None = None) -> int:
    """Insert a repository and its mirror configuration directly; return the repository id."""
    ns, name = path.split("/")
    with world.database.transaction() as s:
        namespace = accounts.get_by_name(s, ns)
        repo = repositories.create(s, namespace, name, state=state)
        robot = s.query(User).filter(User.robot_namespace_id == namespace.id).first()
        if robot is None:
            robot, _ = accounts.create_robot(s, _box(world), namespace, "mirrorbot")
        rule = RepoMirrorRule(repository_id=repo.id)
        rule.rule_value = ["*"]
        s.add(rule)
        s.flush()
        now = utcnow()
        config = RepoMirrorConfig(
            repository_id=repo.id, is_enabled=enabled, internal_robot_id=robot.id,
            external_reference=f"quay.io/up/{name}", sync_interval=3600, sync_start_date=now,
            sync_retries_remaining=retries, sync_status=int(status), sync_transaction_id=new_uuid(),
            root_rule_id=rule.id, skopeo_timeout=300,
            lease_token=new_uuid() if lease_owner else None, lease_owner=lease_owner,
            sync_expiration_date=now + timedelta(hours=1) if lease_owner else None,
        )
        s.add(config)
        s.flush()
        if last_sync_age is not None:
            finished = now - last_sync_age
            s.add(MirrorSyncRun(repository_id=repo.id, config_id=config.id, trigger="schedule", worker="w-old",
                          lease_token=new_uuid(), started=finished - timedelta(seconds=5), finished=finished,
                          status=RunStatus.SUCCESS))
        return repo.id


def alive(world, owner: str) -> None:
    """The heartbeat row of a live worker (a long interval: fresh for the whole test)."""
    with world.database.transaction() as s:
        heartbeat.register(s, owner, utcnow(), 3600)


def _box(world):
    from quaymirror.security.secrets import SecretBox

    return SecretBox(world.secret_key)


def get(client, world, label: str | None = "super", **params):
    return client.get(HEALTH, headers=world.headers(label), query_string=params)


# ------------------------------------------------------------------ body
def test_no_mirrors_is_healthy_with_every_key(hw, su_client):
    response = get(su_client, hw)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"healthy", "workers", "repositories", "tags_pending", "last_check", "issues"}
    assert body["healthy"] is True
    assert body["workers"] == {"active": 0, "configured": 0, "status": "healthy"}
    assert body["repositories"] == {"total": 0, "syncing": 0, "completed": 0, "failed": 0, "never_run": 0}
    assert body["tags_pending"] == 0
    assert body["last_check"].endswith("Z")
    assert body["issues"] == []
    assert response.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"


def test_counts_cover_only_enabled_configs_of_mirror_repositories(hw, su_client):
    mirror(hw, "devtable/ok1", S.SUCCESS, last_sync_age=timedelta(hours=1))
    mirror(hw, "devtable/ok2", S.SUCCESS, last_sync_age=timedelta(hours=1))
    mirror(hw, "devtable/running", S.SYNCING)
    mirror(hw, "devtable/queued", S.SYNC_NOW)
    mirror(hw, "devtable/cancelled", S.CANCEL, retries=0)
    mirror(hw, "devtable/new", S.NEVER_RUN)
    mirror(hw, "devtable/off", S.FAIL, enabled=False)
    mirror(hw, "devtable/normal", S.FAIL, state=RepositoryState.NORMAL)
    body = get(su_client, hw).get_json()
    assert body["repositories"] == {"total": 6, "syncing": 1, "completed": 2, "failed": 0, "never_run": 1}


def test_ten_successes_are_healthy(hw, su_client):
    for i in range(10):
        mirror(hw, f"devtable/r{i}", S.SUCCESS, last_sync_age=timedelta(minutes=10))
    response = get(su_client, hw)
    assert response.status_code == 200
    assert response.get_json()["issues"] == []


def test_half_failing_is_unhealthy_503_with_a_critical_issue_first(hw, su_client):
    for i in range(5):
        mirror(hw, f"devtable/ok{i}", S.SUCCESS, last_sync_age=timedelta(minutes=10))
    for i in range(5):
        mirror(hw, f"devtable/bad{i}", S.FAIL, retries=2)
    response = get(su_client, hw)
    assert response.status_code == 503
    body = response.get_json()
    assert body["healthy"] is False
    assert body["workers"]["status"] == "degraded"
    critical = [i for i in body["issues"] if i["severity"] == "critical"]
    assert len(critical) == 1 and body["issues"][0] == critical[0]
    assert critical[0]["message"] == "50.0% of repositories are failing (threshold: 20.0%)"
    assert critical[0]["timestamp"].endswith("Z")
    assert response.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"


def test_twenty_percent_is_not_above_the_threshold(hw, su_client):
    for i in range(8):
        mirror(hw, f"devtable/ok{i}", S.SUCCESS)
    for i in range(2):
        mirror(hw, f"devtable/bad{i}", S.FAIL, retries=2)
    assert get(su_client, hw).status_code == 200


def test_never_run_is_excluded_from_the_failure_rate(hw, su_client):
    mirror(hw, "devtable/bad", S.FAIL, retries=2)
    for i in range(4):
        mirror(hw, f"devtable/ok{i}", S.SUCCESS)
    for i in range(5):
        mirror(hw, f"devtable/new{i}", S.NEVER_RUN)
    response = get(su_client, hw)
    assert response.status_code == 200
    never = [i for i in response.get_json()["issues"] if "never been synced" in i["message"]]
    assert len(never) == 5  # samples capped at 5
    assert never[0]["severity"] == "warning"
    assert never[0]["message"] == "Repository devtable/new0 has never been synced"


def test_stale_repository_warning(hw, su_client):
    mirror(hw, "devtable/old", S.SUCCESS, last_sync_age=timedelta(hours=48))
    mirror(hw, "devtable/fresh", S.SUCCESS, last_sync_age=timedelta(hours=1))
    body = get(su_client, hw).get_json()
    assert body["healthy"] is True
    assert body["issues"] == [{"severity": "warning", "timestamp": body["issues"][0]["timestamp"],
                               "message": "Repository devtable/old hasn't synced in over 24 hours"}]


def test_at_most_five_stale_samples(hw, su_client):
    for i in range(7):
        mirror(hw, f"devtable/old{i}", S.SUCCESS, last_sync_age=timedelta(hours=30))
    issues = get(su_client, hw).get_json()["issues"]
    assert len([i for i in issues if "24 hours" in i["message"]]) == 5


def test_exhausted_retries_is_an_error_issue(hw, su_client):
    mirror(hw, "devtable/gaveup", S.FAIL, retries=0)
    mirror(hw, "devtable/retrying", S.FAIL, retries=1)
    for i in range(8):
        mirror(hw, f"devtable/ok{i}", S.SUCCESS)
    body = get(su_client, hw).get_json()
    errors = [i for i in body["issues"] if i["severity"] == "error"]
    assert [e["message"] for e in errors] == ["Repository devtable/gaveup has exhausted all retry attempts"]


def test_workers_come_from_heartbeats_and_tags_pending_from_runs(hw, su_client, database):
    repo_id = mirror(hw, "devtable/busy", S.SYNCING, lease_owner="host:1")
    mirror(hw, "devtable/busy2", S.SYNCING, lease_owner="host:2")
    with database.transaction() as s:
        config_id = s.query(RepoMirrorConfig.id).filter(RepoMirrorConfig.repository_id == repo_id).scalar()
        s.add(MirrorSyncRun(repository_id=repo_id, config_id=config_id, trigger="schedule", worker="host:1",
                      lease_token=new_uuid(), started=utcnow(), status=RunStatus.SYNCING, tags_matched=8, tags_done=3))
        s.add(MirrorSyncRun(repository_id=repo_id, config_id=None, trigger="schedule", worker="host:3",
                      lease_token=new_uuid(), started=utcnow() - timedelta(hours=2),
                      finished=utcnow() - timedelta(hours=2), status=RunStatus.SUCCESS, tags_matched=4, tags_done=4))
    body = get(su_client, hw).get_json()
    assert body["workers"] == {"active": 0, "configured": 0, "status": "healthy"}  # leases and runs: no liveness
    assert body["tags_pending"] == 5
    alive(hw, "host:1")
    alive(hw, "host:7")  # idle: no lease, no run
    assert get(su_client, hw).get_json()["workers"] == {"active": 2, "configured": 2, "status": "healthy"}


def test_detailed_lists_repositories_with_pagination(hw, su_client):
    mirror(hw, "devtable/b", S.SUCCESS, last_sync_age=timedelta(hours=1))
    mirror(hw, "devtable/a", S.NEVER_RUN)
    mirror(hw, "devtable/c", S.FAIL, retries=2)
    body = get(su_client, hw, detailed="true", limit=2).get_json()
    details = body["repositories"]["details"]
    assert [d["repository"] for d in details] == ["a", "b"]
    assert details[0] == {"namespace": "devtable", "repository": "a", "sync_status": "NEVER_RUN",
                          "is_enabled": True, "last_sync": None, "retries_remaining": 3}
    assert details[1]["last_sync"].endswith("Z")
    assert body["repositories"]["pagination"] == {"limit": 2, "offset": 0, "has_more": True}
    page = get(su_client, hw, detailed="true", limit=2, offset=2).get_json()["repositories"]
    assert [d["repository"] for d in page["details"]] == ["c"]
    assert page["pagination"] == {"limit": 2, "offset": 2, "has_more": False}


def test_not_detailed_has_no_details(hw, su_client):
    mirror(hw, "devtable/a", S.SUCCESS)
    repos = get(su_client, hw).get_json()["repositories"]
    assert "details" not in repos and "pagination" not in repos


def test_limit_and_offset_are_clamped(hw, su_client):
    body = get(su_client, hw, detailed="true", limit=5000, offset=-3).get_json()
    assert body["repositories"]["pagination"] == {"limit": 1000, "offset": 0, "has_more": False}
    body = get(su_client, hw, detailed="true", limit=0).get_json()
    assert body["repositories"]["pagination"]["limit"] == 1
    assert get(su_client, hw, limit="many").status_code == 400
    mirror(hw, "devtable/a", S.SUCCESS)
    largest = get(su_client, hw, detailed="true", limit=2**63 - 1, offset=2**63 - 1).get_json()
    assert (largest["repositories"]["details"], largest["repositories"]["pagination"]) == (
        [], {"limit": 1000, "offset": 2**63 - 1, "has_more": False})
    huge = get(su_client, hw, detailed="true", offset=10**30)  # no database integer holds it
    assert (huge.status_code, huge.get_json()["detail"]) == (
        400, "offset: must be between -9223372036854775808 and 9223372036854775807")


def test_namespace_filters_the_counts(hw, su_client):
    mirror(hw, "devtable/a", S.FAIL, retries=2)
    mirror(hw, "buynlarge/b", S.SUCCESS)
    response = get(su_client, hw, namespace="buynlarge")
    assert response.status_code == 200
    assert response.get_json()["repositories"]["total"] == 1
    assert get(su_client, hw).get_json()["repositories"]["total"] == 2


# ------------------------------------------------------------------ auth
def test_anonymous_is_401(hw, su_client):
    assert get(su_client, hw, None).status_code == 401


def test_global_view_needs_a_superuser_with_full_access(hw, client, su_client):
    assert get(su_client, hw, "super").status_code == 200
    assert get(client, hw, "super").status_code == 403  # full access off
    assert get(su_client, hw, "admin").status_code == 403  # superuser without a super:user token
    assert get(su_client, hw, "fresh").status_code == 403  # not a superuser


def test_unknown_namespace_is_404(hw, su_client, client):
    assert get(su_client, hw, "super", namespace="nobody").status_code == 404
    assert get(client, hw, "fresh", namespace="nobody").status_code == 404


@pytest.mark.parametrize(("label", "namespace", "status"), [
    ("fresh", "buynlarge", 200),      # org admin
    ("member", "buynlarge", 200),     # org member
    ("outsider", "buynlarge", 403),   # not a member
    ("fresh", "freshuser", 200),      # own user namespace
    ("fresh", "devtable", 403),       # someone else's user namespace
    ("admin", "devtable", 200),       # superuser, own namespace, full access off
    ("super", "buynlarge", 403),      # superuser without full access, other namespace
])
def test_namespace_access_without_full_access(hw, client, label, namespace, status):
    assert get(client, hw, label, namespace=namespace).status_code == status


def test_superuser_with_full_access_sees_any_namespace(hw, su_client):
    assert get(su_client, hw, "super", namespace="buynlarge").status_code == 200


def test_repository_rows_are_left_alone(hw, su_client, database):
    """The health read changes nothing."""
    mirror(hw, "devtable/a", S.SUCCESS)
    get(su_client, hw, detailed="true")
    with database.transaction() as s:
        assert s.query(Repository).filter(Repository.name == "a").one().state == RepositoryState.MIRROR


# ------------------------------------------------------------------ superuser endpoint
def super_get(client, world, label: str | None = "super", **params):
    return client.get(SUPER_HEALTH, headers=world.headers(label), query_string=params)


def _with_sample_issues(world) -> None:
    """One repository of each per-repository issue (stale, never run, retries exhausted), all healthy overall."""
    mirror(world, "devtable/old", S.SUCCESS, last_sync_age=timedelta(hours=48))
    mirror(world, "devtable/new", S.NEVER_RUN)
    mirror(world, "buynlarge/gaveup", S.FAIL, retries=0)
    for i in range(5):
        mirror(world, f"buynlarge/ok{i}", S.SUCCESS, last_sync_age=timedelta(hours=1))


@pytest.mark.parametrize(("label", "status"), [
    (None, 401),          # anonymous
    ("garbage", 401),     # unknown token
    ("expired", 401),     # expired super:user token of a superuser
    ("fresh", 403),       # not a superuser
    ("fake-super", 403),  # not a superuser, although the token carries super:user
    ("admin", 403),       # a superuser whose token lacks super:user
    ("super", 200),       # a superuser with super:user, full access off
])
def test_superuser_health_auth(hw, client, label, status):
    hw.tokens["garbage"] = "notarealtoken"
    hw.token("expired", "devtable", "super:user", expires_in=-60)
    hw.token("fake-super", "freshuser", "super:user repo:admin")
    response = super_get(client, hw, label)
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    if status == 401:
        assert body["error_type"] == "invalid_token"
        assert body["detail"] == "Requires authentication"
        assert body["status"] == 401
        assert set(body) == {"detail", "error_message", "error_type", "title", "type", "status"}
    elif status == 403:
        assert body["error_type"] == "insufficient_scope"
        assert body["status"] == 403


def test_superuser_health_passes_with_full_access_too(hw, su_client):
    assert super_get(su_client, hw).status_code == 200
    assert super_get(su_client, hw, "fresh").status_code == 403


def test_superuser_health_is_the_summary_without_samples_or_details(hw, client, su_client):
    _with_sample_issues(hw)
    response = super_get(client, hw, detailed="true", limit=2, offset=1, namespace="devtable")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == NO_CACHE
    body = response.get_json()
    assert set(body) == {"healthy", "workers", "repositories", "tags_pending", "last_check", "issues"}
    assert body["healthy"] is True
    assert body["workers"] == {"active": 0, "configured": 0, "status": "healthy"}
    # every namespace, whatever `namespace` says; no details or pagination, whatever `detailed` says
    assert body["repositories"] == {"total": 8, "syncing": 0, "completed": 6, "failed": 1, "never_run": 1}
    assert body["tags_pending"] == 0
    assert body["last_check"].endswith("Z")
    assert body["issues"] == []
    # the repository endpoint reports the same state with its samples and details
    full = get(su_client, hw, detailed="true").get_json()
    assert full["repositories"]["total"] == 8 and len(full["repositories"]["details"]) == 8
    assert {i["message"] for i in full["issues"]} == {
        "Repository devtable/old hasn't synced in over 24 hours",
        "Repository devtable/new has never been synced",
        "Repository buynlarge/gaveup has exhausted all retry attempts",
    }


def test_superuser_health_unhealthy_is_503_with_the_global_issue_only(hw, client):
    for i in range(5):
        mirror(hw, f"devtable/ok{i}", S.SUCCESS, last_sync_age=timedelta(minutes=10))
    for i in range(5):
        mirror(hw, f"buynlarge/bad{i}", S.FAIL, retries=0)  # each also an "exhausted" sample elsewhere
    response = super_get(client, hw)
    assert response.status_code == 503
    assert response.headers["Cache-Control"] == NO_CACHE
    body = response.get_json()
    assert body["healthy"] is False
    assert body["workers"] == {"active": 0, "configured": 0, "status": "degraded"}
    assert body["repositories"] == {"total": 10, "syncing": 0, "completed": 5, "failed": 5, "never_run": 0}
    assert body["issues"] == [{"severity": "critical", "timestamp": body["last_check"],
                               "message": "50.0% of repositories are failing (threshold: 20.0%)"}]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_superuser_health_is_in_the_openapi_document_with_the_super_user_scope(app):
    from quaymirror.openapi import SECURITY_SCHEME, build_spec

    op = build_spec(app)["paths"][SUPER_HEALTH]["get"]
    assert op["operationId"] == "getSuperuserMirrorHealth"
    assert op["security"] == [{SECURITY_SCHEME: ["super:user"]}]
    assert op["x-scope"] == "super:user"
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MirrorHealth"}
    assert {"401", "403", "503"} <= set(op["responses"])


# ------------------------------------------------------------------ QUAYMIRROR_WORKER_REPLICAS
REPLICAS_WARNING = ("2 mirror worker(s) are not reporting in this process "
                    "(REPO_MIRROR_WORKER_REPLICAS=3, quay_repository_mirror_workers_active=1)")


@pytest.mark.parametrize("path", [HEALTH, SUPER_HEALTH])
def test_missing_replicas_degrade_the_health(hw, app_with, path):
    mirror(hw, "devtable/busy", S.SYNCING, lease_owner="host:1")
    alive(hw, "host:1")
    mirror(hw, "devtable/ok", S.SUCCESS, last_sync_age=timedelta(hours=1))
    client = app_with(worker_replicas=3, superusers_full_access=True).test_client()
    response = client.get(path, headers=hw.headers("super"))
    assert response.status_code == 503
    assert response.headers["Cache-Control"] == NO_CACHE
    body = response.get_json()
    assert body["healthy"] is False
    assert body["workers"] == {"active": 1, "configured": 3, "status": "degraded"}
    assert body["issues"] == [{"severity": "warning", "message": REPLICAS_WARNING, "timestamp": body["last_check"]}]


def test_replicas_all_reporting_or_none_reporting_stay_healthy(hw, app_with):
    """Quay warns only for 0 < active < replicas, and only when there are mirrors."""
    assert super_get(app_with(worker_replicas=3).test_client(), hw).get_json()["workers"] == {
        "active": 0, "configured": 3, "status": "healthy"}  # no mirrors
    mirror(hw, "devtable/ok", S.SUCCESS, last_sync_age=timedelta(hours=1))
    response = super_get(app_with(worker_replicas=3).test_client(), hw)  # mirrors, no active worker
    assert response.status_code == 200
    assert response.get_json()["workers"] == {"active": 0, "configured": 3, "status": "healthy"}
    mirror(hw, "devtable/busy", S.SYNCING, lease_owner="host:1")
    alive(hw, "host:1")
    response = super_get(app_with(worker_replicas=1).test_client(), hw)
    assert response.status_code == 200
    assert response.get_json()["workers"] == {"active": 1, "configured": 1, "status": "healthy"}
    assert response.get_json()["issues"] == []
    unset = super_get(app_with(worker_replicas=None).test_client(), hw).get_json()
    assert unset["workers"] == {"active": 1, "configured": 1, "status": "healthy"}  # configured = active


def _env(tmp_path, **values: str) -> dict[str, str]:
    return {"QUAYMIRROR_INSTANCE_PATH": str(tmp_path), "QUAYMIRROR_SECRET_KEY": "k",
            **{f"QUAYMIRROR_{k}": v for k, v in values.items()}}


@pytest.mark.parametrize(("raw", "value"), [(None, None), ("1", 1), ("3", 3), (" 12 ", 12)])
def test_worker_replicas_setting(tmp_path, raw, value):
    env = _env(tmp_path) if raw is None else _env(tmp_path, WORKER_REPLICAS=raw)
    assert Settings.from_env(env).worker_replicas == value


@pytest.mark.parametrize("raw", ["0", "-2", "three", "2.5", "1e3", "", "  "])  # set but blank: refused, not "unset"
def test_unusable_worker_replicas_are_refused_at_start(tmp_path, raw):
    with pytest.raises(SettingsError, match="QUAYMIRROR_WORKER_REPLICAS"):
        Settings.from_env(_env(tmp_path, WORKER_REPLICAS=raw))
