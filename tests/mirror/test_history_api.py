"""The sync history endpoints: newest first, paginated, per-tag results, live progress, trimming, auth."""

from __future__ import annotations

import pytest

from quaymirror.mirror import history
from quaymirror.mirror.history_api import register
from quaymirror.mirror.models import RepoMirrorStatus, RunStatus, TagOutcome
from tests.common.images import push_images
from tests.common.mirrors import GatedProxy
from tests.common.ports import wait_for
from tests.common.worker import sync_once

BASE = "/api/v1/repository/devtable/mirrored/mirror/syncs"


@pytest.fixture
def api_client(app):
    """The app's client, with the history endpoints registered if app.py does not do it (yet)."""
    if "mirror_syncs" not in app.view_functions:
        from quaymirror.app import QuayApi

        register(QuayApi(app, prefix="/api/v1"))
    return app.test_client()


def _fake_runs(database, config_id: int, repository_id: int, count: int) -> list[int]:
    ids = []
    for i in range(count):
        with database.transaction() as session:
            run = history.start_run(session, repository_id=repository_id, config_id=config_id,
                                    trigger="schedule", worker="test", lease_token=f"t{i}")
            history.set_matched(session, run.id, 1)
            history.record_tag(session, run.id, "v1", TagOutcome.SKIPPED, digest="sha256:" + "a" * 64)
            history.finish_run(session, run.id, RunStatus.SUCCESS)
            ids.append(run.id)
    return ids


def test_list_paginate_detail_and_auth(api_client, world, database, mirrors):
    config_id = mirrors.create("devtable/mirrored", "quay.io/x/y", ["*"])
    repository_id = mirrors.config(config_id).repository_id
    ids = _fake_runs(database, config_id, repository_id, 5)

    page1 = api_client.get(f"{BASE}?limit=2", headers=world.headers("admin"))
    assert page1.status_code == 200, page1.get_json()
    body = page1.get_json()
    assert [r["id"] for r in body["syncs"]] == [ids[4], ids[3]]
    assert (body["page"], body["has_additional"]) == (1, True)
    run = body["syncs"][0]
    assert (run["status"], run["trigger"], run["in_progress"], run["tags"]["skipped"], run["progress"]) == (
        "SUCCESS", "schedule", False, 1, {"done": 1, "total": 1})
    assert run["started"].endswith("Z") and run["finished"].endswith("Z")
    page3 = api_client.get(f"{BASE}?limit=2&page=3", headers=world.headers("admin")).get_json()
    assert ([r["id"] for r in page3["syncs"]], page3["has_additional"]) == ([ids[0]], False)

    detail = api_client.get(f"{BASE}/{ids[1]}", headers=world.headers("admin"))
    assert detail.status_code == 200
    assert detail.get_json()["tag_results"] == [{
        "tag": "v1", "digest": "sha256:" + "a" * 64, "outcome": "skipped", "reason": None, "output": None,
        "bytes": None, "duration_ms": None, "finished": detail.get_json()["tag_results"][0]["finished"],
        "upstream_digest": None, "platforms": None}]

    assert api_client.get(BASE).status_code == 401
    assert api_client.get(BASE, headers=world.headers("reader")).status_code == 403
    assert api_client.get(BASE, headers=world.headers("read")).status_code == 403  # read scope is not admin
    missing = api_client.get("/api/v1/repository/devtable/nope/mirror/syncs", headers=world.headers("admin"))
    assert missing.status_code == 404
    assert api_client.get(f"{BASE}/999999", headers=world.headers("admin")).status_code == 404
    other = mirrors.create("devtable/other", "quay.io/x/z", ["*"])
    [other_run] = _fake_runs(database, other, mirrors.config(other).repository_id, 1)
    assert api_client.get(f"{BASE}/{other_run}", headers=world.headers("admin")).status_code == 404
    bad = api_client.get(f"{BASE}?limit=0", headers=world.headers("admin"))
    assert bad.status_code == 400 and bad.get_json()["detail"] == "limit: must be between 1 and 100"

    # Trimming keeps the newest N finished runs of the repository.
    with database.transaction() as session:
        assert history.trim(session, repository_id, keep=2) == 3
    left = api_client.get(BASE, headers=world.headers("admin")).get_json()["syncs"]
    assert [r["id"] for r in left] == [ids[4], ids[3]]


def test_a_run_in_progress_shows_its_progress(api_client, world, registry, database, mirrors, make_worker,
                                               tmp_path, markers):
    push_images(registry, "up/app", ["a"], workdir=tmp_path / "img")
    with GatedProxy(registry.host) as proxy:
        markers.append(proxy.host)
        config_id = mirrors.create("devtable/mirrored", f"{proxy.host}/up/app", ["*"])
        worker = make_worker(history_keep=2)
        sync_once(worker)
        push_images(registry, "up/app", ["b"], workdir=tmp_path / "img2")
        mirrors.update(config_id, sync_status=int(RepoMirrorStatus.SYNC_NOW))
        proxy.hold()
        assert worker.run_pass() == 1
        assert proxy.blob_requested.wait(20)

        def progressed():
            runs = api_client.get(BASE, headers=world.headers("admin")).get_json()["syncs"]
            return runs if runs[0]["progress"]["done"] == 1 else None

        runs = wait_for(progressed, 10, what="the skipped tag to be recorded")
        current = runs[0]
        assert (current["status"], current["in_progress"], current["finished"], current["progress"]) == (
            "SYNCING", True, None, {"done": 1, "total": 2})
        detail = api_client.get(f"{BASE}/{current['id']}", headers=world.headers("admin")).get_json()
        assert [(t["tag"], t["outcome"]) for t in detail["tag_results"]] == [("a", "skipped")]
        proxy.release()
        assert worker.wait_idle(30)
    done = api_client.get(f"{BASE}/{current['id']}", headers=world.headers("admin")).get_json()
    assert (done["status"], done["progress"], done["tags"]["copied"]) == ("SUCCESS", {"done": 2, "total": 2}, 1)
    assert sorted((t["tag"], t["outcome"]) for t in done["tag_results"]) == [("a", "skipped"), ("b", "copied")]
    copied = next(t for t in done["tag_results"] if t["tag"] == "b")
    assert copied["digest"].startswith("sha256:") and copied["bytes"] > 0
    # history_keep=2: a third run trims the first one.
    mirrors.update(config_id, sync_status=int(RepoMirrorStatus.SYNC_NOW))
    sync_once(worker)
    assert len(api_client.get(BASE, headers=world.headers("admin")).get_json()["syncs"]) == 2
