"""Where mirrored images land: an OCI image layout per repository, or an OCI distribution registry.

``QUAYMIRROR_STORAGE`` = ``oci:<dir>`` puts repository ``ns/name`` in the
layout ``<dir>/ns/name`` (tags are ``org.opencontainers.image.ref.name``
annotations in its ``index.json``); ``docker://<host[:port]>`` pushes to
``<host>/ns/name:tag``.

OCI layouts: skopeo rewrites ``index.json`` without a lock, so concurrent
copies into one layout would lose tags. Each copy therefore writes its own
staging layout (in the run's private directory) while sharing the real
layout's blob directory (``--dest-shared-blob-dir``), and the worker merges
the one new ``index.json`` entry under an ``flock``. skopeo cannot delete from
an ``oci:`` layout (1.9: "not implemented"), so pruning edits ``index.json``
the same way, and unreferenced blobs are collected afterwards.

Registries: a tag is a name for a manifest, and deleting goes by digest, so
deleting a tag whose manifest another tag still uses would delete both. Such a
tag is first pointed at a unique, empty manifest, which is then deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quaymirror.mirror.worker import platforms, reasons
from quaymirror.mirror.worker.registry_client import (
    INDEX_TYPES,
    ManifestRefused,
    RegistryClient,
    RegistryError,
)
from quaymirror.mirror.worker.skopeo import RunFiles, Skopeo
from quaymirror.security.outbound import OutboundRefused
from quaymirror.settings import OciStorage, Settings

log = logging.getLogger(__name__)

REF_NAME = "org.opencontainers.image.ref.name"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MAX_MANIFEST = 4 * 1024 * 1024


class DestinationError(RuntimeError):
    """The destination is misconfigured or unreadable (a FAIL of the run, reason unknown_error)."""


class SparseRefused(DestinationError):
    """A registry refused a sparse index and ``QUAYMIRROR_SPARSE_FALLBACK`` is ``fail`` (reason sparse_refused)."""


@dataclass
class CopyTarget:
    reference: str
    args: list[str] = field(default_factory=list)
    stage: Path | None = None


@dataclass
class Removal:
    """What happened to one tag the mirror wanted to delete."""

    outcome: str  # "deleted", "kept" or "failed"
    reason: str | None = None
    message: str | None = None
    digest: str | None = None


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_size(fetch: Callable[[str], bytes | None], digest: str, raw: bytes | None = None) -> int | None:
    """Total size of an image's manifests, configs and layers (each blob once); None when unreadable."""
    seen: set[str] = set()
    total = 0
    stack: list[tuple[str, bytes | None]] = [(digest, raw)]
    while stack:
        current, data = stack.pop()
        if data is None:
            data = fetch(current)
        if data is None:
            return None
        seen.add(current)
        total += len(data)
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        for child in doc.get("manifests") or []:
            child_digest = child.get("digest")
            if isinstance(child_digest, str) and child_digest not in seen:
                seen.add(child_digest)
                stack.append((child_digest, None))
        for blob in [doc.get("config"), *(doc.get("layers") or [])]:
            if isinstance(blob, dict) and blob.get("digest") not in seen:
                seen.add(str(blob.get("digest")))
                total += int(blob.get("size") or 0)
    return total


# ------------------------------------------------------------------ OCI
class OciRepository:
    """One repository's OCI layout (``<dir>/<ns>/<name>``) for one sync run."""

    kind = "oci"

    def __init__(self, base: Path, namespace: str, name: str, files: RunFiles, skopeo: Skopeo) -> None:
        base = base.resolve()
        path = (base / namespace / name).resolve()
        if base not in path.parents or ":" in str(path):
            raise DestinationError(f"refusing OCI layout path {path}")
        self.path = path
        self.files = files
        self.skopeo = skopeo
        self._lock_path = path.parent / f".{name}.lock"
        self.no_proxy: list[str] = []

    def describe(self) -> str:
        return f"oci:{self.path}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _ensure_layout(self) -> None:
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        layout = self.path / "oci-layout"
        if not layout.exists():
            _atomic_write(layout, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())

    def _index(self) -> dict:
        try:
            doc = json.loads((self.path / "index.json").read_bytes())
        except FileNotFoundError:
            return {"schemaVersion": 2, "manifests": []}
        except ValueError as error:
            raise DestinationError(f"{self.path}/index.json is not valid JSON: {error}") from None
        if not isinstance(doc.get("manifests"), list):
            doc["manifests"] = []
        return doc

    def _write_index(self, doc: dict) -> None:
        _atomic_write(self.path / "index.json", json.dumps(doc, separators=(",", ":")).encode())

    def tags(self) -> dict[str, str]:
        return {
            m["annotations"][REF_NAME]: m.get("digest")
            for m in self._index()["manifests"]
            if isinstance(m.get("annotations"), dict) and REF_NAME in m["annotations"]
        }

    def digest(self, tag: str) -> str | None:
        return self.tags().get(tag)

    def copy_target(self, tag: str, slot: str) -> CopyTarget:
        self._ensure_layout()
        # skopeo renames its temporary blob files from the staging layout into the shared blob
        # directory, so the staging layout must live on the same filesystem as the storage.
        staging = self.path.parent / ".staging"
        staging.mkdir(mode=0o700, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{self.path.name}-{slot}-", dir=staging))
        return CopyTarget(f"oci:{stage}:{tag}", ["--dest-shared-blob-dir", str(self.path / "blobs")], stage)

    def commit(self, tag: str, target: CopyTarget) -> str:
        """Move the staged tag into the layout's ``index.json``; return its digest."""
        assert target.stage is not None
        staged = json.loads((target.stage / "index.json").read_bytes())
        entries = [m for m in staged.get("manifests", [])
                   if (m.get("annotations") or {}).get(REF_NAME) == tag]
        if len(entries) != 1:
            raise DestinationError(f"skopeo wrote {len(entries)} entries for {tag} into the staging layout")
        entry = entries[0]
        with self._locked():
            self._ensure_layout()
            doc = self._index()
            doc["manifests"] = [m for m in doc["manifests"]
                                if (m.get("annotations") or {}).get(REF_NAME) != tag] + [entry]
            self._write_index(doc)
        return str(entry["digest"])

    def cleanup(self, target: CopyTarget) -> None:
        """Remove a staging layout, whether its copy was committed or failed."""
        if target.stage is not None:
            shutil.rmtree(target.stage, ignore_errors=True)

    def child_target(self, tag: str, digest: str, slot: str) -> CopyTarget:
        """Where one child of a sparse index is copied: a staging layout sharing the blob directory (the
        child's blobs land in the layout; its staging entry is thrown away with :meth:`cleanup`)."""
        return self.copy_target(tag, slot)

    def has(self, digest: str) -> bool:
        """Whether the layout holds the manifest ``digest`` (skopeo writes a manifest after its blobs)."""
        algorithm, _, hexdigest = digest.partition(":")
        return (self.path / "blobs" / algorithm / hexdigest).is_file()

    def store_index(self, tag: str, raw: bytes, media_type: str, architectures: tuple[str, ...]) -> str:
        """Put the upstream's index bytes under ``tag`` unchanged (its digest stays upstream's), noting the
        filter it was stored with so garbage collection keeps exactly the selected children; the digest."""
        digest = sha256(raw)
        with self._locked():
            self._ensure_layout()
            blob = self.path / "blobs" / "sha256" / digest.partition(":")[2]
            if not blob.is_file():
                _atomic_write(blob, raw)
            doc = self._index()
            entry = {"mediaType": media_type, "digest": digest, "size": len(raw),
                     "annotations": {REF_NAME: tag, platforms.STORED_ARCHITECTURES: ",".join(architectures)}}
            doc["manifests"] = [m for m in doc["manifests"]
                                if (m.get("annotations") or {}).get(REF_NAME) != tag] + [entry]
            self._write_index(doc)
        return digest

    def _blob(self, digest: str) -> bytes | None:
        algorithm, _, hexdigest = digest.partition(":")
        path = self.path / "blobs" / algorithm / hexdigest
        try:
            if path.stat().st_size > MAX_MANIFEST:
                return None
            return path.read_bytes()
        except OSError:
            return None

    def image_size(self, digest: str) -> int | None:
        return image_size(self._blob, digest)

    def remove(self, doomed: dict[str, str]) -> dict[str, Removal]:
        """Drop the tags from ``index.json``; blobs other tags use stay (see :meth:`collect_garbage`)."""
        results: dict[str, Removal] = {}
        with self._locked():
            doc = self._index()
            current = {(m.get("annotations") or {}).get(REF_NAME): m.get("digest") for m in doc["manifests"]}
            drop: set[str] = set()
            for tag, recorded in doomed.items():
                now = current.get(tag)
                if now is None:
                    results[tag] = Removal("deleted", message="already absent from the destination")
                elif now != recorded:
                    results[tag] = Removal("kept", message=f"changed outside the mirror (now {now})", digest=now)
                else:
                    drop.add(tag)
                    results[tag] = Removal("deleted", digest=now)
            if drop:
                doc["manifests"] = [m for m in doc["manifests"]
                                    if (m.get("annotations") or {}).get(REF_NAME) not in drop]
                self._write_index(doc)
        return results

    def collect_garbage(self, older_than: float) -> int:
        """Delete blobs no tag reaches (only files older than ``older_than``, a time.time() value).

        Anything unreadable aborts the collection: better a leftover blob than a
        missing one.
        """
        blob_dir = self.path / "blobs" / "sha256"
        if not blob_dir.is_dir():
            return 0
        with self._locked():
            reachable: set[str] = set()
            # (digest, the filter a tag's sparse index was stored with): of a sparse index only the selected
            # children are reached (the others are absent, or no longer wanted since the filter narrowed).
            stack: list[tuple[object, str | None]] = [
                (m.get("digest"), (m.get("annotations") or {}).get(platforms.STORED_ARCHITECTURES))
                for m in self._index()["manifests"]]
            walked: set[tuple[str, str | None]] = set()
            while stack:
                digest, stored = stack.pop()
                if not isinstance(digest, str) or (digest, stored) in walked:
                    continue
                walked.add((digest, stored))
                reachable.add(digest)
                data = self._blob(digest)
                if data is None:
                    log.warning("%s: blob %s unreadable; no garbage collection this time", self.path, digest)
                    return 0
                try:
                    doc = json.loads(data)
                except ValueError:
                    return 0
                children = platforms.stored_children(data, stored)
                stack.extend((child, None) for child in (
                    children if children is not None else [m.get("digest") for m in doc.get("manifests") or []]))
                for blob in [doc.get("config"), *(doc.get("layers") or []), doc.get("subject")]:
                    if isinstance(blob, dict) and isinstance(blob.get("digest"), str):
                        if blob.get("mediaType") in INDEX_TYPES or blob.get("mediaType") == OCI_MANIFEST:
                            stack.append((blob["digest"], None))
                        else:
                            reachable.add(blob["digest"])
            freed = 0
            for entry in os.scandir(blob_dir):
                name = entry.name
                if len(name) != 64 or f"sha256:{name}" in reachable:
                    continue
                with contextlib.suppress(OSError):
                    info = entry.stat()
                    if info.st_mtime < older_than:
                        os.unlink(entry.path)
                        freed += info.st_size
            return freed


# ------------------------------------------------------------- registry
class RegistryRepository:
    """One repository (``<host>/<ns>/<name>``) of a destination registry for one sync run."""

    kind = "docker"

    def __init__(self, settings: Settings, host: str, namespace: str, name: str, files: RunFiles,
                 skopeo: Skopeo) -> None:
        self.host = host
        self.repository = f"{namespace}/{name}"
        self.files = files
        self.skopeo = skopeo
        self.tls_verify = settings.storage_tls_verify
        self.sparse_fallback = settings.sparse_fallback
        # The configured host is the operator's own registry (usually private): trusted without an allow-list
        # entry. Its realms and redirects on other hosts are checked like any upstream's.
        self.client = RegistryClient(host, username=settings.storage_username, password=settings.storage_password,
                                     tls_verify=settings.storage_tls_verify,
                                     allowed_hosts=settings.ssrf_allowed_hosts, trust_host=True)
        creds = {host: (settings.storage_username, settings.storage_password)} if settings.storage_username else {}
        self.authfile = files.authfile("dest-auth.json", creds)
        self.no_proxy = [host.partition(":")[0], host]
        self._listing = threading.Lock()
        self._listed_once = False
        self._tags: frozenset[str] | None = None

    def describe(self) -> str:
        return f"docker://{self.host}/{self.repository}"

    def _dest_args(self) -> list[str]:
        return [f"--dest-tls-verify={'true' if self.tls_verify else 'false'}", "--dest-authfile", str(self.authfile)]

    def digest(self, tag: str) -> str | None:
        """The digest ``tag`` has in the destination; None when absent. A tag missing from the repository's
        tag list (read once per run) costs no request: on a first sync every tag is one."""
        try:
            listed = self._listed()
            if listed is not None and tag not in listed:
                return None
            return self.client.manifest_digest(self.repository, tag)
        except (OSError, RegistryError, OutboundRefused) as error:
            raise DestinationError(f"cannot read {self.describe()}:{tag}: {error}") from None

    def _listed(self) -> frozenset[str] | None:
        """The repository's tags when the run began; None when the registry would not list them (then every
        tag is asked for)."""
        with self._listing:
            if not self._listed_once:
                self._listed_once = True
                try:
                    self._tags = frozenset(self.client.tags(self.repository))
                except (RegistryError, OutboundRefused) as error:
                    log.info("%s: no tag list (%s); asking for each tag", self.describe(), error)
        return self._tags

    def copy_target(self, tag: str, slot: str) -> CopyTarget:
        return CopyTarget(f"docker://{self.host}/{self.repository}:{tag}", self._dest_args())

    def commit(self, tag: str, target: CopyTarget) -> str | None:
        return None  # the digest file says what was written

    def child_target(self, tag: str, digest: str, slot: str) -> CopyTarget:
        """One child of a sparse index is pushed by its digest: no tag names it."""
        return CopyTarget(f"docker://{self.host}/{self.repository}@{digest}", self._dest_args())

    def has(self, digest: str) -> bool:
        """Whether the repository holds the manifest ``digest`` (a registry refuses a manifest before its
        blobs)."""
        try:
            return self.client.manifest_head(self.repository, digest) is not None
        except (OSError, RegistryError, OutboundRefused) as error:
            raise DestinationError(f"cannot read {self.describe()}@{digest}: {error}") from None

    def store_index(self, tag: str, raw: bytes, media_type: str, architectures: tuple[str, ...]) -> str:
        """PUT the upstream's index bytes under ``tag``; the digest stored.

        A registry that checks an index's children (distribution answers ``400 MANIFEST_BLOB_UNKNOWN`` for each
        missing one) refuses the sparse index: then ``QUAYMIRROR_SPARSE_FALLBACK`` says what happens, a
        failure (``fail``) or an index listing only the copied children (``filtered``, a new digest).
        """
        try:
            return self.client.put_manifest(self.repository, tag, raw, media_type)
        except ManifestRefused as refused:
            if "MANIFEST_BLOB_UNKNOWN" not in refused.codes:
                raise DestinationError(str(refused)) from None
            if self.sparse_fallback == "fail":
                raise SparseRefused(f"{self.describe()} refused the sparse index of {tag}: {refused}. "
                                    "QUAYMIRROR_SPARSE_FALLBACK=filtered stores an index of the copied platforms "
                                    "instead (under a digest of its own)") from None
            doc = json.loads(raw)
            doc["manifests"] = list(platforms.select(doc, architectures).children)
            filtered = json.dumps(doc, separators=(",", ":")).encode()
            try:
                return self.client.put_manifest(self.repository, tag, filtered, media_type)
            except (OSError, RegistryError, OutboundRefused) as error:
                raise DestinationError(f"{self.describe()} refused the filtered index of {tag}: {error}") from None
        except (OSError, RegistryError, OutboundRefused) as error:
            raise DestinationError(f"cannot push the index of {tag} to {self.describe()}: {error}") from None

    def cleanup(self, target: CopyTarget) -> None:
        """Nothing is staged for a registry destination."""

    def image_size(self, digest: str) -> int | None:
        def fetch(ref: str) -> bytes | None:
            try:
                return self.client.manifest(self.repository, ref)
            except (OSError, RegistryError, OutboundRefused):
                return None

        return image_size(fetch, digest)

    def remove(self, doomed: dict[str, str]) -> dict[str, Removal]:
        results: dict[str, Removal] = {}
        try:
            current = {tag: self.client.manifest_digest(self.repository, tag) for tag in doomed}
            others = [t for t in self.client.tags(self.repository) if t not in doomed]
            kept_digests = {self.client.manifest_digest(self.repository, t) for t in others}
        except (OSError, RegistryError, OutboundRefused) as error:
            return {tag: Removal("failed", reasons.CONNECTION_ERROR if isinstance(error, OSError)
                                 else reasons.UNKNOWN_ERROR, f"cannot read the destination: {error}")
                    for tag in doomed}
        by_digest: dict[str, list[str]] = {}
        for tag, recorded in doomed.items():
            now = current[tag]
            if now is None:
                results[tag] = Removal("deleted", message="already absent from the destination")
            elif now != recorded:
                results[tag] = Removal("kept", message=f"changed outside the mirror (now {now})", digest=now)
            elif now in kept_digests:
                results[tag] = self._untag(tag, now)
            else:
                by_digest.setdefault(now, []).append(tag)
        for digest, tags in by_digest.items():
            result = self.skopeo.delete(f"docker://{self.host}/{self.repository}@{digest}",
                                        tls_verify=self.tls_verify, authfile=self.authfile)
            for tag in tags:
                results[tag] = (Removal("deleted", digest=digest) if result.ok
                                else Removal("failed", result.reason, result.message, digest))
        return results

    def _untag(self, tag: str, digest: str) -> Removal:
        """Point ``tag`` at a unique empty manifest and delete that one: the shared manifest stays."""
        layout = self.files.child(f"untag-{uuid.uuid4().hex[:8]}")
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        config = b"{}"
        (blobs / sha256(config).split(":")[1]).write_bytes(config)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [],
            "annotations": {"io.quaymirror.untag": f"{tag} {time.time_ns()} {uuid.uuid4()}"},
        }, separators=(",", ":")).encode()
        dummy = sha256(manifest)
        (blobs / dummy.split(":")[1]).write_bytes(manifest)
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": dummy, "size": len(manifest), "annotations": {REF_NAME: "untag"}}
        ]}))
        pushed = self.skopeo.copy(f"oci:{layout}:untag", f"docker://{self.host}/{self.repository}:{tag}",
                                  src_tls_verify=True, src_authfile=self.authfile, dest_args=self._dest_args())
        if not pushed.ok:
            return Removal("failed", pushed.reason, pushed.message, digest)
        deleted = self.skopeo.delete(f"docker://{self.host}/{self.repository}@{dummy}", tls_verify=self.tls_verify,
                                     authfile=self.authfile)
        if not deleted.ok:
            return Removal("failed", deleted.reason, deleted.message, digest)
        return Removal("deleted", message="untagged; the manifest stays for the tags that share it", digest=digest)

    def collect_garbage(self, older_than: float) -> int:
        return 0  # the registry's own garbage collector owns its storage


# Where one run's images land: one repository of the configured storage.
Destination = OciRepository | RegistryRepository


def open_repository(settings: Settings, namespace: str, name: str, files: RunFiles, skopeo: Skopeo) -> Destination:
    """The destination repository ``namespace/name`` in the storage the settings name (parsed once, there)."""
    storage = settings.storage
    if isinstance(storage, OciStorage):
        return OciRepository(storage.path, namespace, name, files, skopeo)
    return RegistryRepository(settings, storage.host, namespace, name, files, skopeo)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
