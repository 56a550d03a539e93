"""A sync run's three events in the outbox: what a subscribed notification will be sent, run by run (real syncs).

Delivery is tested on its own (test_delivery*); here the rows the run writes, in the transaction of what they
report, are read back: which events, in which order, with which message and payload.
"""

from __future__ import annotations

from sqlalchemy import select

from quaymirror.mirror import status
from quaymirror.mirror.models import RepoMirrorConfig
from quaymirror.notifications.models import EVENTS, NotificationDelivery, RepositoryNotification
from quaymirror.security import ssrf
from tests.common.images import push_images
from tests.common.mirrors import GatedProxy
from tests.common.registries import AUTH_USERNAME
from tests.common.worker import sync_once

PAYLOAD_KEYS = ["repository", "namespace", "name", "docker_url", "homepage", "message", "event", "mirror"]


def _subscribe(database, config_id: int, events=EVENTS) -> None:
    """One webhook notification per event on the mirror's repository (nothing delivers them here)."""
    with database.transaction() as session:
        repository_id = session.get(RepoMirrorConfig, config_id).repository_id
        for event in events:
            notification = RepositoryNotification(repository_id=repository_id, event=event, method="webhook")
            notification.config = {"url": "http://127.0.0.1:9/hook"}
            session.add(notification)


def _deliveries(database) -> list[tuple[str, dict]]:
    with database.transaction() as session:
        rows = session.scalars(select(NotificationDelivery).order_by(NotificationDelivery.id)).all()
        return [(row.event, row.payload) for row in rows]


def test_a_successful_run_sends_started_then_success(registry, database, mirrors, make_worker, tmp_path):
    digests = push_images(registry, "up/app", ["v1", "v2", "dev"], workdir=tmp_path / "img")
    config_id = mirrors.create("org/app", f"{registry.host}/up/app", ["v*"])
    _subscribe(database, config_id)
    worker = make_worker(server_hostname="mirror.example.com", preferred_url_scheme="https")
    assert sync_once(worker) == 1
    [run] = mirrors.runs(config_id)

    [(first, started), (second, success)] = _deliveries(database)
    assert (first, second) == ("repo_mirror_sync_started", "repo_mirror_sync_success")
    pattern = f"'{registry.host}/up/app' with tag pattern 'v*'"
    # Quay's six keys first, as Quay sends them, then ours.
    assert list(started) == PAYLOAD_KEYS
    assert {k: started[k] for k in PAYLOAD_KEYS[:6]} == {
        "repository": "org/app", "namespace": "org", "name": "app",
        "docker_url": "mirror.example.com/org/app", "homepage": "https://mirror.example.com/repository/org/app",
        "message": pattern}
    assert (started["event"], started["mirror"]["status"], started["mirror"]["finished"]) == (
        "repo_mirror_sync_started", "started", None)
    assert success["message"] == pattern
    mirror = success["mirror"]
    assert (mirror["status"], mirror["reason"], mirror["run_id"], mirror["trigger"], mirror["external_reference"]) == (
        "success", None, run.id, "sync_now", f"{registry.host}/up/app")
    assert mirror["tags"] == {"matched": 2, "copied": 2, "skipped": 0, "deleted": 0, "failed": 0}
    assert mirror["failed_tags"] == []
    assert mirror["started"].endswith("Z") and mirror["finished"] >= mirror["started"]
    assert 0 <= mirror["duration_seconds"] < 120
    assert len(digests) == 3

    # A re-sync copies nothing and says so.
    with database.transaction() as session:
        status.request_sync_now(session, session.get(RepoMirrorConfig, config_id))
    assert sync_once(worker) == 1
    *_, (event, again) = _deliveries(database)
    assert (event, again["mirror"]["tags"]) == (
        "repo_mirror_sync_success", {"matched": 2, "copied": 0, "skipped": 2, "deleted": 0, "failed": 0})


def test_a_wrong_password_sends_started_then_exactly_one_failed(auth_registry, database, mirrors, make_worker,
                                                                 tmp_path):
    push_images(auth_registry, "up/private", ["v1"], workdir=tmp_path / "img")
    config_id = mirrors.create("org/private", f"{auth_registry.host}/up/private", ["*"], username=AUTH_USERNAME,
                               password="Wr0ng-pa55word-x9")
    _subscribe(database, config_id)
    assert sync_once(make_worker()) == 1
    deliveries = _deliveries(database)
    assert [event for event, _ in deliveries] == ["repo_mirror_sync_started", "repo_mirror_sync_failed"]
    failed = deliveries[1][1]
    assert failed["mirror"]["status"] == "failed" and failed["mirror"]["reason"] == "auth_failed"
    assert failed["message"].startswith(f"'{auth_registry.host}/up/private' with tag pattern '*': ")
    assert "Wr0ng-pa55word-x9" not in str(deliveries)


def test_a_refused_source_sends_only_failed_with_quays_message(database, mirrors, make_worker):
    config_id = mirrors.create("org/blocked", "127.0.0.1:5000/up/x", ["*"])
    _subscribe(database, config_id)
    with ssrf.use_resolver({}):
        assert sync_once(make_worker(ssrf_allowed_hosts=(), skopeo_path="/nonexistent/skopeo")) == 1
    [(event, payload)] = _deliveries(database)
    assert (event, payload["message"], payload["mirror"]["reason"]) == (
        "repo_mirror_sync_failed", "Source registry location is not allowed", "invalid_source")


def test_only_subscribed_events_and_only_this_repository(registry, database, mirrors, make_worker, tmp_path):
    push_images(registry, "up/app", ["v1"], workdir=tmp_path / "img")
    app = mirrors.create("org/app", f"{registry.host}/up/app", ["v*"])
    other = mirrors.create("org/other", f"{registry.host}/up/app", ["v*"])
    _subscribe(database, app, events=("repo_mirror_sync_failed",))
    _subscribe(database, other, events=("repo_mirror_sync_success",))
    assert sync_once(make_worker()) == 2
    [(event, payload)] = _deliveries(database)  # app succeeded too, but nobody asked to hear it
    assert (event, payload["repository"]) == ("repo_mirror_sync_success", "org/other")


def test_a_cancelled_run_is_failed_with_status_cancelled(registry, database, mirrors, make_worker, tmp_path,
                                                         markers):
    push_images(registry, "up/big", ["a"], workdir=tmp_path / "img")
    with GatedProxy(registry.host) as proxy:
        markers.append(proxy.host)
        config_id = mirrors.create("org/big", f"{proxy.host}/up/big", ["*"])
        _subscribe(database, config_id)
        worker = make_worker()
        proxy.hold()
        assert worker.run_pass() == 1
        assert proxy.blob_requested.wait(20), "the copy never started"
        with database.transaction() as session:
            assert status.cancel(session, session.get(RepoMirrorConfig, config_id))  # as the API does
        assert worker.wait_idle(5)
    deliveries = _deliveries(database)
    assert [event for event, _ in deliveries] == ["repo_mirror_sync_started", "repo_mirror_sync_failed"]
    mirror = deliveries[1][1]["mirror"]
    # Quay sends "failed" for a cancel and cannot tell them apart; the payload can.
    assert (mirror["status"], mirror["reason"]) == ("cancelled", "cancelled")
    assert deliveries[1][1]["message"] == f"'{proxy.host}/up/big' with tag pattern '*'"
