"""The architecture filter's rule: which entries of an image index a filter selects.

Quay's rule, kept: a child is selected when its ``platform.architecture`` is one
of the filter's values; the OS and the variant are not compared (so
``linux/arm/v7`` and ``linux/arm/v6`` are both ``arm``). Unlike Quay, the
entries that belong to a selected child are kept with it: buildx's attestation
manifests (annotation ``vnd.docker.reference.digest`` naming the child they
describe). The worker copies what this selects, and the OCI layout's garbage
collection walks only what it selects, so both agree on what a sparse index
holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# buildx's annotation on an attestation manifest: the digest of the image it describes.
REFERENCE_DIGEST = "vnd.docker.reference.digest"
# On a tag's entry in an OCI layout's index.json: the filter its sparse index was stored with (comma-separated).
STORED_ARCHITECTURES = "io.quaymirror.architectures"


@dataclass(frozen=True)
class Selection:
    """What a filter picks from an index: the children to copy (in the index's order) and their platforms."""

    children: tuple[dict[str, Any], ...]
    platforms: tuple[str, ...]  # "os/architecture[/variant]" of each selected image (not of attestations)
    available: tuple[str, ...]  # every architecture the index offers, in its order, each once


def platform_name(platform: dict[str, Any]) -> str:
    """``os/architecture[/variant]``, as docker and skopeo write a platform."""
    parts = [str(platform.get("os") or ""), str(platform.get("architecture") or "")]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def _platform(entry: dict[str, Any]) -> dict[str, Any]:
    platform = entry.get("platform")
    return platform if isinstance(platform, dict) else {}


def _described(entry: dict[str, Any]) -> str | None:
    """The digest of the image an attestation entry belongs to; None for an image of its own."""
    annotations = entry.get("annotations")
    value = annotations.get(REFERENCE_DIGEST) if isinstance(annotations, dict) else None
    return value if isinstance(value, str) else None


def select(index: dict[str, Any], architectures: Iterable[str]) -> Selection:
    """The entries of ``index`` that the filter ``architectures`` selects (see the module's docstring)."""
    wanted = set(architectures)
    entries = [e for e in index.get("manifests") or [] if isinstance(e, dict) and isinstance(e.get("digest"), str)]
    images = [e for e in entries if _described(e) is None]
    chosen = [e for e in images if _platform(e).get("architecture") in wanted]
    digests = {e["digest"] for e in chosen}
    children = tuple(e for e in entries if e["digest"] in digests or _described(e) in digests)
    available: list[str] = []
    for entry in images:
        arch = _platform(entry).get("architecture")
        if isinstance(arch, str) and arch not in available:
            available.append(arch)
    return Selection(children, tuple(platform_name(_platform(e)) for e in chosen), tuple(available))


def stored_children(raw: bytes, stored: str | None) -> list[str] | None:
    """The children a tag's index holds in an OCI layout, from the entry's :data:`STORED_ARCHITECTURES`:
    None when the index was stored whole (every child is there)."""
    if stored is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    return [e["digest"] for e in select(doc, stored.split(",")).children]
