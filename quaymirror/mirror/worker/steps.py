"""The steps of a sync run that reach the registries: the source check, the tag list, each tag's pipeline,
pruning and garbage collection.

Each tag goes through :data:`PIPELINE`, a sequence of :class:`TagStep`:
:class:`CheckTag` (the upstream digest from a manifest ``HEAD``, or from
``skopeo inspect --raw`` when HTTP gives none; skip when the destination holds
it under that tag, an index stored with the mirror's current architecture
filter), :class:`SelectPlatforms` (with a filter: an index continues with the
children it selects, a single image of another platform ends ``filtered``)
and then :class:`CopyTag` (``skopeo copy --all --preserve-digests``, indexes
first; of a filtered index each selected child the destination lacks, by
digest, then the upstream's index bytes under the tag). A step turns a tag's
:class:`TagPlan` into the next plan or into the tag's :class:`TagResult`;
every tag finishes a step before any starts the next one.

Outbound requests: every HTTP request the worker itself makes (the tag list,
each manifest ``HEAD``, a token realm, every ``Location`` it follows, the
``docker://`` destination's look-ups) goes through
:mod:`quaymirror.security.outbound`, which applies the SSRF rules and
``QUAYMIRROR_SSRF_ALLOWED_HOSTS`` to the host it connects to, after
resolution, every time. A refused realm or redirect fails the tag (on a
``HEAD``) or the run (on the tag list) with reason ``invalid_source`` and a
message naming the host; skopeo is then not started for it, since it would
follow the same realm or redirect unchecked. What stays outside the opener is
skopeo's own traffic: the copies (blob downloads, which registries commonly
redirect to storage hosts), the look-ups it makes when the HTTP client gave
no answer, and everything of a mirror with a proxy (whose requests are all
handed to skopeo). For those only the reference's host is checked, before the
run (:func:`check_source`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quaymirror.mirror.history import StoredTag
from quaymirror.mirror.models import TagOutcome
from quaymirror.mirror.worker import platforms, policy, reasons
from quaymirror.mirror.worker.destination import (
    Destination,
    DestinationError,
    Removal,
    SparseRefused,
    open_repository,
    sha256,
)
from quaymirror.mirror.worker.reasons import RunFailed
from quaymirror.mirror.worker.recorder import RUN_LOGGER, TagResult
from quaymirror.mirror.worker.registry_client import (
    INDEX_TYPES,
    ManifestHead,
    RateLimited,
    RedirectError,
    RegistryClient,
    RegistryError,
)
from quaymirror.mirror.worker.run_config import Mirror
from quaymirror.mirror.worker.skopeo import ProcessGroup, Result, RunFiles, Skopeo, Stopped, proxy_env
from quaymirror.security import ssrf
from quaymirror.security.outbound import OutboundRefused
from quaymirror.settings import Settings

log = logging.getLogger(RUN_LOGGER)

# Bound (seconds) on each HTTP request to the upstream: a hung registry falls back to skopeo soon (skopeo
# processes are killed at cancel and shutdown; a blocked HTTP read is not).
HTTP_TIMEOUT = 5.0
DOCKER_HUB = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}
# An OCI index's media type, when the document does not say it (the field is optional there).
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# skopeo's output stands for a check made before skopeo could run.
NOT_APPLICABLE = "Not applicable"


def check_source(mirror: Mirror, allowed_hosts: ssrf.AllowList) -> None:
    """Re-check the reference against the SSRF rules, with DNS: a refusal fails the run before skopeo runs."""
    try:
        ssrf.check_external_reference(mirror.reference, allowed_hosts, resolve=True)
    except ssrf.ReferenceUnresolvable as error:
        # Quay reports a DNS failure as a forbidden source and spends a retry on it; it is transient.
        raise RunFailed(reasons.CONNECTION_ERROR, str(error), NOT_APPLICABLE, NOT_APPLICABLE) from None
    except ssrf.ReferenceRejected as error:
        if isinstance(error, ssrf.ReferenceBlocked):  # Quay's message hides the host; the log names it
            log.warning("mirror %s: source refused: %s", mirror.path, error.explain())
        raise RunFailed(reasons.INVALID_SOURCE, "Source registry location is not allowed",
                        NOT_APPLICABLE, NOT_APPLICABLE) from None


@dataclass(frozen=True)
class Upstream:
    """The HTTP client of the upstream registry, and the repository's name there."""

    client: RegistryClient
    repository: str


def upstream_client(mirror: Mirror, allowed_hosts: Iterable[str]) -> Upstream | None:
    """A HEAD client for the upstream repository, or None when skopeo must do the look-ups (a proxy is set).

    Nothing is trusted: the SSRF rules apply to the upstream's own host at every connect, as to its realms and
    redirects.
    """
    if any(mirror.proxy.get(key) for key in ("http_proxy", "https_proxy")):
        return None
    host, _, repository = mirror.reference.partition("/")
    if host in DOCKER_HUB:
        host = DOCKER_HUB[host]
        if "/" not in repository:
            repository = f"library/{repository}"
    client = RegistryClient(host, username=mirror.username, password=mirror.password, tls_verify=mirror.verify_tls,
                            timeout=min(mirror.timeout, HTTP_TIMEOUT), allowed_hosts=allowed_hosts,
                            trust_host=False)
    return Upstream(client, repository)


class DigestLocks:
    """One lock per digest: tags sharing a manifest are copied one after the other (distribution can fail two
    concurrent pushes of one index into one repository: "Manifest list must be converted ...")."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, digest: str) -> Iterator[None]:
        with self._lock:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            yield


@dataclass(frozen=True)
class TagContext:
    """What every step of a run works with: the mirror, skopeo, the destination and the upstream client."""

    mirror: Mirror
    skopeo: Skopeo
    destination: Destination
    upstream: Upstream | None
    src_auth: Path  # the upstream's authfile (empty without credentials)
    files: RunFiles
    group: ProcessGroup
    locks: DigestLocks = field(default_factory=DigestLocks)
    # How each tag the mirror owns was stored (its filter, upstream's digest), once the run read it.
    stored: dict[str, StoredTag] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings, mirror: Mirror, files: RunFiles, group: ProcessGroup) -> TagContext:
        """skopeo, the destination and the upstream client for one run; :meth:`close` it at the end."""
        skopeo = Skopeo(settings.skopeo_path, timeout=mirror.timeout, group=group, workdir=files.path,
                        secrets=[mirror.password, settings.storage_password], parallel=settings.tag_concurrency)
        try:
            destination = open_repository(settings, mirror.namespace, mirror.name, files, skopeo)
        except DestinationError as error:
            raise RunFailed(reasons.UNKNOWN_ERROR, str(error)) from None
        skopeo.env.update(proxy_env(mirror.proxy, bypass=destination.no_proxy))
        host = ssrf.registry_host(mirror.reference)
        src_auth = files.authfile("src-auth.json", {host: (mirror.username, mirror.password)}
                                  if mirror.username else {})
        return cls(mirror, skopeo, destination, upstream_client(mirror, settings.ssrf_allowed_hosts), src_auth,
                   files, group)

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.client.close()


def list_tags(context: TagContext) -> list[str]:
    """The upstream's tags: over HTTP on the kept-alive connection, else from ``skopeo list-tags``, whose
    messages classify a failure (raised as RunFailed)."""
    tags = _list_tags_http(context)
    if tags is not None:
        return tags
    mirror = context.mirror
    listing = context.skopeo.list_tags(mirror.reference, tls_verify=mirror.verify_tls, authfile=context.src_auth)
    if listing.stopped:
        raise Stopped(listing.stopped)
    if not listing.ok:
        raise RunFailed(listing.reason or reasons.UNKNOWN_ERROR, f"skopeo list-tags failed: {listing.message}",
                        listing.stdout, listing.stderr)
    try:
        return json.loads(listing.raw_stdout).get("Tags") or []
    except (ValueError, AttributeError):
        raise RunFailed(reasons.UNKNOWN_ERROR, "skopeo list-tags printed no tag list") from None


def _list_tags_http(context: TagContext) -> list[str] | None:
    """The upstream tags from ``GET /v2/<repo>/tags/list``; None when skopeo must list (or explain)."""
    mirror, upstream = context.mirror, context.upstream
    if upstream is None:
        return None
    try:
        tags = upstream.client.tags(upstream.repository, missing_ok=False)
    except (OutboundRefused, RedirectError) as refused:  # skopeo list-tags would follow it: the run stops here
        raise RunFailed(reasons.INVALID_SOURCE, str(refused), NOT_APPLICABLE, NOT_APPLICABLE) from None
    except TimeoutError:
        if mirror.timeout > HTTP_TIMEOUT:  # skopeo has the rest of the budget (and can be killed)
            log.info("mirror %s: GET tags/list timed out; asking skopeo", mirror.path)
            return None
        raise RunFailed(reasons.TIMEOUT, f"list-tags did not finish within {mirror.timeout:.1f}s "
                        f"(GET tags/list of {mirror.reference} timed out)", NOT_APPLICABLE,
                        NOT_APPLICABLE) from None
    except (OSError, RegistryError, ValueError, AttributeError) as error:
        log.info("mirror %s: the tag list over HTTP failed (%s); asking skopeo", mirror.path, error)
        return None
    return [t for t in tags if isinstance(t, str)]


@dataclass(frozen=True)
class TagPlan:
    """A tag on its way through the pipeline: what the steps so far found out about it."""

    tag: str
    digest: str | None = None  # the upstream digest, once checked
    is_index: bool = False  # an image index (one image per platform), once checked
    index: bytes | None = None  # the index's bytes, once the architecture filter read them
    selection: platforms.Selection | None = None  # the children the filter chose (None: copy the image whole)


class TagStep:
    """One stage of every tag's pipeline (see the module's docstring)."""

    def schedule(self, plans: list[TagPlan]) -> list[TagPlan]:
        """The order in which this step takes the tags (given in the rule's order)."""
        return plans

    def run(self, context: TagContext, plan: TagPlan, slot: int) -> TagPlan | TagResult | None:
        """The tag's next plan, or its result; None when the run was stopped. ``slot``: a number no other
        tag of this step has (for file names)."""
        raise NotImplementedError


def _timed(tag: str) -> Callable[..., TagResult]:
    """``done(outcome, **values)``: the tag's result, with the time from now until it is called."""
    started = time.monotonic()

    def done(outcome: TagOutcome, **values: Any) -> TagResult:
        return TagResult(tag, outcome, duration_ms=int((time.monotonic() - started) * 1000), **values)

    return done


def _failed(done: Callable[..., TagResult], result: Result) -> TagResult:
    """A failed skopeo command as the tag's result (cancelled when the run was stopped)."""
    if result.stopped:
        return done(TagOutcome.CANCELLED, reason=reasons.CANCELLED, message=result.message)
    return done(TagOutcome.FAILED, reason=result.reason, message=result.message, output=result.output,
                stdout=result.stdout, stderr=result.stderr)


def _is_index(raw: bytes) -> bool:
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    return isinstance(doc, dict) and (doc.get("mediaType") in INDEX_TYPES or "manifests" in doc)


class CheckTag(TagStep):
    """Compare the upstream digest with the destination's: a skip or a failure, or a plan to copy."""

    def run(self, context: TagContext, plan: TagPlan, slot: int) -> TagPlan | TagResult | None:
        mirror, tag = context.mirror, plan.tag
        done = _timed(tag)
        try:
            head = _head(context, tag)
        except (OutboundRefused, RedirectError) as refused:  # skopeo must not follow it (unchecked)
            return done(TagOutcome.FAILED, reason=reasons.INVALID_SOURCE, message=str(refused))
        except RateLimited as error:
            return done(TagOutcome.FAILED, reason=reasons.UNKNOWN_ERROR, message=str(error))
        except TimeoutError:
            return done(TagOutcome.FAILED, reason=reasons.TIMEOUT,
                        message=f"HEAD of {tag} did not finish within {mirror.timeout:.1f}s (timeout)")
        if head is not None:
            upstream, is_index = head.digest, head.is_index
        else:
            inspected = context.skopeo.inspect_raw(f"docker://{mirror.reference}:{tag}",
                                                   tls_verify=mirror.verify_tls, authfile=context.src_auth)
            if not inspected.ok:
                return _failed(done, inspected)
            upstream, is_index = sha256(inspected.raw_stdout), _is_index(inspected.raw_stdout)
        try:
            present = context.destination.digest(tag)
        except DestinationError as error:
            return done(TagOutcome.FAILED, reason=reasons.UNKNOWN_ERROR, message=str(error), digest=upstream)
        if present == upstream and not is_index:
            return done(TagOutcome.SKIPPED, digest=upstream)
        stored = context.stored.get(tag)
        if present is not None and stored is not None and present == stored.digest \
                and (stored.upstream_digest or present) == upstream \
                and _same_filter(stored.architectures, mirror.architecture_filter):
            # The same index, stored with the same filter (or whole, without one): nothing to add or drop. A
            # registry may hold it under another digest (an index of the copied platforms): upstream's counts.
            return done(TagOutcome.SKIPPED, digest=present, architectures=stored.architectures,
                        upstream_digest=stored.upstream_digest)
        if present == upstream and not mirror.architecture_filter and (stored is None or stored.architectures is None):
            return done(TagOutcome.SKIPPED, digest=upstream)  # whole already (a copy the history does not know of)
        if context.upstream is not None and context.upstream.client.rate_limit_remaining == 0:
            return done(TagOutcome.FAILED, reason=reasons.UNKNOWN_ERROR, digest=upstream,
                        message=f"the upstream registry's pull rate limit is exhausted (RateLimit-Remaining: 0); "
                                f"{tag} was not copied")
        return TagPlan(tag, upstream, is_index)


def _same_filter(stored: tuple[str, ...] | None, wanted: tuple[str, ...]) -> bool:
    """Whether an index stored with ``stored`` (None: whole) is what the filter ``wanted`` (empty: none) asks for;
    the order of the values does not matter."""
    return set(wanted) == set(stored) if stored is not None and wanted else stored is None and not wanted


def _head(context: TagContext, tag: str) -> ManifestHead | None:
    """The upstream digest from a manifest HEAD; None when skopeo must tell (no client, no digest, an error).

    An SSRF refusal (OutboundRefused) or a redirect that cannot be followed (RedirectError) is not an
    error skopeo could explain, and skopeo would follow it unchecked: both propagate.
    """
    mirror, upstream = context.mirror, context.upstream
    if upstream is None:
        return None
    try:
        return upstream.client.manifest_head(upstream.repository, tag)
    except (RateLimited, RedirectError):
        raise
    except TimeoutError:
        if mirror.timeout <= HTTP_TIMEOUT:  # the whole budget is spent
            raise
        log.info("mirror %s: HEAD of %s timed out; asking skopeo", mirror.path, tag)
        return None
    except (OSError, RegistryError, ValueError) as error:
        log.info("mirror %s: HEAD of %s gave no digest (%s); asking skopeo", mirror.path, tag, error)
        return None


class SelectPlatforms(TagStep):
    """The architecture filter: of an index, the children to copy; a single image of another platform ends here.

    Without a filter every plan goes on unchanged. With one, the tag's manifest is read (over HTTP, by the
    digest the check found; from ``skopeo inspect --raw`` without a client) and, for a single image, its
    config's ``architecture``.
    """

    def run(self, context: TagContext, plan: TagPlan, slot: int) -> TagPlan | TagResult | None:
        if not context.mirror.architecture_filter:
            return plan
        done = _timed(plan.tag)
        try:
            return self._select(context, plan, done)
        except (OutboundRefused, RedirectError) as refused:
            return done(TagOutcome.FAILED, reason=reasons.INVALID_SOURCE, message=str(refused), digest=plan.digest)
        except RateLimited as error:
            return done(TagOutcome.FAILED, reason=reasons.UNKNOWN_ERROR, message=str(error), digest=plan.digest)

    @staticmethod
    def _select(context: TagContext, plan: TagPlan, done: Callable[..., TagResult]) -> TagPlan | TagResult:
        wanted = context.mirror.architecture_filter
        tag, upstream = plan.tag, plan.digest
        if upstream is None:
            raise ValueError(f"tag {tag} reached the platform filter without an upstream digest")
        fetched = _fetch(context, f"@{upstream}", config=False)
        if isinstance(fetched, Result):
            return _failed(done, fetched)
        try:
            doc = json.loads(fetched)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or sha256(fetched) != upstream:
            return done(TagOutcome.FAILED, reason=reasons.INVALID_SOURCE, digest=upstream,
                        message=f"the manifest of {tag} is not the JSON document {upstream} names")
        if isinstance(doc.get("manifests"), list):
            selection = platforms.select(doc, wanted)
            if not selection.children:  # Quay's message, with its Python list reprs
                return done(TagOutcome.FAILED, reason=reasons.INVALID_SOURCE, digest=upstream,
                            message=f"No matching architectures. Requested: {list(wanted)}, "
                                    f"Available: {list(selection.available)}")
            return TagPlan(tag, upstream, True, fetched, selection)
        config = doc.get("config")
        digest = config.get("digest") if isinstance(config, dict) else None
        if not isinstance(digest, str):
            return done(TagOutcome.FAILED, reason=reasons.INVALID_SOURCE, digest=upstream,
                        message=f"the manifest of {tag} names no config")
        blob = _fetch(context, f"@{digest}", config=True, image=f"@{upstream}")
        if isinstance(blob, Result):
            return _failed(done, blob)
        try:
            architecture = json.loads(blob).get("architecture")
        except (ValueError, AttributeError):
            architecture = None
        if architecture in wanted:
            return plan
        return done(TagOutcome.FILTERED, digest=upstream,
                    message=f"{tag} is a single {architecture} image; the architecture filter is {list(wanted)}")


def _fetch(context: TagContext, reference: str, *, config: bool, image: str | None = None) -> bytes | Result:
    """A manifest (``reference`` = ``@digest``), or with ``config`` the config blob ``reference`` of the image
    ``image``: over HTTP when the client answers, else from skopeo (whose failed result is returned).

    As for the check's HEAD, an SSRF refusal or a redirect that cannot be followed propagates."""
    mirror, upstream = context.mirror, context.upstream
    if upstream is not None:
        name = reference[1:]
        try:
            body = (upstream.client.blob(upstream.repository, name) if config
                    else upstream.client.manifest(upstream.repository, name))
        except (RateLimited, RedirectError):  # not for skopeo to follow unchecked (OutboundRefused neither)
            raise
        except (OSError, RegistryError, ValueError) as error:
            log.info("mirror %s: reading %s over HTTP failed (%s); asking skopeo", mirror.path, name, error)
            body = None
        if body is not None:
            return body
    inspect = context.skopeo.inspect_config if config else context.skopeo.inspect_raw
    result = inspect(f"docker://{mirror.reference}{image or reference}", tls_verify=mirror.verify_tls,
                     authfile=context.src_auth)
    return result.raw_stdout if result.ok else result


class CopyTag(TagStep):
    """Copy the tag's image into the destination (its retries: ``policy``) and say what was written."""

    def schedule(self, plans: list[TagPlan]) -> list[TagPlan]:
        """Indexes first: an index costs one copy per platform. Started last, one keeps a single slot busy
        while the others idle at the end of the run; started first, the short copies fill in around it
        (longest-first scheduling)."""
        return sorted(plans, key=lambda plan: not plan.is_index)

    def run(self, context: TagContext, plan: TagPlan, slot: int) -> TagPlan | TagResult | None:
        tag, upstream = plan.tag, plan.digest
        if upstream is None:
            raise ValueError(f"tag {tag} reached the copy without an upstream digest")
        if plan.selection is not None and plan.index is not None:
            return _copy_selected(context, plan, upstream, plan.index, plan.selection, slot)
        destination = context.destination
        done = _timed(tag)
        try:
            target = destination.copy_target(tag, str(slot))
        except (DestinationError, OSError) as error:  # e.g. ENOSPC: say so, per tag
            return done(TagOutcome.FAILED, reason=reasons.UNKNOWN_ERROR, digest=upstream,
                        message=f"preparing the destination failed: {error}")
        try:
            digestfile = context.files.child(f"digest-{slot}")
            with context.locks.hold(upstream):
                # Said as it starts, not only as it ends: a large image copies for minutes.
                log.info("mirror %s: copying %s (%s)", context.mirror.path, tag, upstream)
                copied = _copy(context, f":{tag}", target.reference, target.args, digestfile)
            if not copied.ok:
                return _failed(done, copied)
            try:
                digest = destination.commit(tag, target)
            except (DestinationError, OSError, ValueError) as error:
                return done(TagOutcome.FAILED, reason=reasons.UNKNOWN_ERROR,
                            message=f"storing the tag failed: {error}")
            if digest is None:
                try:
                    digest = digestfile.read_text().strip() or upstream
                except OSError:
                    digest = upstream
        finally:
            destination.cleanup(target)
        size = destination.image_size(digest)
        return done(TagOutcome.COPIED, digest=digest, size=size, output=copied.stderr or None,
                    stdout=copied.stdout, stderr=copied.stderr)


def _copy_selected(context: TagContext, plan: TagPlan, upstream: str, raw: bytes,
                   selection: platforms.Selection, slot: int) -> TagResult:
    """A sparse index: each selected child the destination lacks, by digest, then the index's own bytes under
    the tag. The bytes counted are those copied: children already there (a widened filter) are not."""
    tag, destination = plan.tag, context.destination
    done = _timed(tag)
    size = len(raw)
    outputs: list[str] = []
    try:
        with context.locks.hold(upstream):
            for number, child in enumerate(selection.children):
                digest = str(child["digest"])
                if destination.has(digest):
                    continue
                target = destination.child_target(tag, digest, f"{slot}-{number}")
                try:
                    log.info("mirror %s: copying %s@%s (%s)", context.mirror.path, tag, digest,
                             platforms.platform_name(child.get("platform") or {}) or "attached")
                    copied = _copy(context, f"@{digest}", target.reference, target.args, None)
                finally:
                    destination.cleanup(target)
                if not copied.ok:
                    return _failed(done, copied)
                outputs.append(copied.stderr)
                size += destination.image_size(digest) or 0
            media_type = json.loads(raw).get("mediaType") or OCI_INDEX
            digest = destination.store_index(tag, raw, media_type, context.mirror.architecture_filter)
    except SparseRefused as refused:
        return done(TagOutcome.FAILED, reason=reasons.SPARSE_REFUSED, digest=upstream, message=str(refused))
    except (DestinationError, OSError) as error:
        return done(TagOutcome.FAILED, reason=reasons.UNKNOWN_ERROR, digest=upstream,
                    message=f"storing the tag failed: {error}")
    output = "\n".join(o for o in outputs if o) or None
    return done(TagOutcome.COPIED, digest=digest, size=size, output=output, stderr=output,
                platforms=selection.platforms, architectures=context.mirror.architecture_filter,
                upstream_digest=upstream if digest != upstream else None)


def _copy(context: TagContext, source: str, reference: str, dest_args: list[str], digestfile: Path | None) -> Result:
    """``skopeo copy`` of the upstream's ``source`` (``:tag`` or ``@digest``), tried again while
    ``policy.copy_again`` says so; the last attempt's result."""
    mirror = context.mirror
    attempt = 1
    while True:
        copied = context.skopeo.copy(f"docker://{mirror.reference}{source}", reference,
                                     src_tls_verify=mirror.verify_tls, src_authfile=context.src_auth,
                                     dest_args=dest_args, digestfile=digestfile, unsigned=mirror.unsigned)
        if not policy.copy_again(attempt, copied.reason):
            return copied
        log.info("mirror %s: copying %s failed (%s), trying again: %s", mirror.path, source, copied.reason,
                 copied.message)
        context.group.wait(policy.copy_pause(attempt))  # returns at once on cancel or shutdown
        attempt += 1


PIPELINE: tuple[TagStep, ...] = (CheckTag(), SelectPlatforms(), CopyTag())

_REMOVED = {"deleted": TagOutcome.DELETED, "kept": TagOutcome.KEPT}


def prune(context: TagContext, owned: dict[str, str], matched: list[str]) -> list[TagResult]:
    """Delete the tags this mirror created that upstream no longer has (or the rule no longer matches)."""
    keep = set(matched)
    doomed = {tag: digest for tag, digest in owned.items() if tag not in keep}
    if not doomed or context.group.is_stopped:
        return []
    try:
        removals = context.destination.remove(doomed)
    except Stopped:
        return []
    except (DestinationError, OSError) as error:
        removals = {tag: Removal("failed", reasons.UNKNOWN_ERROR, str(error)) for tag in doomed}
    return [TagResult(tag, _REMOVED.get(removal.outcome, TagOutcome.FAILED), digest=removal.digest,
                      reason=removal.reason, message=removal.message)
            for tag, removal in sorted(removals.items()) if removal.reason != reasons.CANCELLED]


def collect_garbage(context: TagContext, older_than: float) -> None:
    """Delete the destination's blobs no tag reaches any more (written before ``older_than``)."""
    try:
        freed = context.destination.collect_garbage(older_than=older_than)
    except OSError as error:
        log.warning("mirror %s: garbage collection failed: %s", context.mirror.path, error)
        return
    if freed:
        log.info("mirror %s: %d bytes of unreferenced blobs removed", context.mirror.path, freed)
