"""The three mirror events of a sync run, put in the outbox by a run listener in the transaction that records them.

Quay's worker sends ``repo_mirror_sync_started`` when a run's source is accepted and one of
``repo_mirror_sync_success`` / ``repo_mirror_sync_failed`` at its end, with the ``message`` of the audit entry
it writes at the same moment (:func:`quaymirror.mirror.worker.run_audit.final_entry`); a source refused by the
SSRF rules sends only ``failed`` (``Source registry location is not allowed``). Unlike Quay: one ``failed`` per
run (Quay sends a second from its ``finally`` on some paths), a cancelled run is ``failed`` with
``mirror.status`` ``cancelled`` (Quay cannot tell them apart), an interrupted run (shutdown, lost lease) sends
nothing (another run takes it over and reports), and organization-mirrored repositories send the same events
(Quay's send none).

The payload starts with Quay's six keys, unchanged, then says what happened (``event``, ``mirror``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from quaymirror.dates import format_iso
from quaymirror.mirror.models import MirrorSyncRun, RunStatus, TagOutcome
from quaymirror.mirror.worker.recorder import RecordedRun, RunListener, RunOutcome
from quaymirror.mirror.worker.run_audit import SYNC_STARTED, final_entry
from quaymirror.notifications import outbox
from quaymirror.settings import Settings

# At most this many failed tags are named in a payload (the counts say how many failed in all).
FAILED_TAGS_SHOWN = 20
# ``mirror.status`` of each way a run ends.
_STATUS = {RunStatus.SUCCESS: "success", RunStatus.FAIL: "failed", RunStatus.CANCEL: "cancelled"}


class MirrorNotifications(RunListener):
    """Puts a run's started and end events in the outbox of the repository's subscribed notifications."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run_started(self, session: Session, run: RecordedRun) -> None:
        payload = self._payload(session, run, SYNC_STARTED, run.mirror.pattern_message, "started", None)
        outbox.enqueue(session, run.claimed.repository_id, SYNC_STARTED, payload)

    def run_finished(self, session: Session, run: RecordedRun, outcome: RunOutcome) -> None:
        entry = final_entry(run, outcome)
        if entry is None:
            return
        event, metadata = entry
        payload = self._payload(session, run, event, metadata["message"] or "", _STATUS[outcome.status], outcome)
        outbox.enqueue(session, run.claimed.repository_id, event, payload)

    def _payload(self, session: Session, run: RecordedRun, event: str, message: str, state: str,
                 outcome: RunOutcome | None) -> dict[str, Any]:
        mirror = run.mirror
        payload = outbox.quay_event_data(self.settings, mirror.namespace, mirror.name, message)
        row = session.get(MirrorSyncRun, run.claimed.run_id, populate_existing=True)
        started = row.started if row else None
        finished = row.finished if row and outcome else None
        failed = [r for r in (outcome.results if outcome else ()) if r.outcome == TagOutcome.FAILED]
        payload["event"] = event
        payload["mirror"] = {
            "external_reference": mirror.reference,
            "status": state,
            "reason": outcome.reason if outcome else None,
            "run_id": run.claimed.run_id,
            "trigger": str(run.claimed.trigger),
            "started": format_iso(started),
            "finished": format_iso(finished),
            "duration_seconds": (round((finished - started).total_seconds(), 3)
                                 if started and finished else None),
            "tags": {
                "matched": row.tags_matched if row else None,
                "copied": row.tags_copied if row else 0,
                "skipped": row.tags_skipped if row else 0,
                "deleted": row.tags_deleted if row else 0,
                "failed": row.tags_failed if row else 0,
            },
            "failed_tags": [{"tag": r.tag, "reason": r.reason, "message": r.message}
                            for r in failed[:FAILED_TAGS_SHOWN]],
        }
        return payload
