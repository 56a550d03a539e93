"""One sync run of one claimed mirror, from its configuration to its recorded end (Quay's steps, its bugs fixed).

1. load the configuration (from the run's source) and decrypt the upstream credentials;
2. re-check the reference against the SSRF rules (with DNS): a refusal is a
   FAIL ``invalid_source`` and skopeo never runs;
3. list the upstream tags (``GET /v2/<repo>/tags/list`` on the kept-alive
   connection; ``skopeo list-tags`` when that fails, for its error); filter with
   the glob rule;
4. per matching tag (up to ``QUAYMIRROR_TAG_CONCURRENCY`` at once), the tag
   steps: check (the upstream digest from a manifest ``HEAD``; skip when the
   destination holds it under that tag), then copy (indexes first);
5. unless the run was stopped: delete the destination tags this mirror created
   earlier and that no longer match upstream (also when nothing matches), then
   the blobs no tag uses any more;
6. release the claim (SUCCESS / FAIL / CANCEL, or back to SYNC_NOW on
   shutdown) and finish the history row, in one transaction.

The run decides; what registries and skopeo do is in :mod:`.steps`, and every
write (history, ownership, audit, metrics, the run's log) is the
:class:`~.recorder.RunRecorder`'s. Credentials reach skopeo only through
authfiles in a private directory that is removed when the run ends.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from quaymirror.db import Database
from quaymirror.mirror.models import RepoMirrorStatus, RunStatus, TagOutcome
from quaymirror.mirror.worker import reasons, steps
from quaymirror.mirror.worker.claims import Claimed
from quaymirror.mirror.worker.reasons import RunFailed
from quaymirror.mirror.worker.recorder import RECORD_EVERY, RUN_LOGGER, RunListener, RunRecorder, TagResult
from quaymirror.mirror.worker.run_audit import QuayAuditLog
from quaymirror.mirror.worker.run_config import MirrorSource, load_mirror
from quaymirror.mirror.worker.skopeo import ProcessGroup, RunFiles, Stopped, StopReason
from quaymirror.mirror.worker.steps import PIPELINE, TagContext, TagPlan, TagStep
from quaymirror.mirror.worker.tags import filter_tags
from quaymirror.notifications.run_events import MirrorNotifications
from quaymirror.settings import Settings

log = logging.getLogger(RUN_LOGGER)


def default_listeners(settings: Settings) -> tuple[RunListener, ...]:
    """What hears a repository mirror's run: Quay's audit entries and the repository's notifications."""
    return QuayAuditLog(), MirrorNotifications(settings)


class MirrorRun:
    """Runs one claimed mirror to its end; :meth:`execute` raises only when the database fails at the end.

    ``source`` gives the run's configuration (default: the claimed ``repomirrorconfig`` row);
    ``tag_steps`` is each tag's pipeline; ``listeners`` hear what the run records (default: Quay's
    audit entries and the notifications); ``finishing`` is called just before the run releases its claim.
    """

    def __init__(self, settings: Settings, database: Database, claimed: Claimed, group: ProcessGroup, *,
                 source: MirrorSource | None = None, tag_steps: Sequence[TagStep] = PIPELINE,
                 listeners: Sequence[RunListener] | None = None,
                 finishing: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.claimed = claimed
        self.group = group
        self.source = source or functools.partial(load_mirror, database, settings, claimed.config_id)
        self.tag_steps = tuple(tag_steps)
        self.recorder = RunRecorder(settings, database, claimed, finishing=finishing,
                                    listeners=default_listeners(settings) if listeners is None else listeners)
        self._files: RunFiles | None = None
        self._context: TagContext | None = None

    def execute(self) -> RunStatus:
        """Run the mirror; the run's final history status."""
        try:
            return self._sync()
        except Stopped:
            return self._stopped([])
        except RunFailed as failure:
            if self.group.is_stopped:
                return self._stopped([])
            return self.recorder.finish(RepoMirrorStatus.FAIL, failure.reason, failure.message, [],
                                        stdout=failure.stdout, stderr=failure.stderr)
        except Exception as error:  # an internal error must still release the claim
            log.exception("mirror %d: internal error", self.claimed.config_id)
            if self.group.is_stopped:
                return self._stopped([])
            return self.recorder.finish(RepoMirrorStatus.FAIL, reasons.UNKNOWN_ERROR,
                                        f"internal error: {type(error).__name__}", [])
        finally:
            if self._context is not None:
                self._context.close()
            if self._files is not None:
                self._files.remove()

    def _sync(self) -> RunStatus:
        mirror = self.recorder.loaded(self.source())
        if self.group.is_stopped:  # shut down between the claim and now
            return self._stopped([])
        self.recorder.announce()
        steps.check_source(mirror, self.settings.ssrf_allowed_hosts)
        self.recorder.started()
        if not mirror.credentials_ok:
            raise RunFailed(reasons.UNKNOWN_ERROR, "the stored upstream credentials could not be decrypted "
                            "(was QUAYMIRROR_SECRET_KEY changed?)")
        self._files = RunFiles()
        self._context = context = TagContext.open(self.settings, mirror, self._files, self.group)

        upstream = steps.list_tags(context)
        matched = filter_tags(upstream, mirror.rules)
        self.recorder.matched(len(upstream), matched)
        context.stored.update(self.recorder.stored)
        results = self._tags(context, matched)
        if self.group.is_stopped:
            return self._stopped(results)
        results += self.recorder.removals(steps.prune(context, self.recorder.owned_tags(), matched))
        if self.group.is_stopped:
            return self._stopped(results)
        steps.collect_garbage(context, older_than=self.recorder.began_wall)
        return self._finish(results, matched)

    def _tags(self, context: TagContext, matched: list[str]) -> list[TagResult]:
        """Every matched tag through the tag steps, each step over all tags before the next; in the rule's order."""
        if not matched:
            return []
        order = {tag: i for i, tag in enumerate(matched)}
        plans = [TagPlan(tag) for tag in matched]
        results: list[TagResult] = []
        workers = max(1, min(self.settings.tag_concurrency, len(matched)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"mirror-{self.claimed.config_id}-tag") \
                as pool:
            for step in self.tag_steps:
                plans = step.schedule(sorted(plans, key=lambda plan: order[plan.tag]))
                plans = self._step(pool, step, context, plans, results)
        if plans:
            raise RuntimeError(f"the last tag step left {len(plans)} tags without a result")
        return sorted(results, key=lambda r: order.get(r.tag, 0))

    def _step(self, pool: ThreadPoolExecutor, step: TagStep, context: TagContext, plans: list[TagPlan],
              results: list[TagResult]) -> list[TagPlan]:
        """Run one step over the plans; record the results as they come; return the plans that go on."""
        following: list[TagPlan] = []
        waiting: set[Future[TagPlan | TagResult | None]] = {
            pool.submit(self._perform, step, context, plan, slot) for slot, plan in enumerate(plans)}
        while waiting:
            finished, waiting = wait(waiting, timeout=RECORD_EVERY, return_when=FIRST_COMPLETED)
            for future in finished:
                value = future.result()
                if isinstance(value, TagPlan):
                    following.append(value)
                elif value is not None:
                    results.append(value)
                    self.recorder.tag(value)
            self.recorder.flush(final=not waiting)
        return following

    def _perform(self, step: TagStep, context: TagContext, plan: TagPlan, slot: int) -> TagPlan | TagResult | None:
        """One step for one tag; nothing (None) once the run is stopped."""
        if self.group.is_stopped:
            return None
        try:
            return step.run(context, plan, slot)
        except Stopped:
            return None

    def _finish(self, results: list[TagResult], matched: list[str]) -> RunStatus:
        """SUCCESS, or FAIL with the first failed tag's reason (and its skopeo output)."""
        failed = [r for r in results if r.outcome == TagOutcome.FAILED]
        if not failed:
            return self.recorder.finish(RepoMirrorStatus.SUCCESS, None, None, results, matched=matched)
        first = failed[0]
        return self.recorder.finish(RepoMirrorStatus.FAIL, first.reason or reasons.UNKNOWN_ERROR,
                                    f"{len(failed)} of {len(results)} tags failed; {first.tag}: {first.message}",
                                    results, matched=matched, partial=len(failed) < len(results),
                                    stdout=first.stdout, stderr=first.stderr)

    def _stopped(self, results: list[TagResult]) -> RunStatus:
        why = self.group.stopped or StopReason.CANCELLED
        if why == StopReason.CANCELLED:
            return self.recorder.finish(RepoMirrorStatus.CANCEL, reasons.CANCELLED, "cancelled", results)
        return self.recorder.interrupted(why, results)
