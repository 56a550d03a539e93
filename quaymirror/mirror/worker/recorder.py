"""The one writer of a sync run: its history, the tags it owns, its metrics, its log, and its listeners.

A run decides; :class:`RunRecorder` writes. Every tag's result is written as
soon as it is known (skipped tags in small batches), so a run in progress shows
how far it got; the run's end (the claim released, the history row finished,
old runs trimmed) is one transaction.

Listeners (:class:`RunListener`) are the seam for what else a run's events
cause: each hook is called inside the transaction that writes what it reports,
so whatever a listener writes commits with it, or not at all. Quay's audit
entries are today's listener (``run_audit``). Metrics are not a listener:
Prometheus counters cannot be rolled back, so the recorder updates them once
the transaction has committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from quaymirror import metrics
from quaymirror.db import Database
from quaymirror.mirror import events, history, status
from quaymirror.mirror.models import RepoMirrorStatus, RunStatus, TagOutcome
from quaymirror.mirror.worker import reasons
from quaymirror.mirror.worker.claims import Claimed
from quaymirror.mirror.worker.run_config import Mirror
from quaymirror.mirror.worker.skopeo import StopReason
from quaymirror.settings import Settings

# Everything a run says (its steps included) goes to one logger, under the name it had before the run was
# split into modules, so that operators' filters keep working.
RUN_LOGGER = "quaymirror.mirror.worker.sync"
log = logging.getLogger(RUN_LOGGER)

# Skipped tags' results are written at least this often (seconds) while a run goes on.
RECORD_EVERY = 0.5
# Outcomes that finish one of the run's matched tags (its pending-tags gauge goes down).
DONE_OUTCOMES = frozenset({TagOutcome.COPIED, TagOutcome.SKIPPED, TagOutcome.FAILED, TagOutcome.FILTERED})


@dataclass
class TagResult:
    """What a step ended one tag with: as the recorder writes it to the history and hands it to listeners."""

    tag: str
    outcome: TagOutcome
    digest: str | None = None
    reason: str | None = None
    message: str | None = None
    output: str | None = None
    size: int | None = None
    duration_ms: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    # The platforms the architecture filter chose to copy ("os/arch[/variant]"); None: no filter chose.
    platforms: tuple[str, ...] | None = None
    # The filter the tag's index is stored with, for the next run's check; None: stored whole.
    architectures: tuple[str, ...] | None = None
    # Upstream's digest when ``digest`` (what the destination holds) differs from it.
    upstream_digest: str | None = None


@dataclass(frozen=True)
class RecordedRun:
    """The run a listener hears about: its claim (ids, lease, trigger) and its configuration."""

    claimed: Claimed
    mirror: Mirror


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended, as its history row says, with what it did."""

    status: RunStatus
    reason: str | None
    message: str | None
    results: Sequence[TagResult]
    matched: Sequence[str] | None = None  # None: the run ended before it listed the tags
    partial: bool = False  # some tags failed, others did not
    stdout: str | None = None
    stderr: str | None = None


class RunListener:
    """Hears what a run records, inside the transaction that records it: override what you need.

    A hook may write rows with ``session`` (they commit with what the hook reports, and never
    without it); it must not commit, and an exception it raises rolls the whole write back.
    Listeners hear only of runs whose configuration was loaded.
    """

    def run_started(self, session: Session, run: RecordedRun) -> None:
        """The source was accepted: the run is about to list the upstream tags."""

    def tag_recorded(self, session: Session, run: RecordedRun, result: TagResult) -> None:
        """A matched tag is done: copied, skipped, failed (or cancelled, when the run was stopped)."""

    def tag_removed(self, session: Session, run: RecordedRun, result: TagResult) -> None:
        """A tag the mirror owned was pruned (deleted, kept because someone changed it, or failed)."""

    def run_finished(self, session: Session, run: RecordedRun, outcome: RunOutcome) -> None:
        """The run's outcome is being written: the claim released and the history row finished."""


class RunRecorder:
    """Every write a sync run makes, and every line it logs about its progress.

    ``finishing`` is called just before the run releases its claim: from then on a lease that
    is gone was given up, not lost (the runner's lease keeper must not stop the run for it).
    """

    def __init__(self, settings: Settings, database: Database, claimed: Claimed, *,
                 listeners: Sequence[RunListener], finishing: Callable[[], None]) -> None:
        self.settings = settings
        self.database = database
        self.claimed = claimed
        self.listeners = tuple(listeners)
        self._finishing = finishing
        self.mirror: Mirror | None = None
        self.began = time.monotonic()
        self.began_wall = time.time()
        self._owned: dict[str, str] = {}  # the tags the mirror owned when the run listed the upstream
        # How each of those tags was stored (its filter and upstream digest; see TagResult).
        self.stored: dict[str, history.StoredTag] = {}
        self._pending: list[TagResult] = []
        self._flushed = time.monotonic()

    def _loaded(self) -> RecordedRun:
        if self.mirror is None:
            raise RuntimeError("the run's configuration is not loaded yet")
        return RecordedRun(self.claimed, self.mirror)

    # The run's start.
    def loaded(self, mirror: Mirror) -> Mirror:
        """The run's configuration, read: from now on the run's lines and metrics name the mirror."""
        self.mirror = mirror
        return mirror

    def announce(self) -> None:
        """The run goes ahead (it was not stopped between its claim and now)."""
        mirror = self._loaded().mirror
        log.info("mirror %s: sync started (%s, run %d)", mirror.path, self.claimed.trigger, self.claimed.run_id)
        metrics.run_started(mirror.namespace, mirror.name, self.began_wall)

    def started(self) -> None:
        """The source was accepted (the listeners' ``run_started``)."""
        run = self._loaded()
        with self.database.transaction() as session:
            for listener in self.listeners:
                listener.run_started(session, run)

    def matched(self, upstream: int, matched: Sequence[str]) -> None:
        """The upstream listed ``upstream`` tags, of which ``matched`` match the rule."""
        mirror = self._loaded().mirror
        with self.database.transaction() as session:
            history.set_matched(session, self.claimed.run_id, len(matched))
            self._owned = history.owned_tags(session, mirror.config_id)
            self.stored = history.stored_tags(session, mirror.config_id)
        self._flushed = time.monotonic()
        log.info("mirror %s: %d upstream tags, %d match %s", mirror.path, upstream, len(matched), mirror.rules)
        metrics.PENDING_TAGS.labels(mirror.namespace, mirror.name).set(len(matched))

    # Tags.
    def tag(self, result: TagResult) -> None:
        """A matched tag's result: written at the next :meth:`flush` that is due."""
        self._pending.append(result)

    def flush(self, *, final: bool = False) -> None:
        """Write the pending results now if one is not a skip, ``final``, or :data:`RECORD_EVERY` has passed.

        Skipped tags are written in batches (one transaction, not one per tag); a copy, a
        failure or the end of a step writes at once, so a run in progress shows its progress.
        """
        if not self._pending:
            return
        urgent = any(r.outcome != TagOutcome.SKIPPED for r in self._pending)
        if urgent or final or time.monotonic() - self._flushed >= RECORD_EVERY:
            results, self._pending = self._pending, []
            self._record(results)
            self._flushed = time.monotonic()

    def _record(self, results: list[TagResult]) -> None:
        """Write tags' results, their ownership and the listeners' rows, in one transaction; then count them."""
        run = self._loaded()
        with self.database.transaction() as session:
            for result in results:
                history.record_tag(session, self.claimed.run_id, result.tag, result.outcome, digest=result.digest,
                                   reason=result.reason, output=result.output or result.message, size=result.size,
                                   duration_ms=result.duration_ms, counts_as_done=result.outcome in DONE_OUTCOMES,
                                   platforms=result.platforms, upstream_digest=result.upstream_digest)
                if result.digest and self._owns(result):
                    history.own(session, run.mirror.config_id, result.tag,
                                history.StoredTag(result.digest, result.architectures, result.upstream_digest))
                for listener in self.listeners:
                    listener.tag_recorded(session, run, result)
        for result in results:
            self._recorded(run.mirror, result)

    def _owns(self, result: TagResult) -> bool:
        """A copy makes the tag the mirror's; a skip refreshes a tag it owned already (never someone else's)."""
        return result.outcome == TagOutcome.COPIED or (result.outcome == TagOutcome.SKIPPED
                                                       and result.tag in self._owned)

    def _recorded(self, mirror: Mirror, result: TagResult) -> None:
        """A tag's result is committed: its metrics and its log line."""
        metrics.TAGS.labels(mirror.namespace, result.outcome).inc()
        if result.outcome in DONE_OUTCOMES:
            metrics.PENDING_TAGS.labels(mirror.namespace, mirror.name).dec()
        if result.outcome == TagOutcome.COPIED:
            if result.size:
                metrics.BYTES_COPIED.labels(mirror.namespace).inc(result.size)
            if result.digest:
                log.info("mirror %s: copied %s (%s) in %.2fs", mirror.path, result.tag, result.digest,
                         (result.duration_ms or 0) / 1000)
        elif result.outcome == TagOutcome.FAILED:
            log.warning("mirror %s: tag %s failed (%s): %s", mirror.path, result.tag, result.reason,
                        result.message)

    def owned_tags(self) -> dict[str, str]:
        """The destination tags the mirror owns now (its copies of this run included), for pruning."""
        with self.database.transaction() as session:
            return history.owned_tags(session, self._loaded().mirror.config_id)

    def removals(self, results: list[TagResult]) -> list[TagResult]:
        """Write each pruned tag's result, one transaction each; a tag deleted or kept is no longer owned."""
        run = self._loaded()
        mirror = run.mirror
        for result in results:
            with self.database.transaction() as session:
                history.record_tag(session, self.claimed.run_id, result.tag, result.outcome, digest=result.digest,
                                   reason=result.reason, output=result.output or result.message,
                                   counts_as_done=False)
                if result.outcome in (TagOutcome.DELETED, TagOutcome.KEPT):
                    history.disown(session, mirror.config_id, result.tag)
                for listener in self.listeners:
                    listener.tag_removed(session, run, result)
            if result.outcome == TagOutcome.DELETED:
                log.info("mirror %s: deleted tag %s (gone upstream)", mirror.path, result.tag)
            metrics.TAGS.labels(mirror.namespace, result.outcome).inc()
        return results

    # The run's end.
    def finish(self, outcome: RepoMirrorStatus, reason: str | None, message: str | None,
               results: Sequence[TagResult], *, matched: Sequence[str] | None = None, partial: bool = False,
               stdout: str | None = None, stderr: str | None = None) -> RunStatus:
        """Release the claim with ``outcome`` (a cancel that came meanwhile wins) and finish the history row."""
        self._finishing()
        with self.database.transaction() as session:
            written = status.release(session, self.claimed.lease, outcome)
            if written is None:
                run_status, reason = RunStatus.INTERRUPTED, StopReason.LEASE_LOST
                message = "the lease was lost (expired and reclaimed) before the run ended; nothing was released"
            elif written == RepoMirrorStatus.CANCEL:
                run_status, reason, message = RunStatus.CANCEL, reasons.CANCELLED, "cancelled"
            else:
                run_status = RunStatus(written.name)
            history.finish_run(session, self.claimed.run_id, run_status, reason=reason, message=message)
            self._finished(session, RunOutcome(run_status, reason, message, results, matched, partial, stdout,
                                               stderr))
            history.trim(session, self.claimed.repository_id, self.settings.history_keep)
        self._end(run_status, reason, message, results)
        return run_status

    def interrupted(self, why: StopReason, results: Sequence[TagResult]) -> RunStatus:
        """The run was stopped by a shutdown or a lost lease: at shutdown, the claim goes back as SYNC_NOW."""
        self._finishing()
        with self.database.transaction() as session:
            if why == StopReason.SHUTDOWN and status.abandon(session, self.claimed.lease):
                events.sync_requested(session, self.claimed.config_id)
                message = "the worker shut down; the mirror went back to SYNC_NOW for another worker"
            elif why == StopReason.SHUTDOWN:
                # Not SYNCING any more under our lease: a cancel won, or the lease was lost.
                written = status.release(session, self.claimed.lease, RepoMirrorStatus.CANCEL)
                message = "cancelled during shutdown" if written else "the lease was lost before the shutdown"
            else:
                message = "the lease was lost (expired and reclaimed by another worker); the run stopped"
            history.finish_run(session, self.claimed.run_id, RunStatus.INTERRUPTED, reason=why, message=message)
            self._finished(session, RunOutcome(RunStatus.INTERRUPTED, why, message, results))
        self._end(RunStatus.INTERRUPTED, why, message, results)
        return RunStatus.INTERRUPTED

    def _finished(self, session: Session, outcome: RunOutcome) -> None:
        if self.mirror is not None:
            run = self._loaded()
            for listener in self.listeners:
                listener.run_finished(session, run, outcome)

    def _end(self, run_status: RunStatus, reason: str | None, message: str | None,
             results: Sequence[TagResult]) -> None:
        """The run's last log line (its summary) and metrics, once its end is committed."""
        counts: dict[str, int] = {}
        for result in results:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        path = self.mirror.path if self.mirror else f"config {self.claimed.config_id}"
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no tags"
        elapsed = time.monotonic() - self.began
        if run_status == RunStatus.SUCCESS:
            log.info("mirror %s: SUCCESS in %.2fs (%s)", path, elapsed, summary)
        else:
            log.warning("mirror %s: %s in %.2fs, reason %s (%s): %s", path, run_status, elapsed, reason, summary,
                        message)
        if self.mirror is not None:
            any_failed = run_status != RunStatus.INTERRUPTED and any(r.outcome == TagOutcome.FAILED for r in results)
            metrics.run_finished(self.mirror.namespace, self.mirror.name, run_status, reason, elapsed, any_failed)
