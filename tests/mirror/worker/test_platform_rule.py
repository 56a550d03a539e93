"""The architecture filter's rule on index documents alone (no registry): what it selects, what it offers."""

from __future__ import annotations

import json

from quaymirror.mirror.worker import platforms

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def _entry(digest: str, arch: str, os: str = "linux", variant: str | None = None, **annotations: str) -> dict:
    platform = {"architecture": arch, "os": os, **({"variant": variant} if variant else {})}
    return {"digest": digest, "platform": platform, **({"annotations": annotations} if annotations else {})}


INDEX = {"mediaType": DOCKER_LIST, "manifests": [
    _entry("sha256:a", "amd64"),
    _entry("sha256:b", "arm", variant="v7"),
    _entry("sha256:c", "arm", variant="v6"),
    _entry("sha256:d", "arm64", variant="v8"),
    _entry("sha256:w", "amd64", os="windows"),
    _entry("sha256:x", "unknown", os="unknown", **{platforms.REFERENCE_DIGEST: "sha256:d"}),
    _entry("sha256:y", "unknown", os="unknown", **{platforms.REFERENCE_DIGEST: "sha256:a"}),
]}


def test_architecture_alone_selects_and_attestations_follow_their_image():
    selection = platforms.select(INDEX, ["arm64", "arm"])
    assert [e["digest"] for e in selection.children] == ["sha256:b", "sha256:c", "sha256:d", "sha256:x"]
    assert selection.platforms == ("linux/arm/v7", "linux/arm/v6", "linux/arm64/v8")
    assert selection.available == ("amd64", "arm", "arm64")  # attestations offer no platform


def test_the_os_is_not_compared():
    assert [e["digest"] for e in platforms.select(INDEX, ["amd64"]).children] == [
        "sha256:a", "sha256:w", "sha256:y"]


def test_nothing_selected():
    selection = platforms.select(INDEX, ["s390x"])
    assert (selection.children, selection.platforms) == ((), ())


def test_stored_children_of_a_sparse_index_and_of_a_whole_one():
    raw = json.dumps(INDEX).encode()
    assert platforms.stored_children(raw, "arm64") == ["sha256:d", "sha256:x"]
    assert platforms.stored_children(raw, None) is None
    assert platforms.stored_children(b"not json", "arm64") is None
