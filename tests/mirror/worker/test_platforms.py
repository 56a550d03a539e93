"""The architecture filter, end to end: real skopeo, a real docker-registry upstream on loopback, into the OCI
layout (the embedded default). Indexes of amd64, arm64 and arm/v7 (with buildx-style attestations), and single
images of each platform.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from quaymirror.mirror import status
from quaymirror.mirror.models import RepoMirrorConfig
from tests.common.images import push_images
from tests.common.mirrors import layout_tags
from tests.common.registries import AUTH_PASSWORD, AUTH_USERNAME
from tests.common.worker import skopeo_calls, sync_once

pytestmark = pytest.mark.integration

PLATFORMS = ("amd64", "arm64", "linux/arm/v7")
# Every second tag is an index of PLATFORMS; the others single images of the platform named.
TAGS = ["i1", "amd", "i2", "arm", "i3", "armv7"]
SINGLE = {"amd": "amd64", "arm": "arm64", "armv7": "linux/arm/v7"}
INDEXES = ["i1", "i2", "i3"]
REF_NAME = "org.opencontainers.image.ref.name"


def _json(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())


def _image_blobs(layout: Path, digest: str) -> set[str]:
    """The manifest, config and layers of one image of the upstream's layout."""
    doc = _json(layout, digest)
    return {digest, doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])}


def _expected_blobs(layout: Path, upstream: dict[str, str], architectures: set[str],
                    singles: list[str]) -> set[str]:
    """Exactly what a sparse copy of ``architectures`` holds: each index, its selected images and their
    attestations, and the single images copied."""
    found: set[str] = set()
    for tag in INDEXES:
        found.add(upstream[tag])
        entries = _json(layout, upstream[tag])["manifests"]
        chosen = {e["digest"] for e in entries if e["platform"]["architecture"] in architectures}
        for entry in entries:
            if entry["digest"] in chosen or entry.get("annotations", {}).get("vnd.docker.reference.digest") in chosen:
                found |= _image_blobs(layout, entry["digest"])
    for tag in singles:
        found |= _image_blobs(layout, upstream[tag])
    return found


def _stored_blobs(layout: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir()}


def _child(layout: Path, index: str, architecture: str) -> str:
    return next(e["digest"] for e in _json(layout, index)["manifests"]
                if e["platform"]["architecture"] == architecture)


def _set_filter(database, config_id: int, architectures: list[str]) -> None:
    with database.transaction() as session:
        config = session.get(RepoMirrorConfig, config_id)
        config.architecture_filter = architectures
        assert status.request_sync_now(session, config)


def _copies(log: Path) -> list[str]:
    """The source of each ``skopeo copy`` logged since the last call (the log is emptied)."""
    calls = skopeo_calls(log)
    log.write_text("")
    return [argv[-2] for _, argv in calls if argv[0] == "copy"]


@pytest.fixture
def upstream(registry, tmp_path, markers) -> dict[str, str]:
    markers.append(registry.host)
    return push_images(registry, "up/multi", TAGS, workdir=tmp_path / "img", index_platforms=PLATFORMS,
                       single_platforms=SINGLE, attestations=True)


def test_filter_copies_only_the_selected_platforms_and_follows_its_changes(
        registry, upstream, wsettings, database, mirrors, make_worker, tmp_path, counting_skopeo):
    wrapper, log = counting_skopeo
    source = tmp_path / "img" / "layout"
    layout = wsettings.storage.path / "org/multi"
    config_id = mirrors.create("org/multi", f"{registry.host}/up/multi", ["*"])
    _set_filter(database, config_id, ["arm64"])
    worker = make_worker(skopeo_path=str(wrapper))

    # --- ["arm64"]: each index byte-identical with only its arm64 image (and that image's attestation)
    assert sync_once(worker) == 1
    [run] = mirrors.runs(config_id)
    results = mirrors.tags(run.id)
    assert {t: (r.outcome, r.digest) for t, r in results.items()} == {
        **{t: ("copied", upstream[t]) for t in [*INDEXES, "arm"]},
        "amd": ("filtered", upstream["amd"]), "armv7": ("filtered", upstream["armv7"])}
    assert (run.status, run.tags_copied, run.tags_filtered, run.tags_done) == ("SUCCESS", 4, 2, 6)
    assert results["i1"].platforms == ["linux/arm64"] and results["arm"].platforms is None
    assert layout_tags(wsettings, "org/multi") == {t: upstream[t] for t in [*INDEXES, "arm"]}
    for tag in INDEXES:
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:{tag}"], capture_output=True,
                             check=True, timeout=30).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == upstream[tag]
    expected = _expected_blobs(source, upstream, {"arm64"}, ["arm"])
    assert _stored_blobs(layout) == expected
    assert not {_child(source, upstream[t], a) for t in INDEXES for a in ("amd64", "arm")} & _stored_blobs(layout)
    config = subprocess.run(["skopeo", "--override-arch", "arm64", "inspect", "--config", f"oci:{layout}:i1"],
                            capture_output=True, check=True, timeout=30).stdout
    assert json.loads(config)["architecture"] == "arm64"
    missing = subprocess.run(["skopeo", "--override-arch", "amd64", "inspect", f"oci:{layout}:i1"],
                             capture_output=True, timeout=30, check=False)
    assert missing.returncode != 0
    copied = _copies(log)
    assert sorted(copied) == sorted(
        [f"docker://{registry.host}/up/multi@{e['digest']}" for t in INDEXES
         for e in _json(source, upstream[t])["manifests"]
         if e["platform"]["architecture"] == "arm64"
         or e.get("annotations", {}).get("vnd.docker.reference.digest") == _child(source, upstream[t], "arm64")]
        + [f"docker://{registry.host}/up/multi:arm"])
    assert run.bytes == sum(r.bytes for r in results.values() if r.bytes)
    # A tag's bytes are those of what was copied for it: the index, its arm64 image and that image's attestation.
    arm64 = _child(source, upstream["i1"], "arm64")
    i1 = {upstream["i1"]} | {b for e in _json(source, upstream["i1"])["manifests"]
                             if arm64 in (e["digest"], e.get("annotations", {}).get("vnd.docker.reference.digest"))
                             for b in _image_blobs(source, e["digest"])}
    assert results["i1"].bytes == sum((source / "blobs/sha256" / d.split(":")[1]).stat().st_size for d in i1)

    # --- no change: every tag skipped or filtered again, and no skopeo process at all
    _set_filter(database, config_id, ["arm64"])
    sync_once(worker)
    run = mirrors.runs(config_id)[-1]
    assert {t: r.outcome for t, r in mirrors.tags(run.id).items()} == {
        **dict.fromkeys([*INDEXES, "arm"], "skipped"), "amd": "filtered", "armv7": "filtered"}
    assert skopeo_calls(log) == []

    # --- widened: only the amd64 images (and their attestations) are copied, and the single amd64 image
    _set_filter(database, config_id, ["arm64", "amd64"])
    sync_once(worker)
    run = mirrors.runs(config_id)[-1]
    results = mirrors.tags(run.id)
    assert {t: r.outcome for t, r in results.items()} == {
        **dict.fromkeys(INDEXES, "copied"), "arm": "skipped", "amd": "copied", "armv7": "filtered"}
    assert results["i2"].platforms == ["linux/amd64", "linux/arm64"]
    assert len(_copies(log)) == 2 * len(INDEXES) + 1
    assert _stored_blobs(layout) == _expected_blobs(source, upstream, {"arm64", "amd64"}, ["arm", "amd"])
    assert layout_tags(wsettings, "org/multi") == {t: upstream[t] for t in [*INDEXES, "arm", "amd"]}
    _set_filter(database, config_id, ["amd64", "arm64"])  # the same filter in another order: nothing to do
    sync_once(worker)
    run = mirrors.runs(config_id)[-1]
    assert {t: r.outcome for t, r in mirrors.tags(run.id).items()} == {
        **dict.fromkeys([*INDEXES, "arm", "amd"], "skipped"), "armv7": "filtered"}
    assert skopeo_calls(log) == []

    # --- narrowed back: nothing copied; the indexes' amd64 images are garbage-collected (the single amd64
    # image stays: a single image is never removed by the filter)
    _set_filter(database, config_id, ["arm64"])
    sync_once(worker)
    run = mirrors.runs(config_id)[-1]
    assert {t: r.outcome for t, r in mirrors.tags(run.id).items()} == {
        **dict.fromkeys(INDEXES, "copied"), "arm": "skipped", "amd": "skipped", "armv7": "filtered"}
    assert _copies(log) == []
    assert _stored_blobs(layout) == _expected_blobs(source, upstream, {"arm64"}, ["arm", "amd"])

    # --- cleared: each index copied whole (copy --all), the arm/v7 image too
    _set_filter(database, config_id, [])
    sync_once(worker)
    run = mirrors.runs(config_id)[-1]
    assert {t: r.outcome for t, r in mirrors.tags(run.id).items()} == {
        **dict.fromkeys(INDEXES, "copied"), "arm": "skipped", "amd": "skipped", "armv7": "copied"}
    assert sorted(_copies(log)) == sorted(f"docker://{registry.host}/up/multi:{t}" for t in [*INDEXES, "armv7"])
    assert _stored_blobs(layout) == _expected_blobs(source, upstream, {"arm64", "amd64", "arm"}, list(SINGLE))
    for arch in ("amd64", "arm64", "arm"):
        subprocess.run(["skopeo", "--override-arch", arch, "inspect", f"oci:{layout}:i3"], capture_output=True,
                       check=True, timeout=30)


def test_an_index_without_a_selected_platform_fails_with_quays_message(registry, upstream, wsettings, database,
                                                                        mirrors, make_worker):
    config_id = mirrors.create("org/none", f"{registry.host}/up/multi", ["i1", "arm"])
    _set_filter(database, config_id, ["s390x"])
    sync_once(make_worker())
    run = mirrors.runs(config_id)[-1]
    results = mirrors.tags(run.id)
    assert (results["i1"].outcome, results["i1"].reason, results["i1"].output) == (
        "failed", "invalid_source",
        "No matching architectures. Requested: ['s390x'], Available: ['amd64', 'arm64', 'arm']")
    assert results["arm"].outcome == "filtered"
    assert (run.status, run.reason) == ("FAIL", "invalid_source")
    assert not (wsettings.storage.path / "org/none/index.json").exists() or layout_tags(wsettings, "org/none") == {}


def test_into_a_registry_that_refuses_sparse_indexes(registry, auth_registry, upstream, database,
                                                     mirrors, make_worker, client, world, counting_skopeo,
                                                     tmp_path):
    """docker-registry refuses an index whose children are missing: a failure by default; with
    QUAYMIRROR_SPARSE_FALLBACK=filtered an index of the arm64 images under a digest of its own."""
    wrapper, log = counting_skopeo
    dest = {"storage": f"docker://{auth_registry.host}", "storage_username": AUTH_USERNAME,
            "storage_password": AUTH_PASSWORD, "storage_tls_verify": False, "skopeo_path": str(wrapper)}
    config_id = mirrors.create("devtable/sparse", f"{registry.host}/up/multi", ["*"])
    _set_filter(database, config_id, ["arm64"])
    sync_once(make_worker(**dest))
    run = mirrors.runs(config_id)[-1]
    results = mirrors.tags(run.id)
    assert {t: (r.outcome, r.reason) for t, r in results.items()} == {
        **dict.fromkeys(INDEXES, ("failed", "sparse_refused")), "arm": ("copied", None),
        "amd": ("filtered", None), "armv7": ("filtered", None)}
    assert "MANIFEST_BLOB_UNKNOWN: blob unknown to registry" in results["i1"].output
    assert "QUAYMIRROR_SPARSE_FALLBACK=filtered" in results["i1"].output
    assert (run.status, run.reason) == ("FAIL", "sparse_refused")
    assert sorted(auth_registry.tags("devtable/sparse")) == ["arm"]

    _set_filter(database, config_id, ["arm64"])
    sync_once(make_worker(sparse_fallback="filtered", **dest))
    run = mirrors.runs(config_id)[-1]
    results = mirrors.tags(run.id)
    assert {t: r.outcome for t, r in results.items()} == {
        **dict.fromkeys(INDEXES, "copied"), "arm": "skipped", "amd": "filtered", "armv7": "filtered"}
    source = tmp_path / "img" / "layout"
    for tag in INDEXES:
        stored = results[tag]
        assert (stored.upstream_digest, stored.platforms) == (upstream[tag], ["linux/arm64"])
        assert stored.digest == auth_registry.manifest_digest("devtable/sparse", tag) != upstream[tag]
        arm64 = _child(source, upstream[tag], "arm64")
        index = json.loads(subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", f"{AUTH_USERNAME}:{AUTH_PASSWORD}",
             f"docker://{auth_registry.host}/devtable/sparse:{tag}"], capture_output=True, check=True,
            timeout=30).stdout)
        assert [e["digest"] for e in index["manifests"]] == [
            e["digest"] for e in _json(source, upstream[tag])["manifests"]
            if arm64 in (e["digest"], e.get("annotations", {}).get("vnd.docker.reference.digest"))]
        config = subprocess.run(
            ["skopeo", "--override-arch", "arm64", "inspect", "--config", "--tls-verify=false", "--creds",
             f"{AUTH_USERNAME}:{AUTH_PASSWORD}", f"docker://{auth_registry.host}/devtable/sparse:{tag}"],
            capture_output=True, check=True, timeout=30).stdout
        assert json.loads(config)["architecture"] == "arm64"
    detail = client.get(f"/api/v1/repository/devtable/sparse/mirror/syncs/{run.id}",
                        headers=world.headers("admin")).get_json()
    i1 = next(t for t in detail["tag_results"] if t["tag"] == "i1")
    assert (i1["digest"], i1["upstream_digest"], i1["platforms"]) == (
        results["i1"].digest, upstream["i1"], ["linux/arm64"])
    assert detail["tags"]["filtered"] == 2

    # --- upstream unchanged: skipped on upstream's digest, nothing copied, no skopeo process
    log.write_text("")
    _set_filter(database, config_id, ["arm64"])
    sync_once(make_worker(sparse_fallback="filtered", **dest))
    run = mirrors.runs(config_id)[-1]
    assert {t: r.outcome for t, r in mirrors.tags(run.id).items()} == {
        **dict.fromkeys([*INDEXES, "arm"], "skipped"), "amd": "filtered", "armv7": "filtered"}
    assert skopeo_calls(log) == []


def test_without_an_http_client_skopeo_reads_the_manifests(registry, upstream, wsettings, database, mirrors,
                                                            make_worker, counting_skopeo):
    """A mirror with a proxy hands every request to skopeo (Go never proxies loopback, so the proxy named here is
    never asked): the filter reads the index and the single image's config with ``skopeo inspect``."""
    wrapper, log = counting_skopeo
    config_id = mirrors.create("org/proxied", f"{registry.host}/up/multi", ["i1", "amd", "arm"],
                               proxy={"http_proxy": "http://proxy.example:3128"})
    _set_filter(database, config_id, ["arm64"])
    sync_once(make_worker(skopeo_path=str(wrapper)))
    run = mirrors.runs(config_id)[-1]
    assert {t: (r.outcome, r.digest) for t, r in mirrors.tags(run.id).items()} == {
        "i1": ("copied", upstream["i1"]), "amd": ("filtered", upstream["amd"]), "arm": ("copied", upstream["arm"])}
    assert layout_tags(wsettings, "org/proxied") == {"i1": upstream["i1"], "arm": upstream["arm"]}
    inspects = sorted(("--config" in argv, argv[-1]) for _, argv in skopeo_calls(log) if argv[0] == "inspect")
    ref = f"docker://{registry.host}/up/multi"
    assert inspects == sorted(
        [(False, f"{ref}:{t}") for t in ("i1", "amd", "arm")]  # the check: no HEAD without a client
        + [(False, f"{ref}@{upstream[t]}") for t in ("i1", "amd", "arm")]  # the filter reads each manifest
        + [(True, f"{ref}@{upstream[t]}") for t in ("amd", "arm")])  # and each single image's config
