"""Failing syncs: wrong password, TLS, hung upstream, SSRF re-check, cancel; and what skopeo gets to see."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

from sqlalchemy import select

from quaymirror import audit
from quaymirror.db import utcnow
from quaymirror.mirror import status
from quaymirror.mirror.models import (
    MirrorOwnedTag,
    MirrorSyncRun,
    MirrorSyncTag,
    RepoMirrorConfig,
    RepoMirrorStatus,
)
from quaymirror.security import ssrf
from tests.common.images import push_images
from tests.common.mirrors import GatedProxy, ProcSampler, skopeo_processes
from tests.common.registries import AUTH_USERNAME
from tests.common.registry import hung_server
from tests.common.worker import sync_once

WRONG_PASSWORD = "Wr0ng-pa55word-x9"


def _everything_stored(database) -> str:
    """Every history row and audit entry as text, to grep for secrets."""
    with database.transaction() as session:
        rows = [*session.scalars(select(MirrorSyncRun)), *session.scalars(select(MirrorSyncTag)),
                *session.scalars(select(MirrorOwnedTag))]
        text = [json.dumps({c.name: str(getattr(r, c.key, "")) for c in r.__table__.columns}) for r in rows]
        text += [e.metadata_json for e in audit.entries(session)]
    return "\n".join(text)


def test_wrong_password_fails_auth_and_leaks_nowhere(auth_registry, database, mirrors, make_worker, tmp_path,
                                                     markers, caplog):
    push_images(auth_registry, "up/private", ["v1"], workdir=tmp_path / "img")
    proxy = GatedProxy(auth_registry.host, delay=0.15).start()  # slow, so skopeo lives long enough to look at
    try:
        markers.append(proxy.host)
        config_id = mirrors.create("org/private", f"{proxy.host}/up/private", ["*"], username=AUTH_USERNAME,
                                   password=WRONG_PASSWORD)
        worker = make_worker()
        caplog.set_level(logging.DEBUG)
        with ProcSampler(proxy.host) as sampler:
            sync_once(worker)
        run_dirs = {Path(argv[argv.index("--authfile") + 1]).parent for argv, _ in sampler.samples}
    finally:
        proxy.stop()

    row = mirrors.config(config_id)
    assert (RepoMirrorStatus(row.sync_status), row.sync_retries_remaining, row.lease_token) == (
        RepoMirrorStatus.FAIL, 2, None)
    [run] = mirrors.runs(config_id)
    assert (run.status, run.reason) == ("FAIL", "auth_failed")
    assert "unauthorized" in run.message

    # skopeo really ran (we saw it), credentials only through a private authfile, never on argv or in env.
    assert sampler.samples, "no skopeo process was observed"
    token = base64.b64encode(f"{AUTH_USERNAME}:{WRONG_PASSWORD}".encode()).decode()
    for argv, environ in sampler.samples:
        joined = "\0".join(argv)
        assert WRONG_PASSWORD not in joined and token not in joined
        assert WRONG_PASSWORD.encode() not in environ and token.encode() not in environ
        assert not any(a.startswith(("--creds", "--src-creds", "--dest-creds")) for a in argv)
    for directory in run_dirs:  # removed after the run
        assert not directory.exists()
    assert WRONG_PASSWORD not in caplog.text and token not in caplog.text
    assert WRONG_PASSWORD not in _everything_stored(database)
    with database.transaction() as session:
        [failed] = audit.entries(session, kind="repo_mirror_sync_failed")
    assert failed.metadata_["reason"] == "auth_failed"

    # Retries: FAIL, FAIL, FAIL -> 2, 1, then 3 with the start moved to the next interval; not due then.
    start = row.sync_start_date
    assert sync_once(worker) == 1
    assert mirrors.config(config_id).sync_retries_remaining == 1
    assert mirrors.config(config_id).sync_start_date == start
    assert sync_once(worker) == 1
    row = mirrors.config(config_id)
    assert (RepoMirrorStatus(row.sync_status), row.sync_retries_remaining) == (RepoMirrorStatus.FAIL, 3)
    assert row.sync_start_date > utcnow()
    assert sync_once(worker) == 0
    assert [r.trigger for r in mirrors.runs(config_id)] == ["sync_now", "schedule", "schedule"]


def test_authfile_is_private_while_skopeo_runs(auth_registry, database, mirrors, make_worker, tmp_path, markers):
    """While skopeo runs, its authfile is 0600 inside a 0700 directory; the right password syncs."""
    digests = push_images(auth_registry, "up/private", ["v1"], workdir=tmp_path / "img")
    proxy = GatedProxy(auth_registry.host, delay=0.1).start()
    try:
        markers.append(proxy.host)
        config_id = mirrors.create("org/private", f"{proxy.host}/up/private", ["*"], username=AUTH_USERNAME,
                                   password=auth_registry.password,
                                   proxy={"http_proxy": "http://proxy.example:3128", "no_proxy": "internal.example"},
                                   unsigned=True)
        worker = make_worker()
        modes: list[tuple[int, int]] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for _pid, argv in skopeo_processes(proxy.host):
                    for flag in ("--authfile", "--src-authfile"):
                        if flag in argv:
                            path = Path(argv[argv.index(flag) + 1])
                            try:
                                modes.append((stat.S_IMODE(path.stat().st_mode),
                                              stat.S_IMODE(path.parent.stat().st_mode)))
                            except OSError:
                                pass
                stop.wait(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ProcSampler(proxy.host) as sampler:
            sync_once(worker)
        stop.set()
        watcher.join(5)
    finally:
        proxy.stop()
    [run] = mirrors.runs(config_id)
    assert run.status == "SUCCESS", run.message
    storage = worker.settings.storage.path
    index = json.loads((storage / "org/private/index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digests["v1"]]
    assert modes and set(modes) == {(0o600, 0o700)}
    copies = [argv for argv, _ in sampler.samples if "copy" in argv]
    assert copies and all(argv[1:4] == ["--command-timeout", "305s", "--insecure-policy"] for argv in copies)
    assert all({"--all", "--preserve-digests", "--remove-signatures", "--src-tls-verify=false"} <= set(argv)
               for argv in copies)
    environ = {e for _, env in sampler.samples for e in env.split(b"\0")}
    assert b"HTTP_PROXY=http://proxy.example:3128" in environ and b"NO_PROXY=internal.example" in environ
    assert b"HTTPS_PROXY" not in {e.split(b"=")[0] for e in environ}
    assert "HTTP_PROXY" not in os.environ  # only skopeo's environment got it


def test_tls_verify_against_a_self_signed_upstream(tls_registry, database, mirrors, make_worker, tmp_path,
                                                   markers):
    markers.append(tls_registry.host)
    digests = push_images(tls_registry, "up/tls", ["v1", "v2"], workdir=tmp_path / "img")
    verified = mirrors.create("org/verified", f"{tls_registry.host}/up/tls", ["*"], verify_tls=True)
    unverified = mirrors.create("org/unverified", f"{tls_registry.host}/up/tls", ["*"], verify_tls=False)
    worker = make_worker()
    assert sync_once(worker) == 2
    [run] = mirrors.runs(verified)
    assert (run.status, run.reason) == ("FAIL", "tls_error")
    assert "x509" in run.message
    assert RepoMirrorStatus(mirrors.config(verified).sync_status) == RepoMirrorStatus.FAIL
    [run] = mirrors.runs(unverified)
    assert (run.status, run.tags_copied) == ("SUCCESS", 2)
    assert RepoMirrorStatus(mirrors.config(unverified).sync_status) == RepoMirrorStatus.SUCCESS
    assert {t: r.digest for t, r in mirrors.tags(run.id).items()} == digests


def test_hung_upstream_is_killed_at_the_timeout(database, mirrors, make_worker, markers):
    with hung_server(max_lifetime=60) as address:
        markers.append(address)
        config_id = mirrors.create("org/hung", f"{address}/up/hung", ["*"])
        worker = make_worker(skopeo_timeout_max=1.5)  # the worker's own bound (the API's minimum is 300 s)
        t0 = time.monotonic()
        sync_once(worker, timeout=30)
        elapsed = time.monotonic() - t0
        assert skopeo_processes(address) == []
    assert 1.4 < elapsed < 6, elapsed
    [run] = mirrors.runs(config_id)
    assert (run.status, run.reason) == ("FAIL", "timeout")
    assert "list-tags did not finish within 1.5s" in run.message
    row = mirrors.config(config_id)
    assert (RepoMirrorStatus(row.sync_status), row.sync_retries_remaining) == (RepoMirrorStatus.FAIL, 2)


def test_copy_timeout_fails_the_tag(registry, database, mirrors, make_worker, tmp_path, markers):
    push_images(registry, "up/slow", ["v1", "v2"], multiarch_every=0, workdir=tmp_path / "img")
    with GatedProxy(registry.host) as proxy:
        markers.append(proxy.host)
        proxy.hold()
        config_id = mirrors.create("org/slow", f"{proxy.host}/up/slow", ["*"])
        worker = make_worker(skopeo_timeout_max=1.0)
        sync_once(worker, timeout=30)
        assert skopeo_processes(proxy.host) == []
    [run] = mirrors.runs(config_id)
    assert (run.status, run.reason, run.tags_failed) == ("FAIL", "timeout", 2)
    assert {t: (r.outcome, r.reason) for t, r in mirrors.tags(run.id).items()} == {
        "v1": ("failed", "timeout"), "v2": ("failed", "timeout")}


def test_ssrf_recheck_refuses_before_any_skopeo(database, mirrors, make_worker):
    blocked = mirrors.create("org/blocked", "127.0.0.1:5000/up/x", ["*"])
    unresolvable = mirrors.create("org/nodns", "registry.example.com/up/x", ["*"])
    # skopeo is not even installed here: running it would fail differently (unknown_error).
    worker = make_worker(ssrf_allowed_hosts=(), skopeo_path="/nonexistent/skopeo")
    with ssrf.use_resolver({}):
        assert sync_once(worker) == 2
    [run] = mirrors.runs(blocked)
    assert (run.status, run.reason, run.message) == ("FAIL", "invalid_source", "Source registry location is not allowed")
    [run] = mirrors.runs(unresolvable)
    assert (run.status, run.reason) == ("FAIL", "connection_error")
    assert "Cannot resolve hostname" in run.message
    with database.transaction() as session:
        kinds = [e.kind for e in audit.entries(session) if e.kind.startswith("repo_mirror")]
        [entry] = [e.metadata_ for e in audit.entries(session, kind="repo_mirror_sync_failed")
                   if e.metadata_["reason"] == "invalid_source"]
    assert kinds == ["repo_mirror_sync_failed", "repo_mirror_sync_failed"]  # no "started" (Quay)
    assert (entry["verb"], entry["message"], entry["stdout"]) == ("end", "Source registry location is not allowed",
                                                                  "Not applicable")


def test_cancel_during_a_copy_stops_within_two_seconds(registry, database, mirrors, make_worker, tmp_path,
                                                       markers):
    digests = push_images(registry, "up/big", ["a", "b"], workdir=tmp_path / "img")
    with GatedProxy(registry.host) as proxy:
        markers.append(proxy.host)
        config_id = mirrors.create("org/big", f"{proxy.host}/up/big", ["*"])
        worker = make_worker()
        sync_once(worker)
        assert mirrors.runs(config_id)[-1].status == "SUCCESS"

        # Next run: "a" moved upstream (a copy is needed), "b" no longer matches (it would be pruned).
        push_images(registry, "up/big", ["a"], seed="moved", workdir=tmp_path / "img2")
        with database.transaction() as session:
            config = session.get(RepoMirrorConfig, config_id)
            config.root_rule.rule_value = ["a"]
            status.request_sync_now(session, config)
        proxy.hold()
        assert worker.run_pass() == 1
        assert proxy.blob_requested.wait(20), "the copy never started"
        assert skopeo_processes(proxy.host)
        with database.transaction() as session:
            assert status.cancel(session, session.get(RepoMirrorConfig, config_id))  # as the API does
        t0 = time.monotonic()
        assert worker.wait_idle(5)
        elapsed = time.monotonic() - t0
        assert skopeo_processes(proxy.host) == []
    assert elapsed < 2.0, elapsed
    row = mirrors.config(config_id)
    assert (RepoMirrorStatus(row.sync_status), row.sync_retries_remaining, row.lease_token,
            row.sync_expiration_date) == (RepoMirrorStatus.CANCEL, 0, None, None)
    run = mirrors.runs(config_id)[-1]
    assert (run.status, run.reason) == ("CANCEL", "cancelled")
    storage = worker.settings.storage.path
    index = json.loads((storage / "org/big/index.json").read_text())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
    assert tags == {"a": digests["a"], "b": digests["b"]}  # old "a" intact, "b" not pruned after a cancel
    with database.transaction() as session:
        last = audit.entries(session, kind="repo_mirror_sync_failed")[-1].metadata_
    assert (last["verb"], last["reason"]) == ("cancelled", "cancelled")
    # A cancelled mirror is not scheduled again (retries 0) until sync-now.
    assert worker.run_pass() == 0
    assert worker.wait_idle(5), "runs still busy"


def test_undecryptable_credentials_fail_the_run_without_skopeo(database, mirrors, make_worker):
    config_id = mirrors.create("org/keyed", "quay.io/up/x", ["*"], username="u", password="p")
    mirrors.update(config_id, external_registry_password="not-a-fernet-token")
    worker = make_worker(skopeo_path="/nonexistent/skopeo")
    with ssrf.use_resolver({"quay.io": ["3.3.3.3"]}):  # a public address: the SSRF check passes
        assert sync_once(worker) == 1
    [run] = mirrors.runs(config_id)
    assert (run.status, run.reason) == ("FAIL", "unknown_error")
    assert "could not be decrypted" in run.message
    with database.transaction() as session:
        kinds = [e.kind for e in audit.entries(session) if e.kind.startswith("repo_mirror")]
    assert kinds == ["repo_mirror_sync_started", "repo_mirror_sync_failed"]


def test_a_failed_mirror_waits_retry_seconds_but_sync_now_does_not(database, mirrors, make_worker):
    """Quay retries a failure at its next 30 s pass; the end of a run must not retry it at once."""
    config_id = mirrors.create("org/retry", "127.0.0.1:5000/up/x", ["*"])
    worker = make_worker(ssrf_allowed_hosts=(), retry_seconds=60)
    assert sync_once(worker) == 1  # refused by the SSRF re-check: FAIL, retries 2
    assert mirrors.config(config_id).sync_retries_remaining == 2
    assert sync_once(worker) == 0, "retried before QUAYMIRROR_RETRY_SECONDS passed"
    assert len(mirrors.runs(config_id)) == 1
    with database.transaction() as session:
        assert status.request_sync_now(session, session.get(RepoMirrorConfig, config_id))
    assert sync_once(worker) == 1, "a sync-now must not wait for the retry delay"
    assert len(mirrors.runs(config_id)) == 2
