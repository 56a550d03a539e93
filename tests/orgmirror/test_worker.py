"""The organization mirror's worker side against a real ``docker-registry`` on loopback, through the source kind
``registry`` (its ``/v2/_catalog``) and real skopeo: discovery, the repositories it creates (ORG_MIRROR, the
robot their admin), their syncs by the repository mirror's run (identical digests, digest skip on a re-sync,
the history API), filters and SKIP with Quay's messages, cancel, failures, DELETE. Both backends."""

from __future__ import annotations

import http.client
import json
import shutil
import time
import urllib.parse
import urllib.request

import pytest
from sqlalchemy import select

from quaymirror import audit
from quaymirror.accounts import service as accounts
from quaymirror.mirror.models import MirrorSyncRun, RepoMirrorConfig, RepoMirrorStatus
from quaymirror.orgmirror import worker as org_worker
from quaymirror.orgmirror.models import OrgMirrorConfig, OrgMirrorRepository, OrgMirrorStatus
from quaymirror.repositories.models import Repository, RepositoryPermission, RepositoryState
from tests.common.images import push_images
from tests.common.loopback import Recorder, Seen
from tests.common.mirrors import GatedProxy, layout_tags, skopeo_processes
from tests.common.org_mirror_api import org_mirror_body
from tests.common.ports import wait_for
from tests.common.worker import sync_once

MIRROR = "/api/v1/organization/sellnsmall/mirror"
UPSTREAM = {"alpha": ["1.0", "2.0"], "beta": ["1.0"], "gamma": ["1.0"]}


@pytest.fixture
def upstream(registry, tmp_path):
    """``team/alpha`` (an index and a single image), ``team/beta``, ``team/gamma``, and ``other/zeta`` (another
    namespace): {repository: {tag: digest}} of the ``team/`` ones."""
    digests = {}
    for i, (name, tags) in enumerate(UPSTREAM.items()):
        digests[name] = push_images(registry, f"team/{name}", tags, seed=name, workdir=tmp_path / name,
                                    multiarch_every=2 if i == 0 else 100)
    push_images(registry, "other/zeta", ["1.0"], seed="zeta", workdir=tmp_path / "zeta", multiarch_every=100)
    return digests


@pytest.fixture
def api(app_with):
    """A client whose SSRF rules allow the loopback registry (as the worker's)."""
    return app_with(ssrf_allowed_hosts=("127.0.0.1/32",)).test_client()


def configure(api, admin, registry, **overrides) -> None:
    values = {"external_registry_type": "registry", "external_registry_url": registry.url,
              "external_namespace": "team", "sync_start_date": "2025-01-01T00:00:00Z", **overrides}
    body = org_mirror_body(**values)
    response = api.post(MIRROR, json=body, headers=admin)
    assert response.status_code == 201, response.get_data(as_text=True)


def repositories(api, admin) -> dict[str, tuple[str, str | None]]:
    """{name: (status, message)} as GET mirror/repositories lists them."""
    response = api.get(f"{MIRROR}/repositories?limit=100", headers=admin)
    assert response.status_code == 200, response.get_data(as_text=True)
    return {r["name"]: (r["sync_status"], r["status_message"]) for r in response.get_json()["repositories"]}


def sync_all(worker, timeout: float = 120) -> None:
    """Passes until nothing is due (the worker runs two at once)."""
    deadline = time.monotonic() + timeout
    while sync_once(worker, timeout) and time.monotonic() < deadline:
        pass


def runs_finished(database) -> bool:
    """Every sync run opened so far has recorded its end (and at least one was opened)."""
    with database.transaction() as session:
        ends = session.scalars(select(MirrorSyncRun.finished)).all()
    return bool(ends) and all(end is not None for end in ends)


def config_row(database) -> OrgMirrorConfig:
    with database.transaction() as session:
        config = session.scalars(select(OrgMirrorConfig)).one()
        session.expunge(config)
        return config


def test_discovery_creates_every_repository_and_the_run_mirrors_it(api, orgs, registry, upstream, database,
                                                                   wsettings, make_worker):
    admin = orgs.headers("ORGADMIN")
    configure(api, admin, registry)
    assert org_worker.discover_due(database, wsettings) == 1
    assert repositories(api, admin) == {name: ("SYNC_NOW", None) for name in UPSTREAM}
    with database.transaction() as session:
        org = accounts.get_by_name(session, "sellnsmall")
        robot = accounts.get_by_name(session, "sellnsmall+mirrorbot")
        created = {r.name: r for r in session.scalars(select(Repository).where(Repository.namespace_id == org.id))}
        assert set(created) == set(UPSTREAM)
        assert {r.state for r in created.values()} == {RepositoryState.ORG_MIRROR}
        roles = {session.get(Repository, p.repository_id).name: p.role for p in session.scalars(
            select(RepositoryPermission).where(RepositoryPermission.user_id == robot.id))}
        assert roles == {name: "admin" for name in UPSTREAM}
        assert len(audit.entries(session, "org_mirror_repo_created")) == 3
    assert config_row(database).sync_status == OrgMirrorStatus.SUCCESS

    worker = make_worker()
    sync_all(worker)
    assert repositories(api, admin) == {name: ("SUCCESS", None) for name in UPSTREAM}
    for name, digests in upstream.items():
        assert layout_tags(wsettings, f"sellnsmall/{name}") == digests
    # The repository mirror API does not see the organization's configurations; the history API does.
    assert api.get("/api/v1/repository/sellnsmall/alpha/mirror", headers=orgs.headers("ALL")).status_code == 404
    runs = api.get("/api/v1/repository/sellnsmall/alpha/mirror/syncs", headers=orgs.headers("ALL"))
    assert runs.status_code == 200, runs.get_data(as_text=True)
    [run] = runs.get_json()["syncs"]
    assert (run["status"], run["tags"]["copied"]) == ("SUCCESS", 2)
    with database.transaction() as session:
        messages = [e.metadata_["message"] for e in audit.entries(session, "org_mirror_sync_success")]
    prefix = f"{registry.host}/team"
    assert f"Successfully synced '{prefix}/alpha': 2 tags" in messages
    assert "Discovery completed: 3 repos discovered, 3 new" in messages

    # The repositories count in the mirror health and in Quay's org-mirror metrics.
    health = api.get("/api/v1/repository/mirror/health?namespace=sellnsmall", headers=orgs.headers("ALL"))
    assert health.status_code == 200, health.get_data(as_text=True)
    assert health.get_json()["repositories"]["total"] == 3
    assert health.get_json()["repositories"]["completed"] == 3
    exposition = api.get("/metrics").get_data(as_text=True)
    assert 'quay_org_mirror_discovery_total{status="success"}' in exposition
    assert 'quay_org_mirror_repo_sync_total{status="success"}' in exposition
    assert "quay_org_mirror_repos_discovered 3.0" in exposition

    # sync-now: a discovery again, then every repository again: nothing copied (digest skip).
    assert api.post(f"{MIRROR}/sync-now", headers=admin).status_code == 204
    assert org_worker.discover_due(database, wsettings) == 1
    assert {s for s, _ in repositories(api, admin).values()} == {"SYNC_NOW"}
    sync_all(worker)
    runs = api.get("/api/v1/repository/sellnsmall/alpha/mirror/syncs", headers=orgs.headers("ALL")).get_json()
    latest = runs["syncs"][0]
    assert (latest["status"], latest["tags"]["copied"], latest["tags"]["skipped"]) == ("SUCCESS", 0, 2)

    # A tag deleted upstream is deleted here (the mirror created it); the other stays (Quay keeps both).
    shutil.rmtree(registry.data_dir / "docker/registry/v2/repositories/team/alpha/_manifests/tags/2.0")
    assert api.post(f"{MIRROR}/sync-now", headers=admin).status_code == 204
    org_worker.discover_due(database, wsettings)
    sync_all(worker)
    assert layout_tags(wsettings, "sellnsmall/alpha") == {"1.0": upstream["alpha"]["1.0"]}
    latest = api.get("/api/v1/repository/sellnsmall/alpha/mirror/syncs", headers=orgs.headers("ALL")).get_json()
    assert latest["syncs"][0]["tags"]["deleted"] == 1


def test_filters_set_repositories_aside_and_new_ones_appear(api, orgs, registry, upstream, database, wsettings,
                                                           tmp_path):
    admin = orgs.headers("ORGADMIN")
    configure(api, admin, registry)
    org_worker.discover_due(database, wsettings)
    assert api.put(MIRROR, json={"repository_filters": ["a*", "d*"]}, headers=admin).status_code == 200
    push_images(registry, "team/delta", ["1.0"], seed="delta", workdir=tmp_path / "delta", multiarch_every=100)
    assert api.post(f"{MIRROR}/sync-now", headers=admin).status_code in (204, 400)
    with database.transaction() as session:  # due now, whatever sync-now said about the queued repositories
        session.execute(OrgMirrorConfig.__table__.update().values(sync_status=int(OrgMirrorStatus.SYNC_NOW),
                                                                  sync_expiration_date=None))
    assert org_worker.discover_due(database, wsettings) == 1
    listed = repositories(api, admin)
    assert listed["beta"] == ("SKIP", "Repository excluded by filters")
    assert listed["gamma"] == ("SKIP", "Repository excluded by filters")
    assert listed["delta"] == ("SYNC_NOW", None)
    assert listed["alpha"][0] == "SYNC_NOW"
    with database.transaction() as session:
        aside = session.scalars(select(RepoMirrorConfig).join(
            OrgMirrorRepository, OrgMirrorRepository.id == RepoMirrorConfig.org_mirror_repository_id)
            .where(OrgMirrorRepository.repository_name.in_(["beta", "gamma"]))).all()
        assert [c.is_enabled for c in aside] == [False, False]
        assert {c.sync_status for c in aside} == {RepoMirrorStatus.CANCEL}  # their queued syncs were dropped
        # Set aside, never deleted locally.
        assert session.scalars(select(Repository).where(Repository.name == "beta")).one().state \
            == RepositoryState.ORG_MIRROR

    # Gone upstream: its own message. Filters cleared: the others come back.
    shutil.rmtree(registry.data_dir / "docker/registry/v2/repositories/team/gamma")
    assert api.put(MIRROR, json={"repository_filters": []}, headers=admin).status_code == 200
    with database.transaction() as session:
        session.execute(OrgMirrorConfig.__table__.update().values(sync_status=int(OrgMirrorStatus.SYNC_NOW),
                                                                  sync_expiration_date=None))
    org_worker.discover_due(database, wsettings)
    listed = repositories(api, admin)
    assert listed["gamma"] == ("SKIP", "Repository no longer in source registry")
    assert listed["beta"] == ("SYNC_NOW", None)


def test_an_empty_upstream_answer_changes_nothing(api, orgs, registry, upstream, database, wsettings):
    admin = orgs.headers("ORGADMIN")
    configure(api, admin, registry)
    org_worker.discover_due(database, wsettings)
    before = repositories(api, admin)
    with database.transaction() as session:
        session.execute(OrgMirrorConfig.__table__.update().values(external_namespace="nothing-here",
                                                                  sync_status=int(OrgMirrorStatus.SYNC_NOW),
                                                                  sync_expiration_date=None))
    assert org_worker.discover_due(database, wsettings) == 1
    assert {n: s for n, s in repositories(api, admin).items()} == before
    assert config_row(database).sync_status == OrgMirrorStatus.SUCCESS


def test_an_unreachable_upstream_fails_the_discovery_with_quays_entry(api, orgs, registry, upstream, database,
                                                                      wsettings):
    admin = orgs.headers("ORGADMIN")
    configure(api, admin, registry)
    registry.stop()
    assert org_worker.discover_due(database, wsettings) == 1
    config = config_row(database)
    assert config.sync_status == OrgMirrorStatus.FAIL
    assert config.sync_retries_remaining == 2  # retried at the next pass
    with database.transaction() as session:
        [entry] = audit.entries(session, "org_mirror_sync_failed")
        assert entry.metadata_["message"].startswith("Failed to fetch repositories from source: ")
    assert repositories(api, admin) == {}


def test_cancel_cancels_every_repository_at_once_and_the_discovery_completes_it(api, orgs, registry, upstream,
                                                                              database, wsettings):
    admin = orgs.headers("ORGADMIN")
    configure(api, admin, registry)
    org_worker.discover_due(database, wsettings)
    assert api.post(f"{MIRROR}/sync-cancel", headers=admin).status_code == 204
    assert {s for s, _ in repositories(api, admin).values()} == {"CANCEL"}
    with database.transaction() as session:
        assert {c.sync_status for c in session.scalars(select(RepoMirrorConfig))} == {RepoMirrorStatus.CANCEL}
    assert config_row(database).sync_status == OrgMirrorStatus.CANCEL
    assert org_worker.discover_due(database, wsettings) == 1  # the cancel is processed, no listing
    config = config_row(database)
    assert (config.sync_status, config.sync_retries_remaining) == (OrgMirrorStatus.SUCCESS, 3)
    with database.transaction() as session:
        [entry] = audit.entries(session, "org_mirror_sync_failed")
        assert entry.metadata_["message"] == "Sync cancelled: 0 repos set to cancelled"


def test_delete_gives_the_repositories_back_with_their_tags(api, orgs, registry, upstream, database, wsettings,
                                                          make_worker):
    admin = orgs.headers("ORGADMIN")
    configure(api, admin, registry)
    org_worker.discover_due(database, wsettings)
    sync_all(make_worker())
    assert api.delete(MIRROR, headers=admin).status_code == 204
    with database.transaction() as session:
        assert session.scalars(select(RepoMirrorConfig)).all() == []
        assert {r.state for r in session.scalars(select(Repository).where(Repository.name.in_(UPSTREAM)))} \
            == {RepositoryState.NORMAL}
    assert layout_tags(wsettings, "sellnsmall/beta") == upstream["beta"]


def test_sync_cancel_stops_the_running_copies_within_two_seconds(api, orgs, registry, upstream, database,
                                                                 wsettings, make_worker, markers):
    """Blob requests held by a proxy in front of the registry keep the copies running until the cancel."""
    admin = orgs.headers("ORGADMIN")
    with GatedProxy(registry.host) as proxy:
        markers.append(proxy.host)
        proxy.hold()
        configure(api, admin, registry, external_registry_url=f"http://{proxy.host}")
        make_worker(poll=True)
        assert proxy.blob_requested.wait(30), "no copy started"
        t0 = time.monotonic()
        assert api.post(f"{MIRROR}/sync-cancel", headers=admin).status_code == 204
        wait_for(lambda: not skopeo_processes(proxy.host), 10, what="the copies to stop")
        stopped = time.monotonic() - t0
        wait_for(lambda: {s for s, _ in repositories(api, admin).values()} == {"CANCEL"}, 10,
                 what="every repository cancelled")
        wait_for(lambda: runs_finished(database), 10, what="the runs to record their end")
    assert stopped <= 2, stopped
    with database.transaction() as session:
        statuses = {c.sync_status for c in session.scalars(select(RepoMirrorConfig))}
        messages = [e.metadata_.get("message", "") for e in audit.entries(session, "org_mirror_sync_cancelled")]
    assert statuses == {RepoMirrorStatus.CANCEL}
    assert any(m.startswith("Sync cancelled for ") for m in messages), messages


def test_three_workers_sync_each_repository_exactly_once(api, orgs, registry, database, wsettings, make_worker,
                                                         tmp_path):
    """Twelve upstream repositories (single images and indexes), three workers polling the same database: one
    discovery, one run per repository, every digest identical."""
    names = [f"repo{i:02d}" for i in range(12)]
    digests = {name: push_images(registry, f"team/{name}", ["1.0"], seed=name, workdir=tmp_path / name,
                                 multiarch_every=1 if i % 3 == 0 else 100) for i, name in enumerate(names)}
    admin = orgs.headers("ORGADMIN")
    configure(api, admin, registry)
    for _ in range(3):
        make_worker(poll=True)
    wait_for(lambda: {s for s, _ in repositories(api, admin).values()} == {"SUCCESS"}
             and len(repositories(api, admin)) == 12, 120, interval=0.2, what="every repository synced")
    with database.transaction() as session:
        assert len(audit.entries(session, "org_mirror_sync_started")) == 1 + 12  # one discovery, one per repo
        runs = session.execute(select(MirrorSyncRun.repository_id, MirrorSyncRun.status)).all()
    assert len(runs) == 12 and {status for _, status in runs} == {"SUCCESS"}
    assert len({repository_id for repository_id, _ in runs}) == 12
    for name in names:
        assert layout_tags(wsettings, f"sellnsmall/{name}") == digests[name]


class ListingStandIn:
    """A stand-in for Quay's and Harbor's listing APIs (neither can run here) on loopback, in front of a real
    registry: it answers Quay's user, organization and repository list endpoints (pages of two, ``next_page``)
    and Harbor's project repositories endpoint (``page``/``page_size``, ``project/name`` names), from the
    registry's own catalog under the namespace, and passes every ``/v2/`` request through to the registry, so
    skopeo pulls through it. ``requests``: the API requests it answered."""

    def __init__(self, registry, namespace: str) -> None:
        self.registry = registry
        self.namespace = namespace
        self.requests: list[str] = []
        self.recorder = Recorder(answer=self.answer).start()
        self.url = self.recorder.url

    def names(self) -> list[str]:
        with urllib.request.urlopen(f"{self.registry.url}/v2/_catalog?n=1000", timeout=10) as answer:
            catalog = json.load(answer)["repositories"]
        prefix = self.namespace + "/"
        return sorted(n[len(prefix):] for n in catalog if n.startswith(prefix))

    def answer(self, seen: Seen) -> tuple[int, dict[str, str], bytes]:
        url = urllib.parse.urlsplit(seen.path)
        if url.path.startswith("/v2/"):
            return self.forward(seen)
        self.requests.append(seen.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        names = self.names()
        if url.path in ("/api/v1/user/", f"/api/v1/organization/{self.namespace}"):
            return self.json({"name": self.namespace})
        if url.path == "/api/v1/repository" and query.get("namespace") == self.namespace:
            start = int(query.get("next_page") or 0)
            body: dict = {"repositories": [{"namespace": self.namespace, "name": n} for n in names[start:start + 2]]}
            if start + 2 < len(names):
                body["next_page"] = str(start + 2)
            return self.json(body)
        if url.path == f"/api/v2.0/projects/{self.namespace}/repositories":
            page, size = int(query["page"]), int(query["page_size"])
            return self.json([{"name": f"{self.namespace}/{n}"} for n in names[(page - 1) * size:page * size]])
        return self.json({"error": "not found"}, 404)

    @staticmethod
    def json(body: object, code: int = 200) -> tuple[int, dict[str, str], bytes]:
        return code, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def forward(self, seen: Seen) -> tuple[int, dict[str, str], bytes]:
        upstream = http.client.HTTPConnection(self.registry.host, timeout=30)
        try:
            upstream.putrequest(seen.method, seen.path, skip_host=True, skip_accept_encoding=True)
            for key, value in seen.items:  # every Accept header (skopeo sends several)
                if key.lower() != "connection":
                    upstream.putheader(key, value)
            upstream.endheaders()
            answer = upstream.getresponse()
            data = answer.read()
            headers = {k: v for k, v in answer.getheaders() if k.lower() not in ("connection", "transfer-encoding")}
            return answer.status, headers, data
        finally:
            upstream.close()

    def close(self) -> None:
        self.recorder.stop()


@pytest.fixture
def twelve(registry, tmp_path):
    """Twelve upstream repositories under ``team/``, every third tag a three-platform index:
    {repository: {tag: digest}}."""
    return {f"repo{i:02d}": push_images(registry, f"team/repo{i:02d}", ["1.0", "2.0"] if i % 4 == 0 else ["1.0"],
                                        seed=f"r{i}", workdir=tmp_path / f"repo{i}", multiarch_every=3)
            for i in range(12)}


@pytest.mark.parametrize("kind", ["quay", "harbor"])
def test_quay_and_harbor_sources_are_discovered_and_mirrored(api, orgs, registry, twelve, database, wsettings,
                                                             make_worker, kind):
    stand_in = ListingStandIn(registry, "team")
    try:
        admin = orgs.headers("ORGADMIN")
        configure(api, admin, registry, external_registry_type=kind, external_registry_url=stand_in.url,
                  external_registry_username="$oauthtoken", external_registry_password="upstream-token",
                  external_registry_config={"page_size": 2})
        assert org_worker.discover_due(database, wsettings) == 1
        assert repositories(api, admin) == {name: ("SYNC_NOW", None) for name in twelve}
        if kind == "quay":  # the connection test, then six pages of two (the token: no public=true)
            assert stand_in.requests == ["/api/v1/user/", "/api/v1/organization/team",
                                         "/api/v1/repository?namespace=team",
                                         *(f"/api/v1/repository?namespace=team&next_page={n}" for n in (2, 4, 6, 8, 10))]
        else:  # six full pages ask for the next one, the empty seventh stops
            assert stand_in.requests == [f"/api/v2.0/projects/team/repositories?page={n}&page_size=2"
                                         for n in range(1, 8)]
        sync_all(make_worker(worker_concurrency=4))
        assert repositories(api, admin) == {name: ("SUCCESS", None) for name in twelve}
        for name, digests in twelve.items():
            assert layout_tags(wsettings, f"sellnsmall/{name}") == digests
    finally:
        stand_in.close()


def test_the_architecture_filter_applies_to_every_repository(app_with, orgs, registry, upstream, database,
                                                             wsettings, make_worker):
    """quaymirror's own key: only arm64 of each index is mirrored; GET shows the filter once set."""
    api = app_with(ssrf_allowed_hosts=("127.0.0.1/32",), feature_sparse_index=True).test_client()
    admin = orgs.headers("ORGADMIN")
    configure(api, admin, registry, architecture_filter=["arm64"])
    assert api.get(MIRROR, headers=admin).get_json()["architecture_filter"] == ["arm64"]
    refused = api.put(MIRROR, json={"architecture_filter": ["vax"]}, headers=admin)
    assert (refused.status_code, refused.get_json()["detail"]) == (400, "Invalid architectures: vax")
    org_worker.discover_due(database, wsettings)
    sync_all(make_worker(feature_sparse_index=True))
    syncs = api.get("/api/v1/repository/sellnsmall/alpha/mirror/syncs", headers=orgs.headers("ALL")).get_json()
    run = api.get(f"/api/v1/repository/sellnsmall/alpha/mirror/syncs/{syncs['syncs'][0]['id']}",
                  headers=orgs.headers("ALL")).get_json()
    platforms = {r["tag"]: r["platforms"] for r in run["tag_results"]}
    assert platforms["1.0"] == ["linux/arm64"]  # the index: its arm64 image only
    # Cleared: GET answers Quay's keys only again.
    assert api.put(MIRROR, json={"architecture_filter": []}, headers=admin).status_code == 200
    assert "architecture_filter" not in api.get(MIRROR, headers=admin).get_json()


def test_a_name_quays_repository_rule_refuses_fails_its_row_only(api, orgs, registry, upstream, database,
                                                                 wsettings, tmp_path):
    """A nested upstream name (``team/sub/app``) cannot be a repository here: that row fails with Quay's
    message and entry; the others are created."""
    push_images(registry, "team/sub/app", ["1.0"], seed="nested", workdir=tmp_path / "nested", multiarch_every=100)
    admin = orgs.headers("ORGADMIN")
    configure(api, admin, registry)
    assert org_worker.discover_due(database, wsettings) == 1
    listed = repositories(api, admin)
    assert listed["sub/app"] == ("FAIL", "Failed to create local repository for 'sub/app'")
    assert {listed[name][0] for name in UPSTREAM} == {"SYNC_NOW"}
    with database.transaction() as session:
        [entry] = audit.entries(session, "org_mirror_repo_creation_failed")
        assert entry.metadata_["external_reference"] == f"{registry.host}/team/sub/app"
        assert entry.metadata_["error"] == "Invalid repository name"
