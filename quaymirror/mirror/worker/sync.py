"""One sync run of one claimed mirror: check, list, filter, compare digests, copy or skip, prune, record.

Steps (Quay's, with its known bugs fixed):

1. load the configuration and decrypt the upstream credentials;
2. re-check the reference against the SSRF rules (with DNS): a refusal is a
   FAIL ``invalid_source`` and skopeo never runs;
3. list the upstream tags (``GET /v2/<repo>/tags/list`` on the kept-alive
   connection; ``skopeo list-tags`` when that fails, for its error); filter with
   the glob rule;
4. per matching tag (up to ``QUAYMIRROR_TAG_CONCURRENCY`` at once): the
   upstream digest from a manifest ``HEAD`` (``Docker-Content-Digest``, kept-alive
   connections, the registry's token auth with the mirror's credentials); only
   when that gives no digest (or a proxy is configured), ``skopeo inspect
   --raw`` and the sha256 of the bytes. Skip when
   the destination holds that digest under that tag, else ``skopeo copy --all
   --preserve-digests``: once every tag is checked, indexes first (the longest copies);
5. unless the run was stopped: delete the destination tags this mirror created
   earlier and that no longer match upstream (also when nothing matches);
6. release the claim (SUCCESS / FAIL / CANCEL, or back to SYNC_NOW on
   shutdown), finish the history row and write one final audit entry, in one
   transaction.

Every tag's result is written as soon as it is known, so a run in progress
shows its progress. Credentials reach skopeo only through authfiles in a
private directory that is removed when the run ends.

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
run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from quaymirror import audit, metrics
from quaymirror.db import Database
from quaymirror.mirror import events, history, status
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus
from quaymirror.mirror.worker import reasons
from quaymirror.mirror.worker.claims import Claimed
from quaymirror.mirror.worker.destination import (
    DestinationError,
    Removal,
    Repository,
    open_repository,
    sha256,
)
from quaymirror.mirror.worker.registry_client import (
    INDEX_TYPES,
    ManifestHead,
    RateLimited,
    RedirectError,
    RegistryClient,
    RegistryError,
)
from quaymirror.mirror.worker.skopeo import ProcessGroup, Result, RunFiles, Skopeo, Stopped, proxy_env
from quaymirror.mirror.worker.tags import filter_tags
from quaymirror.security import ssrf
from quaymirror.security.outbound import OutboundRefused
from quaymirror.security.secrets import DecryptionFailed, SecretBox
from quaymirror.settings import Settings

log = logging.getLogger(__name__)

# Why a run's processes were stopped (ProcessGroup.stopped).
STOP_CANCELLED = "cancelled"
STOP_SHUTDOWN = "shutdown"
STOP_LOST = "lease_lost"

AUDIT_OUTPUT = 4000
# A copy failing for a reason that may be transient (a registry's 500, a reset connection) is tried again,
# after a growing pause: distribution answers 500 now and then under concurrent pushes of shared layers,
# until the first push of the layer is complete.
COPY_ATTEMPTS = 3
RETRY_PAUSE = 0.25
RETRYABLE = frozenset({reasons.UNKNOWN_ERROR, reasons.CONNECTION_ERROR})
# Skipped tags' results are written at least this often (seconds) while a run goes on.
RECORD_EVERY = 0.5


@dataclass
class Mirror:
    """What a run needs from the configuration, read once at its start."""

    config_id: int
    repository_id: int
    namespace: str
    name: str
    reference: str
    username: str | None = field(repr=False)
    password: str | None = field(repr=False)
    verify_tls: bool
    unsigned: bool
    proxy: dict[str, Any]
    rules: list[str]
    timeout: float
    credentials_ok: bool = True

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def pattern_message(self) -> str:
        return f"'{self.reference}' with tag pattern '{','.join(self.rules)}'"


@dataclass
class TagResult:
    tag: str
    outcome: str
    digest: str | None = None
    reason: str | None = None
    message: str | None = None
    output: str | None = None
    size: int | None = None
    duration_ms: int | None = None
    stdout: str | None = None
    stderr: str | None = None


@dataclass(frozen=True)
class CopyPlan:
    """A tag whose upstream digest the destination lacks: to be copied."""

    tag: str
    digest: str
    is_index: bool


def _timed(tag: str) -> Callable[..., TagResult]:
    """``done(outcome, **values)``: the tag's result, with the time from now until it is called."""
    started = time.monotonic()

    def done(outcome: str, **values: Any) -> TagResult:
        return TagResult(tag, outcome, duration_ms=int((time.monotonic() - started) * 1000), **values)

    return done


def _failed(done: Callable[..., TagResult], result: Result) -> TagResult:
    """A failed skopeo command as the tag's result (cancelled when the run was stopped)."""
    if result.stopped:
        return done(history.CANCELLED, reason=reasons.CANCELLED, message=result.message)
    return done(history.FAILED, reason=result.reason, message=result.message, output=result.output,
                stdout=result.stdout, stderr=result.stderr)


def _is_index(raw: bytes) -> bool:
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    return isinstance(doc, dict) and (doc.get("mediaType") in INDEX_TYPES or "manifests" in doc)


class RunFailed(Exception):
    """The run cannot go on: FAIL with this reason."""

    def __init__(self, reason: str, message: str, stdout: str | None = None, stderr: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.stdout = stdout
        self.stderr = stderr


def load_mirror(database: Database, settings: Settings, config_id: int) -> Mirror:
    with database.transaction() as session:
        config = session.get(RepoMirrorConfig, config_id)
        if config is None:
            raise RunFailed(reasons.UNKNOWN_ERROR, "the mirror configuration was deleted")
        repository = config.repository
        external = config.external_registry_config
        box = SecretBox(settings.secret_key)
        credentials_ok = True
        try:
            username = box.decrypt(config.external_registry_username)
            password = box.decrypt(config.external_registry_password)
        except DecryptionFailed:
            username = password = None
            credentials_ok = False
        timeout = float(config.skopeo_timeout or 300)
        if settings.skopeo_timeout_max:
            timeout = min(timeout, settings.skopeo_timeout_max)
        rules = config.root_rule.rule_value if config.root_rule is not None else []
        return Mirror(
            config_id=config.id,
            repository_id=repository.id,
            namespace=repository.namespace.username,
            name=repository.name,
            reference=config.external_reference,
            username=username or None,
            password=password,
            verify_tls=bool(external.get("verify_tls", True)),
            unsigned=bool(external.get("unsigned_images", False)),
            proxy=external.get("proxy") if isinstance(external.get("proxy"), dict) else {},
            rules=[r for r in rules if isinstance(r, str)],
            timeout=max(timeout, 0.1),
            credentials_ok=credentials_ok,
        )


# Bound (seconds) on each HTTP request to the upstream: a hung registry falls back to skopeo soon (skopeo
# processes are killed at cancel and shutdown; a blocked HTTP read is not).
HTTP_TIMEOUT = 5.0
DOCKER_HUB = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}


def upstream_client(mirror: Mirror, allowed_hosts: Iterable[str]) -> tuple[RegistryClient | None, str]:
    """A HEAD client for the upstream repository, or None when skopeo must do the look-ups (a proxy is set).

    Nothing is trusted: the SSRF rules apply to the upstream's own host at every connect, as to its realms and
    redirects.
    """
    if any(mirror.proxy.get(key) for key in ("http_proxy", "https_proxy")):
        return None, ""
    host, _, repository = mirror.reference.partition("/")
    if host in DOCKER_HUB:
        host = DOCKER_HUB[host]
        if "/" not in repository:
            repository = f"library/{repository}"
    client = RegistryClient(host, username=mirror.username, password=mirror.password, tls_verify=mirror.verify_tls,
                            timeout=min(mirror.timeout, HTTP_TIMEOUT), allowed_hosts=allowed_hosts,
                            trust_host=False)
    return client, repository


class SyncRun:
    """Runs one claimed mirror to its end; :meth:`execute` raises only when the database fails at the end."""

    def __init__(self, settings: Settings, database: Database, claimed: Claimed, group: ProcessGroup) -> None:
        self.settings = settings
        self.database = database
        self.claimed = claimed
        self.group = group
        self.mirror: Mirror | None = None
        self.started = time.monotonic()
        self.started_wall = time.time()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.upstream: RegistryClient | None = None
        self.upstream_repository = ""

    # ------------------------------------------------------------ driver
    def execute(self) -> str:
        """Run the mirror; return the run's final history status."""
        files: RunFiles | None = None
        try:
            self.mirror = mirror = load_mirror(self.database, self.settings, self.claimed.config_id)
            if self.group.is_stopped:  # shut down between the claim and now
                return self._finish_stopped([])
            log.info("mirror %s: sync started (%s, run %d)", mirror.path, self.claimed.trigger, self.claimed.run_id)
            metrics.run_started(mirror.namespace, mirror.name, self.started_wall)
            self._check_source(mirror)
            self._audit("repo_mirror_sync_started", verb="start", message=mirror.pattern_message)
            if not mirror.credentials_ok:
                raise RunFailed(reasons.UNKNOWN_ERROR, "the stored upstream credentials could not be decrypted "
                                "(was QUAYMIRROR_SECRET_KEY changed?)")
            files = RunFiles()
            return self._sync(mirror, files)
        except Stopped:
            return self._finish_stopped([])
        except RunFailed as failure:
            if self.group.is_stopped:
                return self._finish_stopped([])
            return self._finish(RepoMirrorStatus.FAIL, failure.reason, failure.message, [],
                                stdout=failure.stdout, stderr=failure.stderr)
        except Exception as error:  # an internal error must still release the claim
            log.exception("mirror %d: internal error", self.claimed.config_id)
            if self.group.is_stopped:
                return self._finish_stopped([])
            return self._finish(RepoMirrorStatus.FAIL, reasons.UNKNOWN_ERROR,
                                f"internal error: {type(error).__name__}", [])
        finally:
            if files is not None:
                files.remove()
            if self.upstream is not None:
                self.upstream.close()

    def _check_source(self, mirror: Mirror) -> None:
        try:
            ssrf.check_external_reference(mirror.reference, self.settings.ssrf_allowed_hosts, resolve=True)
        except ssrf.ReferenceUnresolvable as error:
            # Quay bug #30: a DNS failure is not a forbidden source; it is transient.
            raise RunFailed(reasons.CONNECTION_ERROR, str(error), "Not applicable", "Not applicable") from None
        except ssrf.ReferenceRejected as error:
            if isinstance(error, ssrf.ReferenceBlocked):  # Quay's message hides the host; the log names it
                log.warning("mirror %s: source refused: %s", mirror.path, error.explain())
            raise RunFailed(reasons.INVALID_SOURCE, "Source registry location is not allowed",
                            "Not applicable", "Not applicable") from None

    def _sync(self, mirror: Mirror, files: RunFiles) -> str:
        skopeo = Skopeo(self.settings.skopeo_path, timeout=mirror.timeout, group=self.group, workdir=files.path,
                        secrets=[mirror.password, self.settings.storage_password],
                        parallel=self.settings.tag_concurrency)
        try:
            destination = open_repository(self.settings, mirror.namespace, mirror.name, files, skopeo)
        except DestinationError as error:
            raise RunFailed(reasons.UNKNOWN_ERROR, str(error)) from None
        skopeo.env.update(proxy_env(mirror.proxy, bypass=destination.no_proxy))
        host = ssrf.registry_host(mirror.reference)
        src_auth = files.authfile("src-auth.json", {host: (mirror.username, mirror.password)}
                                  if mirror.username else {})

        self.upstream, self.upstream_repository = upstream_client(mirror, self.settings.ssrf_allowed_hosts)
        upstream = self._list_tags_http(mirror)
        if upstream is None:  # skopeo tells why (its messages classify the failure), or lists when HTTP could not
            listing = skopeo.list_tags(mirror.reference, tls_verify=mirror.verify_tls, authfile=src_auth)
            if listing.stopped:
                raise Stopped(listing.stopped)
            if not listing.ok:
                raise RunFailed(listing.reason or reasons.UNKNOWN_ERROR,
                                f"skopeo list-tags failed: {listing.message}", listing.stdout, listing.stderr)
            try:
                upstream = json.loads(listing.raw_stdout).get("Tags") or []
            except (ValueError, AttributeError):
                raise RunFailed(reasons.UNKNOWN_ERROR, "skopeo list-tags printed no tag list") from None
        matched = filter_tags(upstream, mirror.rules)
        with self.database.transaction() as session:
            history.set_matched(session, self.claimed.run_id, len(matched))
            owned = history.owned_tags(session, mirror.config_id)
        log.info("mirror %s: %d upstream tags, %d match %s", mirror.path, len(upstream), len(matched), mirror.rules)
        metrics.PENDING_TAGS.labels(mirror.namespace, mirror.name).set(len(matched))

        results = self._copy_all(mirror, matched, owned, skopeo, destination, src_auth, files)
        if self.group.is_stopped:
            return self._finish_stopped(results)
        results += self._prune(mirror, matched, destination)
        if self.group.is_stopped:
            return self._finish_stopped(results)
        try:
            freed = destination.collect_garbage(older_than=self.started_wall)
            if freed:
                log.info("mirror %s: %d bytes of unreferenced blobs removed", mirror.path, freed)
        except OSError as error:
            log.warning("mirror %s: garbage collection failed: %s", mirror.path, error)
        failed = [r for r in results if r.outcome == history.FAILED]
        if failed:
            first = failed[0]
            partial = len(failed) < len(results)
            return self._finish(RepoMirrorStatus.FAIL, first.reason or reasons.UNKNOWN_ERROR,
                                f"{len(failed)} of {len(results)} tags failed; {first.tag}: {first.message}",
                                results, matched=matched, partial=partial, stdout=first.stdout, stderr=first.stderr)
        return self._finish(RepoMirrorStatus.SUCCESS, None, None, results, matched=matched)

    # -------------------------------------------------------------- tags
    def _copy_all(self, mirror: Mirror, matched: list[str], owned: dict[str, str], skopeo: Skopeo,
                  destination: Repository, src_auth, files: RunFiles) -> list[TagResult]:
        """Check every tag, then copy those that changed: indexes first.

        An index costs one copy per platform. Started last, one keeps a single
        slot busy while the others idle at the end of the run; started first,
        the short copies fill in around it (longest-first scheduling).
        """
        if not matched:
            return []
        results: list[TagResult] = []
        order = {tag: i for i, tag in enumerate(matched)}
        workers = max(1, min(self.settings.tag_concurrency, len(matched)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"mirror-{mirror.config_id}-tag") as pool:
            plans = self._gather(mirror, owned, results, [
                pool.submit(self._check_tag, mirror, tag, skopeo, destination, src_auth) for tag in matched])
            plans.sort(key=lambda plan: (not plan.is_index, order[plan.tag]))
            self._gather(mirror, owned, results, [
                pool.submit(self._copy_tag, mirror, plan, str(i), skopeo, destination, src_auth, files)
                for i, plan in enumerate(plans)])
        return sorted(results, key=lambda r: order.get(r.tag, 0))

    def _gather(self, mirror: Mirror, owned: dict[str, str], results: list[TagResult],
                futures: list[Future]) -> list[CopyPlan]:
        """Record the futures' tag results as they finish; return the copy plans among them."""
        plans: list[CopyPlan] = []
        pending: list[TagResult] = []
        flushed = time.monotonic()
        waiting = set(futures)
        while waiting:
            finished, waiting = wait(waiting, timeout=RECORD_EVERY, return_when=FIRST_COMPLETED)
            for future in finished:
                value = future.result()
                if isinstance(value, CopyPlan):
                    plans.append(value)
                elif value is not None:
                    results.append(value)
                    pending.append(value)
            # Skipped tags are written in batches (one transaction, not one per tag); a copy, a failure,
            # the end or RECORD_EVERY seconds writes what is pending, so a run in progress shows its progress.
            urgent = any(r.outcome != history.SKIPPED for r in pending)
            if pending and (urgent or not waiting or time.monotonic() - flushed >= RECORD_EVERY):
                self._record(mirror, pending, owned)
                pending, flushed = [], time.monotonic()
        return plans

    def _check_tag(self, mirror: Mirror, tag: str, skopeo: Skopeo, destination: Repository,
                   src_auth) -> TagResult | CopyPlan | None:
        """Compare the upstream digest with the destination's: a skip or a failure, or a copy to make."""
        if self.group.is_stopped:
            return None
        done = _timed(tag)

        try:
            head = self._head(mirror, tag)
        except (OutboundRefused, RedirectError) as refused:  # skopeo must not follow it (unchecked)
            return done(history.FAILED, reason=reasons.INVALID_SOURCE, message=str(refused))
        except RateLimited as error:
            return done(history.FAILED, reason=reasons.UNKNOWN_ERROR, message=str(error))
        except TimeoutError:
            return done(history.FAILED, reason=reasons.TIMEOUT,
                        message=f"HEAD of {tag} did not finish within {mirror.timeout:.1f}s (timeout)")
        if head is not None:
            upstream, is_index = head.digest, head.is_index
        else:
            try:
                inspected = skopeo.inspect_raw(f"docker://{mirror.reference}:{tag}", tls_verify=mirror.verify_tls,
                                               authfile=src_auth)
            except Stopped:
                return None
            if not inspected.ok:
                return _failed(done, inspected)
            upstream, is_index = sha256(inspected.raw_stdout), _is_index(inspected.raw_stdout)
        try:
            present = destination.digest(tag)
        except DestinationError as error:
            return done(history.FAILED, reason=reasons.UNKNOWN_ERROR, message=str(error), digest=upstream)
        if present == upstream:
            return done(history.SKIPPED, digest=upstream)
        if self.upstream is not None and self.upstream.rate_limit_remaining == 0:
            return done(history.FAILED, reason=reasons.UNKNOWN_ERROR, digest=upstream,
                        message=f"the upstream registry's pull rate limit is exhausted (RateLimit-Remaining: 0); "
                                f"{tag} was not copied")
        return CopyPlan(tag, upstream, is_index)

    def _copy_tag(self, mirror: Mirror, plan: CopyPlan, slot: str, skopeo: Skopeo, destination: Repository,
                  src_auth, files: RunFiles) -> TagResult | None:
        if self.group.is_stopped:
            return None
        tag, upstream = plan.tag, plan.digest
        done = _timed(tag)

        try:
            try:
                target = destination.copy_target(tag, slot)
            except (DestinationError, OSError) as error:  # e.g. ENOSPC: say so, per tag
                return done(history.FAILED, reason=reasons.UNKNOWN_ERROR, digest=upstream,
                            message=f"preparing the destination failed: {error}")
            try:
                digestfile = files.child(f"digest-{slot}")
                # Tags sharing a manifest are copied one after the other: distribution can fail two concurrent
                # pushes of one index into one repository ("Manifest list must be converted ...").
                with self._digest_lock(upstream):
                    # Said as it starts, not only as it ends: a large image copies for minutes.
                    log.info("mirror %s: copying %s (%s)", mirror.path, tag, upstream)
                    for attempt in range(1, COPY_ATTEMPTS + 1):
                        copied = skopeo.copy(f"docker://{mirror.reference}:{tag}", target.reference,
                                             src_tls_verify=mirror.verify_tls, src_authfile=src_auth,
                                             dest_args=target.args, digestfile=digestfile, unsigned=mirror.unsigned)
                        if copied.ok or copied.stopped or copied.reason not in RETRYABLE or attempt == COPY_ATTEMPTS:
                            break
                        log.info("mirror %s: copying %s failed (%s), trying again: %s", mirror.path, tag,
                                 copied.reason, copied.message)
                        self.group.wait(RETRY_PAUSE * attempt)  # returns at once on cancel or shutdown
                if not copied.ok:
                    return _failed(done, copied)
                try:
                    digest = destination.commit(tag, target)
                except (DestinationError, OSError, ValueError) as error:
                    return done(history.FAILED, reason=reasons.UNKNOWN_ERROR, message=f"storing the tag failed: {error}")
                if digest is None:
                    try:
                        digest = digestfile.read_text().strip() or upstream
                    except OSError:
                        digest = upstream
            finally:
                destination.cleanup(target)
            size = destination.image_size(digest)
            return done(history.COPIED, digest=digest, size=size, output=copied.stderr or None,
                        stdout=copied.stdout, stderr=copied.stderr)
        except Stopped:
            return None

    def _list_tags_http(self, mirror: Mirror) -> list[str] | None:
        """The upstream tags from ``GET /v2/<repo>/tags/list``; None when skopeo must list (or explain)."""
        if self.upstream is None:
            return None
        try:
            tags = self.upstream.tags(self.upstream_repository, missing_ok=False)
        except (OutboundRefused, RedirectError) as refused:  # skopeo list-tags would follow it: the run stops here
            raise RunFailed(reasons.INVALID_SOURCE, str(refused), "Not applicable", "Not applicable") from None
        except TimeoutError:
            if mirror.timeout > HTTP_TIMEOUT:  # skopeo has the rest of the budget (and can be killed)
                log.info("mirror %s: GET tags/list timed out; asking skopeo", mirror.path)
                return None
            raise RunFailed(reasons.TIMEOUT, f"list-tags did not finish within {mirror.timeout:.1f}s "
                            f"(GET tags/list of {mirror.reference} timed out)", "Not applicable",
                            "Not applicable") from None
        except (OSError, RegistryError, ValueError, AttributeError) as error:
            log.info("mirror %s: the tag list over HTTP failed (%s); asking skopeo", mirror.path, error)
            return None
        return [t for t in tags if isinstance(t, str)]

    def _head(self, mirror: Mirror, tag: str) -> ManifestHead | None:
        """The upstream digest from a manifest HEAD; None when skopeo must tell (no client, no digest, an error).

        An SSRF refusal (OutboundRefused) or a redirect that cannot be followed (RedirectError) is not an
        error skopeo could explain, and skopeo would follow it unchecked: both propagate.
        """
        if self.upstream is None:
            return None
        try:
            return self.upstream.manifest_head(self.upstream_repository, tag)
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

    def _digest_lock(self, digest: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(digest, threading.Lock())

    def _record(self, mirror: Mirror, results: list[TagResult], owned: dict[str, str]) -> None:
        """Write tags' results, their ownership and their audit entries (Quay's per-tag kinds), in one transaction."""
        with self.database.transaction() as session:
            for result in results:
                self._record_in(session, mirror, result, owned)
        for result in results:
            if result.outcome == history.FAILED:
                log.warning("mirror %s: tag %s failed (%s): %s", mirror.path, result.tag, result.reason,
                            result.message)

    def _record_in(self, session, mirror: Mirror, result: TagResult, owned: dict[str, str]) -> None:
        metrics.TAGS.labels(mirror.namespace, result.outcome).inc()
        if result.outcome in (history.COPIED, history.SKIPPED, history.FAILED):
            metrics.PENDING_TAGS.labels(mirror.namespace, mirror.name).dec()
        if result.outcome == history.COPIED and result.size:
            metrics.BYTES_COPIED.labels(mirror.namespace).inc(result.size)
        counts = result.outcome in (history.COPIED, history.SKIPPED, history.FAILED)
        history.record_tag(session, self.claimed.run_id, result.tag, result.outcome, digest=result.digest,
                           reason=result.reason, output=result.output or result.message, size=result.size,
                           duration_ms=result.duration_ms, counts_as_done=counts)
        if result.outcome == history.COPIED and result.digest:
            log.info("mirror %s: copied %s (%s) in %.2fs", mirror.path, result.tag, result.digest,
                     (result.duration_ms or 0) / 1000)
            history.own(session, mirror.config_id, result.tag, result.digest)
            self._audit_in(session, "repo_mirror_sync_tag_success", verb="finish", tag=result.tag,
                           message=f"Source 'docker://{mirror.reference}:{result.tag}' successful sync",
                           stdout=result.stdout, stderr=result.stderr)
        elif result.outcome == history.SKIPPED and result.tag in owned and result.digest:
            history.own(session, mirror.config_id, result.tag, result.digest)
        elif result.outcome == history.FAILED:
            self._audit_in(session, "repo_mirror_sync_tag_failed", verb="finish", tag=result.tag,
                           message=f"Source 'docker://{mirror.reference}:{result.tag}' failed to sync",
                           stdout=result.stdout, stderr=result.stderr or result.message, reason=result.reason)

    def _prune(self, mirror: Mirror, matched: list[str], destination: Repository) -> list[TagResult]:
        """Delete the tags this mirror created that upstream no longer has (or the rule no longer matches)."""
        with self.database.transaction() as session:
            owned = history.owned_tags(session, mirror.config_id)
        keep = set(matched)
        doomed = {tag: digest for tag, digest in owned.items() if tag not in keep}
        if not doomed or self.group.is_stopped:
            return []
        try:
            removals = destination.remove(doomed)
        except Stopped:
            return []
        except (DestinationError, OSError) as error:
            removals = {tag: Removal("failed", reasons.UNKNOWN_ERROR, str(error)) for tag in doomed}
        results = []
        for tag in sorted(removals):
            removal = removals[tag]
            outcome = {"deleted": history.DELETED, "kept": history.KEPT}.get(removal.outcome, history.FAILED)
            if removal.reason == reasons.CANCELLED:
                continue
            result = TagResult(tag, outcome, digest=removal.digest, reason=removal.reason, message=removal.message)
            with self.database.transaction() as session:
                history.record_tag(session, self.claimed.run_id, tag, outcome, digest=removal.digest,
                                   reason=removal.reason, output=removal.message, counts_as_done=False)
                if outcome in (history.DELETED, history.KEPT):
                    history.disown(session, mirror.config_id, tag)
            if outcome == history.DELETED:
                log.info("mirror %s: deleted tag %s (gone upstream)", mirror.path, tag)
            metrics.TAGS.labels(mirror.namespace, outcome).inc()
            results.append(result)
        return results

    # ------------------------------------------------------------ ending
    def _finish(self, outcome: RepoMirrorStatus, reason: str | None, message: str | None,
                results: list[TagResult], *, matched: list[str] | None = None, partial: bool = False,
                stdout: str | None = None, stderr: str | None = None) -> str:
        mirror = self.mirror
        self.group.finishing = True
        with self.database.transaction() as session:
            written = status.release_outcome(session, self.claimed.lease, outcome)
            if written is None:
                run_status, reason = history.RUN_INTERRUPTED, STOP_LOST
                message = "the lease was lost (expired and reclaimed) before the run ended; nothing was released"
            elif written == RepoMirrorStatus.CANCEL:
                run_status, reason, message = history.RUN_CANCEL, reasons.CANCELLED, "cancelled"
            else:
                run_status = written.name
            history.finish_run(session, self.claimed.run_id, run_status, reason=reason, message=message)
            if mirror is not None and written is not None:
                self._final_audit(session, mirror, written, reason, message, results, matched, partial,
                                  stdout, stderr)
            history.trim(session, self.claimed.repository_id, self.settings.history_keep)
        self._log_end(run_status, reason, message, results)
        if mirror is not None:
            metrics.run_finished(mirror.namespace, mirror.name, run_status, reason, time.monotonic() - self.started,
                                 any(r.outcome == history.FAILED for r in results))
        return run_status

    def _finish_stopped(self, results: list[TagResult]) -> str:
        why = self.group.stopped or STOP_CANCELLED
        if why == STOP_CANCELLED:
            return self._finish(RepoMirrorStatus.CANCEL, reasons.CANCELLED, "cancelled", results)
        self.group.finishing = True
        with self.database.transaction() as session:
            if why == STOP_SHUTDOWN and status.abandon(session, self.claimed.lease):
                events.sync_requested(session, self.claimed.config_id)
                message = "the worker shut down; the mirror went back to SYNC_NOW for another worker"
            elif why == STOP_SHUTDOWN:
                # Not SYNCING any more under our lease: a cancel won, or the lease was lost.
                written = status.release_outcome(session, self.claimed.lease, RepoMirrorStatus.CANCEL)
                message = "cancelled during shutdown" if written else "the lease was lost before the shutdown"
            else:
                message = "the lease was lost (expired and reclaimed by another worker); the run stopped"
            history.finish_run(session, self.claimed.run_id, history.RUN_INTERRUPTED, reason=why, message=message)
        self._log_end(history.RUN_INTERRUPTED, why, message, results)
        if self.mirror is not None:
            metrics.run_finished(self.mirror.namespace, self.mirror.name, history.RUN_INTERRUPTED, why,
                                 time.monotonic() - self.started, False)
        return history.RUN_INTERRUPTED

    def _final_audit(self, session, mirror: Mirror, written: RepoMirrorStatus, reason: str | None,
                     message: str | None, results: list[TagResult], matched: list[str] | None, partial: bool,
                     stdout: str | None, stderr: str | None) -> None:
        failed = {r.tag for r in results if r.outcome == history.FAILED}
        names = matched if matched is not None else []
        if written == RepoMirrorStatus.SUCCESS:
            self._audit_in(session, "repo_mirror_sync_success", verb="end", message=mirror.pattern_message,
                           tags=", ".join(names) if names else "No tags matched")
        elif written == RepoMirrorStatus.CANCEL:
            self._audit_in(session, "repo_mirror_sync_failed", verb="cancelled", message=mirror.pattern_message,
                           tags=", ".join(names), reason=reasons.CANCELLED)
        elif reason == reasons.INVALID_SOURCE:
            self._audit_in(session, "repo_mirror_sync_failed", verb="end", message=message, tags="",
                           stdout=stdout, stderr=stderr, reason=reason)
        else:
            suffix = ": PARTIAL SYNC" if partial else f": {message}" if not failed else ""
            self._audit_in(session, "repo_mirror_sync_failed", verb="end", message=mirror.pattern_message + suffix,
                           tags=", ".join(f"{t} (FAILED)" if t in failed else t for t in names),
                           stdout=stdout, stderr=stderr, reason=reason)

    def _log_end(self, run_status: str, reason: str | None, message: str | None, results: list[TagResult]) -> None:
        counts: dict[str, int] = {}
        for r in results:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        path = self.mirror.path if self.mirror else f"config {self.claimed.config_id}"
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no tags"
        elapsed = time.monotonic() - self.started
        if run_status == history.RUN_SUCCESS:
            log.info("mirror %s: SUCCESS in %.2fs (%s)", path, elapsed, summary)
        else:
            log.warning("mirror %s: %s in %.2fs, reason %s (%s): %s", path, run_status, elapsed, reason, summary,
                        message)

    # ------------------------------------------------------------- audit
    def _audit(self, kind: str, **metadata: Any) -> None:
        with self.database.transaction() as session:
            self._audit_in(session, kind, **metadata)

    def _audit_in(self, session, kind: str, **metadata: Any) -> None:
        mirror = self.mirror
        values = {"verb": None, "namespace": mirror.namespace if mirror else None,
                  "repo": mirror.name if mirror else None, "message": None, "tag": None, "tags": None,
                  "stdout": None, "stderr": None}
        values.update(metadata)
        for key in ("stdout", "stderr"):
            values[key] = history.excerpt(values[key], AUDIT_OUTPUT)
        audit.record(session, kind, repository_id=self.claimed.repository_id, **values)

