"""The recorder's listeners: each hook runs inside the transaction that writes what it reports.

What a future notification outbox needs: a row written by ``run_finished`` commits together with the
run's outcome (the claim released, the history row finished), and is never left behind by an outcome
that was rolled back. The runs here end before any registry is asked (the credentials cannot be
decrypted), so they need neither skopeo nor a registry; the SSRF check gets a public address for the
upstream's name from the test's own resolver, so nothing is resolved or reached.
"""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from quaymirror import audit
from quaymirror.mirror.models import MirrorSyncRun, RepoMirrorConfig, RepoMirrorStatus, RunStatus
from quaymirror.mirror.worker.recorder import RecordedRun, RunListener, RunOutcome
from quaymirror.mirror.worker.run import MirrorRun
from quaymirror.mirror.worker.skopeo import ProcessGroup
from quaymirror.security import ssrf
from tests.common.mirrors import claim_due

PUBLIC = {"quay.io": ["3.3.3.3"]}  # a public address: the SSRF re-check passes, and it is never connected to


class Outbox(RunListener):
    """A listener as a notification outbox would be: one row per event, in the hook's own session."""

    def __init__(self) -> None:
        self.seen_in_transaction: list[tuple[str, bool, int, str | None]] = []

    def run_started(self, session: Session, run: RecordedRun) -> None:
        audit.record(session, "test_outbox_started", repository_id=run.claimed.repository_id)

    def run_finished(self, session: Session, run: RecordedRun, outcome: RunOutcome) -> None:
        # What this transaction has written of the outcome so far, as the hook sees it.
        history_row = session.get(MirrorSyncRun, run.claimed.run_id, populate_existing=True)
        config = session.get(RepoMirrorConfig, run.claimed.config_id, populate_existing=True)
        self.seen_in_transaction.append((history_row.status, history_row.finished is not None,
                                         config.sync_status, config.lease_token))
        audit.record(session, "test_outbox_finished", repository_id=run.claimed.repository_id,
                     status=outcome.status, reason=outcome.reason)


class Broken(RunListener):
    """A listener whose write fails as the run's outcome is written."""

    def run_finished(self, session: Session, run: RecordedRun, outcome: RunOutcome) -> None:
        raise RuntimeError("the outbox table is gone")


def _undecryptable(mirrors) -> int:
    config_id = mirrors.create("org/keyed", "quay.io/up/x", ["*"], username="u", password="p")
    mirrors.update(config_id, external_registry_password="not-a-fernet-token")
    return config_id


def _kinds(database) -> list[str]:
    with database.transaction() as session:
        return [e.kind for e in audit.entries(session)
                if e.kind.startswith(("repo_mirror_sync", "test_outbox"))]


def test_a_listener_writes_in_the_transaction_of_the_outcome(wsettings, database, mirrors):
    config_id = _undecryptable(mirrors)
    claimed = claim_due(database)
    outbox = Outbox()
    run = MirrorRun(wsettings.with_overrides(skopeo_path="/nonexistent/skopeo"), database, claimed,
                    ProcessGroup(), listeners=[outbox])
    with ssrf.use_resolver(PUBLIC):
        assert run.execute() == RunStatus.FAIL
    # Inside the hook, the history row was already finished and the claim already released.
    assert outbox.seen_in_transaction == [(RunStatus.FAIL, True, int(RepoMirrorStatus.FAIL), None)]
    assert _kinds(database) == ["test_outbox_started", "test_outbox_finished"]  # Quay's audit: not asked for
    with database.transaction() as session:
        [finished] = audit.entries(session, kind="test_outbox_finished")
    assert (finished.metadata_["status"], finished.metadata_["reason"]) == ("FAIL", "unknown_error")
    assert mirrors.runs(config_id)[-1].status == RunStatus.FAIL


def test_a_listener_that_fails_rolls_the_outcome_back_and_its_rows_with_it(wsettings, database, mirrors):
    """Nothing of the end is written: not the outbox's row, not the release, not the history's end."""
    config_id = _undecryptable(mirrors)
    claimed = claim_due(database)
    run = MirrorRun(wsettings.with_overrides(skopeo_path="/nonexistent/skopeo"), database, claimed,
                    ProcessGroup(), listeners=[Outbox(), Broken()])
    with ssrf.use_resolver(PUBLIC), pytest.raises(RuntimeError, match="the outbox table is gone"):
        run.execute()
    assert _kinds(database) == ["test_outbox_started"]  # committed with the run's start, not with its end
    [history_row] = mirrors.runs(config_id)
    assert (history_row.status, history_row.finished) == (RunStatus.SYNCING, None)
    config = mirrors.config(config_id)
    # Still claimed: the lease runs out and another run takes the mirror over, as after a crash.
    assert (config.sync_status, config.lease_token) == (int(RepoMirrorStatus.SYNCING), claimed.lease.token)


def test_quays_audit_entries_are_the_default_listener(wsettings, database, mirrors):
    _undecryptable(mirrors)
    run = MirrorRun(wsettings.with_overrides(skopeo_path="/nonexistent/skopeo"), database, claim_due(database),
                    ProcessGroup())
    with ssrf.use_resolver(PUBLIC):
        assert run.execute() == RunStatus.FAIL
    assert _kinds(database) == ["repo_mirror_sync_started", "repo_mirror_sync_failed"]
