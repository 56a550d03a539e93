"""Quay's audit entries of a sync run, written by a run listener in the transaction of what they report.

Quay's kinds and metadata: ``repo_mirror_sync_started`` once the source is
accepted; ``repo_mirror_sync_tag_success`` / ``repo_mirror_sync_tag_failed``
per copied or failed tag; one final ``repo_mirror_sync_success`` or
``repo_mirror_sync_failed`` (a cancel is a failure with verb ``cancelled``).
A run interrupted by a shutdown or a lost lease writes no final entry: it did
not end, another run takes over.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from quaymirror import audit
from quaymirror.mirror import history
from quaymirror.mirror.models import RunStatus, TagOutcome
from quaymirror.mirror.worker import reasons
from quaymirror.mirror.worker.recorder import RecordedRun, RunListener, RunOutcome, TagResult

# How much of skopeo's output an audit entry keeps (its tail).
AUDIT_OUTPUT = 4000
# Quay's kinds of a run's start and end (also the names of the repository notifications' events).
SYNC_STARTED, SYNC_SUCCESS, SYNC_FAILED = "repo_mirror_sync_started", "repo_mirror_sync_success", "repo_mirror_sync_failed"


class QuayAuditLog(RunListener):
    """Writes Quay's audit entries of a run."""

    def run_started(self, session: Session, run: RecordedRun) -> None:
        write_entry(session, run, SYNC_STARTED, verb="start", message=run.mirror.pattern_message)

    def tag_recorded(self, session: Session, run: RecordedRun, result: TagResult) -> None:
        source = f"Source 'docker://{run.mirror.reference}:{result.tag}'"
        if result.outcome == TagOutcome.COPIED and result.digest:
            write_entry(session, run, "repo_mirror_sync_tag_success", verb="finish", tag=result.tag,
                   message=f"{source} successful sync", stdout=result.stdout, stderr=result.stderr)
        elif result.outcome == TagOutcome.FAILED:
            write_entry(session, run, "repo_mirror_sync_tag_failed", verb="finish", tag=result.tag,
                   message=f"{source} failed to sync", stdout=result.stdout,
                   stderr=result.stderr or result.message, reason=result.reason)

    def run_finished(self, session: Session, run: RecordedRun, outcome: RunOutcome) -> None:
        entry = final_entry(run, outcome)
        if entry is not None:
            write_entry(session, run, entry[0], **entry[1])


def final_entry(run: RecordedRun, outcome: RunOutcome) -> tuple[str, dict[str, Any]] | None:
    """Quay's last entry of a run that ended: its kind and metadata (None: interrupted, it did not end).

    Quay's worker sends the same kind and ``message`` as the repository's notification of the run's end, so
    the notifications take them from here.
    """
    names = list(outcome.matched or [])
    pattern = run.mirror.pattern_message
    if outcome.status == RunStatus.SUCCESS:
        return SYNC_SUCCESS, {"verb": "end", "message": pattern,
                              "tags": ", ".join(names) if names else "No tags matched"}
    if outcome.status == RunStatus.CANCEL:
        return SYNC_FAILED, {"verb": "cancelled", "message": pattern, "tags": ", ".join(names),
                             "reason": reasons.CANCELLED}
    if outcome.status == RunStatus.FAIL:
        return SYNC_FAILED, {"verb": "end", **_failure(pattern, outcome, names), "stdout": outcome.stdout,
                             "stderr": outcome.stderr, "reason": outcome.reason}
    return None


def _failure(pattern: str, outcome: RunOutcome, names: list[str]) -> dict[str, str | None]:
    """The message and tags of Quay's entry for a failed run.

    A refused source names no tags and says only why; otherwise every matched tag, the failed
    ones marked, and a partial sync or (when no tag failed) the run's own failure said after the pattern.
    """
    if outcome.reason == reasons.INVALID_SOURCE:
        return {"message": outcome.message, "tags": ""}
    failed = {r.tag for r in outcome.results if r.outcome == TagOutcome.FAILED}
    suffix = ": PARTIAL SYNC" if outcome.partial else f": {outcome.message}" if not failed else ""
    return {"message": pattern + suffix, "tags": ", ".join(f"{t} (FAILED)" if t in failed else t for t in names)}


def write_entry(session: Session, run: RecordedRun, kind: str, **metadata: Any) -> None:
    """One entry, with Quay's metadata keys (each present, None when it does not apply)."""
    values: dict[str, Any] = {"verb": None, "namespace": run.mirror.namespace, "repo": run.mirror.name,
                              "message": None, "tag": None, "tags": None, "stdout": None, "stderr": None}
    values.update(metadata)
    for key in ("stdout", "stderr"):
        values[key] = history.excerpt(values[key], AUDIT_OUTPUT)
    audit.record(session, kind, repository_id=run.claimed.repository_id, **values)
