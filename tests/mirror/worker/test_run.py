"""Real syncs: first sync, no-change re-sync, moved and deleted tags, pruning rules, on both destinations.

Upstream is a real docker-registry on loopback filled with offline-built
images (every second tag a 3-platform OCI index); the destination is an OCI
layout (the embedded default) or a second, password-protected registry.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from quaymirror import audit
from quaymirror.mirror import status
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus
from quaymirror.mirror.worker.registry_client import RegistryClient
from tests.common.images import ARCHES, INDEX_MEDIA_TYPE, push_images
from tests.common.registries import AUTH_PASSWORD, AUTH_USERNAME
from tests.common.registry import Registry
from tests.common.worker import sync_once

TAGS = ["v1.0", "v1.1", "v1.2", "v2.0", "latest", "dev"]  # indexes: v1.0, v1.2, latest (0, 2, 4)
RULES = ["v1.*", "latest"]
MATCHED = ["latest", "v1.0", "v1.1", "v1.2"]


@dataclass
class Dest:
    """The destination under test, read back independently of the worker's own code."""

    kind: str
    root: Path | None = None
    registry: Registry | None = None

    def tags(self, repo: str) -> dict[str, str]:
        if self.kind == "oci":
            index = self.root / repo / "index.json"
            if not index.exists():
                return {}
            doc = json.loads(index.read_text())
            return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in doc["manifests"]}
        return {t: self.registry.manifest_digest(repo, t) for t in self.registry.tags(repo)}

    def skopeo_ref(self, repo: str, tag: str) -> list[str]:
        if self.kind == "oci":
            return [f"oci:{self.root / repo}:{tag}"]
        return ["--tls-verify=false", "--creds", f"{AUTH_USERNAME}:{AUTH_PASSWORD}",
                f"docker://{self.registry.host}/{repo}:{tag}"]

    def raw(self, repo: str, tag: str, *, arch: str | None = None) -> bytes:
        ref = self.skopeo_ref(repo, tag)
        prefix = ["--override-arch", arch] if arch else []
        cmd = ["skopeo", *prefix, "inspect", *(["--raw"] if arch is None else ["--config"]), *ref]
        out = subprocess.run(cmd, capture_output=True, timeout=30, check=True)
        return out.stdout


@pytest.fixture(params=["oci", "docker"])
def dest(request, wsettings, tmp_path) -> Dest:
    if request.param == "oci":
        return Dest("oci", root=wsettings.storage.path)
    reg = request.getfixturevalue("auth_registry")
    return Dest("docker", registry=reg)


@pytest.fixture
def dsettings(dest, wsettings):
    if dest.kind == "oci":
        return wsettings
    return wsettings.with_overrides(storage=f"docker://{dest.registry.host}", storage_username=AUTH_USERNAME,
                                    storage_password=AUTH_PASSWORD, storage_tls_verify=False)


def _sync_now(database, config_id: int) -> None:
    with database.transaction() as session:
        assert status.request_sync_now(session, session.get(RepoMirrorConfig, config_id))


def test_first_sync_resync_moved_and_deleted(registry, dest, dsettings, database, mirrors, make_worker,
                                             tmp_path, markers):
    markers.append(registry.host)
    upstream = push_images(registry, "up/app", TAGS, workdir=tmp_path / "img")
    config_id = mirrors.create("org/app", f"{registry.host}/up/app", RULES)
    worker = make_worker(storage=dsettings.storage, storage_username=dsettings.storage_username,
                         storage_password=dsettings.storage_password,
                         storage_tls_verify=dsettings.storage_tls_verify)

    # --- first sync: exactly the matching tags, byte-identical manifests, every platform of an index
    t0 = time.monotonic()
    assert sync_once(worker) == 1
    first = time.monotonic() - t0
    row = mirrors.config(config_id)
    assert (row.sync_status, row.sync_retries_remaining, row.lease_token, row.sync_expiration_date) == (
        RepoMirrorStatus.SUCCESS, 3, None, None)
    assert dest.tags("org/app") == {t: upstream[t] for t in MATCHED}
    for tag in MATCHED:
        raw = dest.raw("org/app", tag)
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == upstream[tag]
    index = json.loads(dest.raw("org/app", "v1.0"))
    assert index["mediaType"] == INDEX_MEDIA_TYPE
    assert [m["platform"]["architecture"] for m in index["manifests"]] == list(ARCHES)
    for arch in ARCHES:  # each platform's image is complete: skopeo resolves it and reads its config
        assert json.loads(dest.raw("org/app", "v1.0", arch=arch))["architecture"] == arch

    [run] = mirrors.runs(config_id)
    assert (run.status, run.trigger, run.tags_matched, run.tags_done, run.tags_copied, run.tags_skipped,
            run.tags_failed, run.reason) == ("SUCCESS", "sync_now", 4, 4, 4, 0, 0, None)
    assert run.bytes and run.bytes > 1000
    tags = mirrors.tags(run.id)
    assert {t: (r.outcome, r.digest) for t, r in tags.items()} == {t: ("copied", upstream[t]) for t in MATCHED}
    with database.transaction() as session:
        kinds = [e.kind for e in audit.entries(session, repository_id=row.repository_id)
                 if e.kind.startswith("repo_mirror")]
        success = audit.entries(session, kind="repo_mirror_sync_success")[-1].metadata_
    assert kinds == ["repo_mirror_sync_started"] + ["repo_mirror_sync_tag_success"] * 4 + [
        "repo_mirror_sync_success"]
    assert success["tags"] == ", ".join(MATCHED)
    assert success["message"] == f"'{registry.host}/up/app' with tag pattern 'v1.*,latest'"

    # --- no upstream change: nothing copied, every tag skipped, much faster
    _sync_now(database, config_id)
    t0 = time.monotonic()
    assert sync_once(worker) == 1
    second = time.monotonic() - t0
    run = mirrors.runs(config_id)[-1]
    assert (run.status, run.tags_copied, run.tags_skipped, run.tags_deleted) == ("SUCCESS", 0, 4, 0)
    assert {t: r.outcome for t, r in mirrors.tags(run.id).items()} == dict.fromkeys(MATCHED, "skipped")
    # How much faster it is, is measured by benchmarks/resync.py, not asserted here.

    # --- upstream moves "latest" and deletes "v1.1"; someone else adds a tag at the destination
    moved = push_images(registry, "up/app", ["latest"], seed="moved", workdir=tmp_path / "img2")
    assert moved["latest"] != upstream["latest"]
    subprocess.run(["skopeo", "delete", "--tls-verify=false", f"docker://{registry.host}/up/app:v1.1"],
                   check=True, capture_output=True, timeout=30)
    foreign = push_images(registry, "up/other", ["mine"], seed="foreign", workdir=tmp_path / "img3")
    _copy_foreign(registry, dest, "up/other", "mine", "org/app", "v1.9")
    _sync_now(database, config_id)
    assert sync_once(worker) == 1
    run = mirrors.runs(config_id)[-1]
    results = {t: (r.outcome, r.digest) for t, r in mirrors.tags(run.id).items()}
    assert results == {
        "latest": ("copied", moved["latest"]),
        "v1.0": ("skipped", upstream["v1.0"]),
        "v1.2": ("skipped", upstream["v1.2"]),
        "v1.1": ("deleted", upstream["v1.1"]),
    }
    assert (run.status, run.tags_matched, run.tags_copied, run.tags_skipped, run.tags_deleted) == (
        "SUCCESS", 3, 1, 2, 1)
    # v1.9 matches the rule but is not upstream: it was not created by this mirror, so it stays.
    assert dest.tags("org/app") == {"latest": moved["latest"], "v1.0": upstream["v1.0"],
                                    "v1.2": upstream["v1.2"], "v1.9": foreign["mine"]}
    print(f"\n[{dest.kind}] first sync of {len(MATCHED)} tags {first:.2f}s, no-change re-sync {second:.2f}s")


def _copy_foreign(registry: Registry, dest: Dest, src_repo: str, src_tag: str, repo: str, tag: str) -> None:
    """Put a tag into the destination behind the mirror's back."""
    cmd = ["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
           f"docker://{registry.host}/{src_repo}:{src_tag}"]
    if dest.kind == "oci":
        root = dest.root / repo
        cmd += ["--dest-shared-blob-dir", str(root / "blobs"), f"oci:{root}:{tag}"]
    else:
        cmd += ["--dest-tls-verify=false", "--dest-creds", f"{AUTH_USERNAME}:{AUTH_PASSWORD}",
                f"docker://{dest.registry.host}/{repo}:{tag}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def test_prune_never_deletes_a_manifest_a_kept_tag_uses(registry, dest, dsettings, database, mirrors,
                                                         make_worker, tmp_path, markers):
    """"b" and "a" share one manifest; when "b" stops matching, "a" must survive (skopeo deletes by digest)."""
    markers.append(registry.host)
    upstream = push_images(registry, "up/lib", ["a", "c"], workdir=tmp_path / "img")
    subprocess.run(["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                    "--dest-tls-verify=false", f"docker://{registry.host}/up/lib:a",
                    f"docker://{registry.host}/up/lib:b"], check=True, capture_output=True, timeout=60)
    config_id = mirrors.create("org/lib", f"{registry.host}/up/lib", ["*"])
    worker = make_worker(storage=dsettings.storage, storage_username=dsettings.storage_username,
                         storage_password=dsettings.storage_password,
                         storage_tls_verify=dsettings.storage_tls_verify)
    sync_once(worker)
    assert dest.tags("org/lib") == {"a": upstream["a"], "b": upstream["a"], "c": upstream["c"]}

    # The rule changes: "b" and "c" no longer match; nothing matches "zzz*" at all.
    with database.transaction() as session:
        rule = session.get(RepoMirrorConfig, config_id).root_rule
        rule.rule_value = ["a"]
    _sync_now(database, config_id)
    sync_once(worker)
    run = mirrors.runs(config_id)[-1]
    assert {t: r.outcome for t, r in mirrors.tags(run.id).items()} == {
        "a": "skipped", "b": "deleted", "c": "deleted"}
    assert dest.tags("org/lib") == {"a": upstream["a"]}
    assert "sha256:" + hashlib.sha256(dest.raw("org/lib", "a")).hexdigest() == upstream["a"]

    # Nothing matches any more: still pruned (Quay returns early here and deletes nothing), and the run is a SUCCESS.
    with database.transaction() as session:
        session.get(RepoMirrorConfig, config_id).root_rule.rule_value = ["zzz*"]
    _sync_now(database, config_id)
    sync_once(worker)
    run = mirrors.runs(config_id)[-1]
    assert (run.status, run.tags_matched, run.tags_deleted) == ("SUCCESS", 0, 1)
    assert dest.tags("org/lib") == {}
    if dest.kind == "oci":  # unreferenced blobs are collected
        blobs = list((dest.root / "org/lib/blobs/sha256").iterdir())
        assert blobs == []


def test_registry_client_reads_digests_like_the_harness(auth_registry, tmp_path):
    digests = push_images(auth_registry, "ns/r", ["x", "y"], workdir=tmp_path / "img")
    client = RegistryClient(auth_registry.host, username=AUTH_USERNAME, password=AUTH_PASSWORD, tls_verify=False,
                            trust_host=True)
    assert {t: client.manifest_digest("ns/r", t) for t in client.tags("ns/r")} == digests
    assert client.manifest_digest("ns/r", "nope") is None
    assert client.tags("ns/none") == []
    anonymous = RegistryClient(auth_registry.host, tls_verify=False, trust_host=True)
    with pytest.raises(Exception, match="401"):
        anonymous.manifest_digest("ns/r", "x")
