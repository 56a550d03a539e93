"""How a run spends the machine: indexes copied first, skopeo's Go runtime sized to its share of the cores,
one TLS context per registry client, and no false "lease lost" as a run releases its own claim.

Against real skopeo (wrapped by a script that logs each call with its environment) and real registries.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading

import pytest

from quaymirror.db import utcnow
from quaymirror.mirror import history
from quaymirror.mirror import status as mstatus
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus, RunStatus
from quaymirror.mirror.worker import claims
from quaymirror.mirror.worker.registry_client import RegistryClient
from quaymirror.mirror.worker.runner import ActiveRun
from quaymirror.mirror.worker.skopeo import GOGC, ProcessGroup, StopReason
from tests.common.images import push_images
from tests.common.worker import skopeo_calls, sync_once

TAGS = ["a", "b", "c", "d", "e"]  # a, c and e are 3-platform indexes (push_images: every second one)


def _copied(log) -> list[str]:
    """The tags skopeo copied, in the order the copies started."""
    return [argv[-2].rsplit(":", 1)[1] for _, argv in skopeo_calls(log) if argv[0] == "copy"]


def test_indexes_are_copied_before_single_images(registry, database, mirrors, make_worker, tmp_path, markers,
                                                 counting_skopeo):
    wrapper, log = counting_skopeo
    markers.append(registry.host)
    push_images(registry, "up/app", TAGS, workdir=tmp_path / "img")
    config_id = mirrors.create("org/app", f"{registry.host}/up/app", ["*"])
    worker = make_worker(skopeo_path=str(wrapper), tag_concurrency=1)  # one copy at a time: the order shows
    assert sync_once(worker) == 1
    run = mirrors.runs(config_id)[-1]
    assert (run.status, run.tags_copied) == ("SUCCESS", len(TAGS))
    assert _copied(log) == ["a", "c", "e", "b", "d"]  # the indexes (longest copies) first, each group in order


@pytest.mark.parametrize(("tag_concurrency", "preset"), [(1, None), (6, None), (6, "150")])
def test_skopeo_gets_its_share_of_the_cores_and_a_lazier_collector(tag_concurrency, preset, registry, database,
                                                                   mirrors, make_worker, tmp_path, markers,
                                                                   counting_skopeo, monkeypatch):
    wrapper, log = counting_skopeo
    markers.append(registry.host)
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    if preset is None:
        monkeypatch.delenv("GOGC", raising=False)
    else:  # the worker's own environment wins
        monkeypatch.setenv("GOGC", preset)
    push_images(registry, "up/app", TAGS[:2], workdir=tmp_path / "img")
    config_id = mirrors.create("org/app", f"{registry.host}/up/app", ["*"])
    worker = make_worker(skopeo_path=str(wrapper), tag_concurrency=tag_concurrency)
    assert sync_once(worker) == 1
    assert mirrors.runs(config_id)[-1].status == "SUCCESS"
    cores = len(os.sched_getaffinity(0))
    expected = f"GOMAXPROCS={max(1, cores // tag_concurrency)} GOGC={preset or GOGC}"
    calls = skopeo_calls(log)
    assert [argv[0] for _, argv in calls] == ["copy", "copy"]
    assert {env for env, _ in calls} == {expected}


@pytest.mark.parametrize("verify", [True, False])
def test_one_tls_context_serves_every_connection_of_a_client(verify, tls_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.cert_dir / "ca.crt"))
    built = []
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: built.append(1) or real(*a, **k))
    digests = push_images(tls_registry, "ns/r", ["a", "b"], workdir=tmp_path / "img")
    client = RegistryClient(tls_registry.host, tls_verify=verify, trust_host=True)
    found: dict[str, str | None] = {}

    def head(tag: str) -> None:
        found[tag] = client.manifest_digest("ns/r", tag)

    threads = [threading.Thread(target=head, args=(tag,)) for tag in ["a", "b", "a", "b"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert found == digests
    assert len(client._open) == 4  # one kept-alive connection per thread...
    assert {conn._context for conn in client._open} == {client.ssl_context()}  # ...all on one context
    assert len(built) == (1 if verify else 0)  # the CA store is loaded once, and only to verify
    client.close()


def test_a_run_that_released_its_own_claim_has_not_lost_its_lease(database, mirrors, make_worker, caplog):
    """The lease keeper may read the row between the run's final commit and the run leaving the worker."""
    caplog.set_level(logging.INFO, logger="quaymirror")
    config_id = mirrors.create("org/app", "127.0.0.1:1/up/app", ["*"], status=RepoMirrorStatus.SYNC_NOW)
    worker = make_worker()
    with database.transaction() as session:
        [candidate] = claims.due(session, utcnow(), 10)
    [claimed] = claims.claim_many(database, [candidate], worker.owner, 60)

    def keep(finishing: bool) -> ProcessGroup:
        group = ProcessGroup()
        worker._runs[config_id] = ActiveRun(claimed, group, claimed.lease, finishing=finishing)
        try:
            worker._keep_once()
        finally:
            worker._runs.pop(config_id, None)
        return group

    with database.transaction() as session:  # what the run's recorder commits as it finishes
        assert mstatus.release(session, claimed.lease, RepoMirrorStatus.SUCCESS) == RepoMirrorStatus.SUCCESS
        history.finish_run(session, claimed.run_id, RunStatus.SUCCESS)
    assert not keep(finishing=True).is_stopped
    assert "lease lost" not in caplog.text
    # The same row seen by a run that is not finishing: its lease is gone, and it stops.
    assert keep(finishing=False).stopped == StopReason.LEASE_LOST
    assert "lease lost" in caplog.text
    with database.transaction() as session:
        assert session.get(RepoMirrorConfig, config_id).sync_status == RepoMirrorStatus.SUCCESS
