"""The retry and lease policy on its own: the numbers the status module, the runner, the copy step, the
registry client and the LISTEN connection take from it; and the schedule grid."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from quaymirror.mirror.worker import policy, reasons
from quaymirror.mirror.worker.policy import (
    Backoff,
    FailureCooldown,
    LeasePolicy,
    NextTry,
    after_run,
    next_start,
)


def test_failures_use_up_the_retries_then_the_mirror_waits_for_its_schedule():
    assert policy.MAX_SYNC_RETRIES == 3  # Quay's
    assert after_run(failed=True, retries_remaining=3) == NextTry(2, reschedule=False)  # due again at once
    assert after_run(failed=True, retries_remaining=2) == NextTry(1, reschedule=False)
    assert after_run(failed=True, retries_remaining=1) == NextTry(3, reschedule=True)  # used up: next start
    assert after_run(failed=True, retries_remaining=0) == NextTry(3, reschedule=True)  # a sync-now's only try
    assert after_run(failed=False, retries_remaining=1) == NextTry(3, reschedule=True)


def test_a_failed_mirror_cools_down_in_its_worker_but_a_sync_now_does_not():
    cooldown = FailureCooldown(0.2)
    assert not cooldown.holds(7, sync_now=False)
    cooldown.failed(7)
    assert cooldown.holds(7, sync_now=False)
    assert not cooldown.holds(7, sync_now=True)
    assert not cooldown.holds(8, sync_now=False)
    time.sleep(0.25)
    assert not cooldown.holds(7, sync_now=False)
    off = FailureCooldown(0)  # QUAYMIRROR_RETRY_SECONDS=0: no waiting at all
    off.failed(7)
    assert not off.holds(7, sync_now=False)


def test_copies_are_tried_again_only_for_reasons_that_may_pass():
    assert [policy.copy_again(attempt, reasons.CONNECTION_ERROR) for attempt in (1, 2, 3)] == [True, True, False]
    assert policy.copy_again(1, reasons.UNKNOWN_ERROR)  # a registry's 500 under concurrent pushes
    for reason in (None, reasons.AUTH_FAILED, reasons.NOT_FOUND, reasons.TLS_ERROR, reasons.TIMEOUT,
                   reasons.CANCELLED, reasons.INVALID_SOURCE):
        assert not policy.copy_again(1, reason), reason
    assert [policy.copy_pause(attempt) for attempt in (1, 2)] == [0.25, 0.5]


def test_a_lease_is_renewed_every_third_and_checked_at_least_four_times_per_lease():
    assert (LeasePolicy(600).renew_after, LeasePolicy(600).tick) == (200, 0.5)
    assert (LeasePolicy(2).renew_after, LeasePolicy(2).tick) == (2 / 3, 0.5)
    assert (LeasePolicy(1.2).renew_after, LeasePolicy(1.2).tick) == (1.2 / 3, 0.3)  # short leases, as in tests


def test_the_listen_back_off_doubles_up_to_its_cap_and_starts_over_once_connected():
    backoff = Backoff()
    assert [backoff.pause() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.pause() == 0.5


def test_next_start_grid():
    start = datetime(2026, 1, 1, 12, 0, 0)
    now = start + timedelta(seconds=125, microseconds=400)
    assert next_start(start, 60, now) == start + timedelta(seconds=180)
    assert next_start(start, 60, start + timedelta(seconds=120)) == start + timedelta(seconds=180)  # strictly after
    assert next_start(start + timedelta(hours=1), 60, now) == start + timedelta(hours=1)  # future start kept
    assert next_start(start, 0, now) is None
    assert next_start(None, 60, now) == now.replace(microsecond=0) + timedelta(seconds=60)
