"""Build tiny test images offline (stdlib only) and push them with skopeo.

Images are written as an OCI image layout.  Everything is deterministic: the
same tags and ``seed`` always give the same digests (gzip mtime 0 and empty
file name, tar entries sorted with mtime 0 and uid/gid 0, canonical JSON).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from tests.common.registry import authfile

if TYPE_CHECKING:
    from tests.common.registry import Registry

__all__ = [
    "ARCHES",
    "INDEX_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "SkopeoError",
    "build_layout",
    "push_images",
    "push_layout",
]

SKOPEO_BIN = "skopeo"
ARCHES = ("amd64", "arm64", "ppc64le")
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
PUSH_TIMEOUT = 120.0

_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class SkopeoError(RuntimeError):
    def __init__(self, message: str, returncode: int | None, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


# ------------------------------------------------------------------ building
def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tar_gz(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """Deterministic (tar, tar.gz) bytes for ``files`` (path -> content)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=gz, mtime=0) as fh:
        fh.write(tar_bytes)
    return tar_bytes, gz.getvalue()


class _Blobs:
    def __init__(self, layout_dir: Path) -> None:
        self.dir = layout_dir / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, media_type: str) -> dict[str, object]:
        hexdigest = hashlib.sha256(data).hexdigest()
        path = self.dir / hexdigest
        if not path.exists():
            path.write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{hexdigest}", "size": len(data)}


def _platform(name: str) -> dict[str, str]:
    """``arch`` or ``os/arch[/variant]`` as an OCI platform (os linux by default)."""
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["linux", *parts]
    platform = {"architecture": parts[1], "os": parts[0]}
    if len(parts) > 2:
        platform["variant"] = parts[2]
    return platform


def _image_manifest(blobs: _Blobs, tag: str, arch: str, seed: str) -> dict[str, object]:
    """Write the layers, config and manifest of one platform image (``arch``: see :func:`_platform`); return its
    descriptor."""
    platform = _platform(arch)
    arch = "/".join(arch.split("/")[-2:]) if "/" in arch else arch  # "arm/v7": as the layers always named it
    base_tar, base_gz = _tar_gz({"etc/base-arch": f"base layer for linux/{arch}\n".encode()})
    tag_tar, tag_gz = _tar_gz({"etc/image-tag": f"tag={tag}\narch={arch}\nseed={seed}\n".encode()})
    layers = [blobs.put(base_gz, LAYER_MEDIA_TYPE), blobs.put(tag_gz, LAYER_MEDIA_TYPE)]
    config = {
        **platform,
        "created": "1970-01-01T00:00:00Z",
        "config": {"Labels": {"quaymirror.test.tag": tag}},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in (base_tar, tag_tar)],
        },
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": blobs.put(_canonical_json(config), CONFIG_MEDIA_TYPE),
        "layers": layers,
    }
    return blobs.put(_canonical_json(manifest), MANIFEST_MEDIA_TYPE)


def build_layout(
    layout_dir: Path,
    tags: Sequence[str],
    *,
    multiarch_every: int = 2,
    seed: str = "",
    index_platforms: Sequence[str] = ARCHES,
    single_platforms: Mapping[str, str] | None = None,
    attestations: bool = False,
) -> dict[str, str]:
    """Write an OCI image layout holding ``tags``; return {tag: top-level digest}.

    Tag number i (0-based) is an OCI index of ``index_platforms`` (default
    amd64, arm64, ppc64le; ``os/arch[/variant]`` or ``arch``) when
    ``multiarch_every`` > 0 and i % multiarch_every == 0, otherwise a single
    OCI manifest of ``single_platforms[tag]`` (default linux/amd64). With
    ``attestations``, each index also lists, per image, a buildx-style
    attestation manifest (platform unknown/unknown, annotation
    ``vnd.docker.reference.digest`` naming that image).  Each image has a per-arch base layer
    shared by all tags and seeds, and a per-tag layer whose file content
    includes the tag and ``seed``; so changing ``seed`` changes every digest.
    Blobs are shared with earlier builds in the same directory, but
    ``index.json`` is replaced and lists exactly ``tags``.
    """
    tags = list(tags)
    if len(set(tags)) != len(tags):
        raise ValueError("duplicate tags")
    for tag in tags:
        if not _TAG_RE.match(tag):
            raise ValueError(f"invalid tag {tag!r}")
    if multiarch_every < 0:
        raise ValueError("multiarch_every must be >= 0")

    layout_dir = Path(layout_dir)
    layout_dir.mkdir(parents=True, exist_ok=True)
    blobs = _Blobs(layout_dir)
    (layout_dir / "oci-layout").write_bytes(_canonical_json({"imageLayoutVersion": "1.0.0"}))

    entries: list[dict[str, object]] = []
    digests: dict[str, str] = {}
    for i, tag in enumerate(tags):
        if multiarch_every and i % multiarch_every == 0:
            children = []
            for arch in index_platforms:
                desc = _image_manifest(blobs, tag, arch, seed)
                children.append({**desc, "platform": _platform(arch)})
            if attestations:
                children += [_attestation(blobs, child) for child in list(children)]
            index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": children}
            top = blobs.put(_canonical_json(index), INDEX_MEDIA_TYPE)
        else:
            top = _image_manifest(blobs, tag, (single_platforms or {}).get(tag, "amd64"), seed)
        digests[tag] = str(top["digest"])
        entries.append({**top, "annotations": {REF_NAME: tag}})

    (layout_dir / "index.json").write_bytes(_canonical_json({"schemaVersion": 2, "manifests": entries}))
    return digests


def _attestation(blobs: _Blobs, image: dict[str, object]) -> dict[str, object]:
    """A buildx-style attestation manifest for ``image`` (an index entry); its index entry."""
    _tar, statement = _tar_gz({"provenance.json": _canonical_json({"subject": image["digest"]})})
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": blobs.put(_canonical_json({"architecture": "unknown", "os": "unknown"}), CONFIG_MEDIA_TYPE),
        "layers": [blobs.put(statement, "application/vnd.in-toto+json")],
    }
    return {**blobs.put(_canonical_json(manifest), MANIFEST_MEDIA_TYPE),
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {"vnd.docker.reference.digest": image["digest"],
                            "vnd.docker.reference.type": "attestation-manifest"}}


# ------------------------------------------------------------------- pushing
# docker-registry answers 500 now and then to concurrent pushes of a shared layer (jobs > 1) until the
# first push of it is complete: such a push is tried again after a pause, as the worker does.
PUSH_ATTEMPTS = 3
TRANSIENT = "500 (Internal Server Error)"


def _skopeo_copy(src: str, dest: str, extra: list[str]) -> None:
    cmd = [SKOPEO_BIN, "copy", "--quiet", "--all", "--preserve-digests", *extra, src, dest]
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        try:
            proc = subprocess.run(
                cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PUSH_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            raise SkopeoError(f"skopeo copy {src} -> {dest} timed out after {PUSH_TIMEOUT}s", None, "") from exc
        if proc.returncode == 0 or TRANSIENT not in proc.stderr or attempt == PUSH_ATTEMPTS:
            break
        time.sleep(0.25 * attempt)
    if proc.returncode != 0:
        raise SkopeoError(
            f"skopeo copy {src} -> {dest} failed (rc {proc.returncode}): {proc.stderr.strip()}",
            proc.returncode,
            proc.stderr,
        )


def _layout_tags(layout_dir: Path) -> list[str]:
    index = json.loads((Path(layout_dir) / "index.json").read_text())
    return [m["annotations"][REF_NAME] for m in index["manifests"] if REF_NAME in m.get("annotations", {})]


def push_layout(
    layout_dir: Path,
    registry: Registry,
    repo: str,
    tags: Sequence[str] | None = None,
    *,
    jobs: int = 1,
) -> None:
    """Push tags of an OCI layout to ``registry``/``repo`` with ``skopeo copy``.

    Uses ``--all --preserve-digests --dest-tls-verify=false``, so the digests
    in the registry equal those :func:`build_layout` returned.  Credentials go
    only through a 0600 authfile in a private temp dir, never on the command
    line.  ``tags`` defaults to every tag in the layout; ``jobs`` > 1 runs that
    many skopeo processes at once.  Raises :class:`SkopeoError` with skopeo's
    stderr on failure.
    """
    if shutil.which(SKOPEO_BIN) is None:
        raise SkopeoError("skopeo not found on PATH", None, "")
    layout_dir = Path(layout_dir).resolve()
    todo = list(tags) if tags is not None else _layout_tags(layout_dir)
    with authfile(registry) as auth_path:
        extra = ["--dest-tls-verify=false"]
        if registry.auth is not None:
            extra += ["--dest-authfile", str(auth_path)]

        def push(tag: str) -> None:
            _skopeo_copy(f"oci:{layout_dir}:{tag}", f"docker://{registry.host}/{repo}:{tag}", extra)

        if jobs <= 1 or len(todo) <= 1:
            for tag in todo:
                push(tag)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for future in [pool.submit(push, tag) for tag in todo]:
                    future.result()


def push_images(
    registry: Registry,
    repo: str,
    tags: Sequence[str],
    *,
    multiarch_every: int = 2,
    seed: str = "",
    workdir: Path,
    jobs: int = 1,
    index_platforms: Sequence[str] = ARCHES,
    single_platforms: Mapping[str, str] | None = None,
    attestations: bool = False,
) -> dict[str, str]:
    """Build ``tags`` into ``workdir``/layout (see :func:`build_layout`) and push them; return {tag: digest}."""
    layout = Path(workdir) / "layout"
    digests = build_layout(layout, tags, multiarch_every=multiarch_every, seed=seed,
                           index_platforms=index_platforms, single_platforms=single_platforms,
                           attestations=attestations)
    push_layout(layout, registry, repo, list(tags), jobs=jobs)
    return digests
