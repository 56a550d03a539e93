"""The steps of a sync run that reach the registries: the source check, the tag list, each tag's pipeline,
pruning and garbage collection.

Each tag goes through :data:`PIPELINE`, a sequence of :class:`TagStep`: today
:class:`CheckTag` (the upstream digest from a manifest ``HEAD``, or from
``skopeo inspect --raw`` when HTTP gives none; skip when the destination holds
it under that tag) and then :class:`CopyTag` (``skopeo copy --all
--preserve-digests``, indexes first). A step turns a tag's :class:`TagPlan`
into the next plan or into the tag's :class:`TagResult`; every tag finishes a
step before any starts the next one. A step that looks at more (a platform
filter that reads the manifest: an index continues with the children it
selected, an image of another platform ends there) goes between the two
without changing the run.

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

from quaymirror.mirror.models import TagOutcome
from quaymirror.mirror.worker import policy, reasons
from quaymirror.mirror.worker.destination import (
    Destination,
    DestinationError,
    Removal,
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
        if present == upstream:
            return done(TagOutcome.SKIPPED, digest=upstream)
        if context.upstream is not None and context.upstream.client.rate_limit_remaining == 0:
            return done(TagOutcome.FAILED, reason=reasons.UNKNOWN_ERROR, digest=upstream,
                        message=f"the upstream registry's pull rate limit is exhausted (RateLimit-Remaining: 0); "
                                f"{tag} was not copied")
        return TagPlan(tag, upstream, is_index)


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
                copied = _copy(context, tag, target.reference, target.args, digestfile)
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


def _copy(context: TagContext, tag: str, reference: str, dest_args: list[str], digestfile: Path) -> Result:
    """``skopeo copy``, tried again while ``policy.copy_again`` says so; the last attempt's result."""
    mirror = context.mirror
    attempt = 1
    while True:
        copied = context.skopeo.copy(f"docker://{mirror.reference}:{tag}", reference,
                                     src_tls_verify=mirror.verify_tls, src_authfile=context.src_auth,
                                     dest_args=dest_args, digestfile=digestfile, unsigned=mirror.unsigned)
        if not policy.copy_again(attempt, copied.reason):
            return copied
        log.info("mirror %s: copying %s failed (%s), trying again: %s", mirror.path, tag, copied.reason,
                 copied.message)
        context.group.wait(policy.copy_pause(attempt))  # returns at once on cancel or shutdown
        attempt += 1


PIPELINE: tuple[TagStep, ...] = (CheckTag(), CopyTag())

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
