"""When things are tried again: a failed mirror, a failed copy, a request, a lease, a lost LISTEN connection.

"When does a failed mirror try again?", answered here and nowhere else:

1. A run that ends FAIL uses up one of the mirror's ``sync_retries_remaining``
   (:data:`MAX_SYNC_RETRIES` per point of its schedule, as in Quay). While some
   are left, the mirror is due again at once; when none are left (or the run
   succeeded) the count is reset and the mirror waits for the next point of its
   schedule (:func:`next_start`). :func:`after_run` is that rule;
   ``quaymirror.mirror.status.release`` writes what it says.
2. "At once" means after :class:`FailureCooldown` in the worker that ran it
   (``QUAYMIRROR_RETRY_SECONDS``): otherwise the wake-up that the run's own end
   causes would burn every retry within a second. A sync-now is never held back.
3. A sync-now, or a claim given back at shutdown, always has at least
   :data:`ON_DEMAND_RETRIES` try; a cancel leaves none, so only a user's
   sync-now starts the mirror again.
4. Inside a run, a copy that fails for a reason that may be transient
   (:data:`RETRYABLE`) is tried again up to :data:`COPY_ATTEMPTS` times, after
   a growing pause (:func:`copy_pause`): distribution answers 500 now and then
   under concurrent pushes of shared layers, until the first push of the layer
   is complete.
5. An HTTP request on a kept-alive connection that the server closed meanwhile
   is sent once more on a new connection (:data:`REUSED_CONNECTION_ATTEMPTS`);
   a fresh connection that fails is a real error.

And how long a claim lives and when it is renewed (:class:`LeasePolicy`), and
how a lost LISTEN connection is retried (:class:`Backoff`). When a worker stops
counting as alive is the heartbeat's own rule (``quaymirror.mirror.heartbeat``).

Pure: no database, no I/O; the mirror's models import the retry count from here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from quaymirror.mirror.worker import reasons

MAX_SYNC_RETRIES = 3
ON_DEMAND_RETRIES = 1
CANCELLED_RETRIES = 0

COPY_ATTEMPTS = 3
COPY_PAUSE_SECONDS = 0.25
RETRYABLE = frozenset({reasons.UNKNOWN_ERROR, reasons.CONNECTION_ERROR})

REUSED_CONNECTION_ATTEMPTS = 2

# How often at most the keeper looks at the running mirrors' rows (cancel, lost lease, renewal).
KEEPER_TICK_SECONDS = 0.5


@dataclass(frozen=True)
class NextTry:
    """What a mirror's row says after a run: the retries left, and whether it waits for its schedule."""

    retries_remaining: int
    reschedule: bool


def after_run(*, failed: bool, retries_remaining: int) -> NextTry:
    """Rule 1: a failure uses up a retry; success, or the last retry used up, waits for the next start."""
    if failed and retries_remaining - 1 >= 1:
        return NextTry(retries_remaining - 1, reschedule=False)
    return NextTry(MAX_SYNC_RETRIES, reschedule=True)


def next_start(start: datetime | None, interval: int, now: datetime) -> datetime | None:
    """The first point of the grid ``start + k*interval`` strictly after now (Quay's rule).

    Unlike Quay, a zero interval means "no schedule" (only sync-now runs it), a
    missing start counts from now (second precision) instead of crashing the
    release, and the result is exactly on the grid (Quay drops the elapsed
    microseconds, so its dates drift off the grid and gain microseconds).
    """
    if interval <= 0:
        return None
    base = start or now.replace(microsecond=0)
    if base > now:
        return base
    steps = int((now - base).total_seconds() // interval) + 1
    return base + timedelta(seconds=steps * interval)


class FailureCooldown:
    """Rule 2: a mirror whose run failed in this worker is not claimed again by it for ``seconds``.

    In memory, per worker: another worker may take the mirror sooner, which is
    fine (the wake-up storm this prevents is a single worker's own).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._until: dict[int, float] = {}
        self._lock = threading.Lock()

    def failed(self, config_id: int) -> None:
        if self.seconds > 0:
            with self._lock:
                self._until[config_id] = time.monotonic() + self.seconds

    def holds(self, config_id: int, *, sync_now: bool) -> bool:
        """Whether the mirror must wait still; a sync-now never does."""
        if sync_now:
            return False
        with self._lock:
            until = self._until.get(config_id)
            if until is None:
                return False
            if time.monotonic() >= until:
                del self._until[config_id]
                return False
            return True


def copy_again(attempt: int, reason: str | None) -> bool:
    """Rule 4: whether copy ``attempt`` (from 1), which failed with ``reason``, is followed by another."""
    return reason in RETRYABLE and attempt < COPY_ATTEMPTS


def copy_pause(attempt: int) -> float:
    """The pause after failed copy ``attempt`` (from 1) before the next one."""
    return COPY_PAUSE_SECONDS * attempt


@dataclass(frozen=True)
class LeasePolicy:
    """A claim lives ``seconds`` (``QUAYMIRROR_LEASE_SECONDS``) unless renewed; it is renewed every third
    of that, so two renewals can fail before another worker may take the mirror over."""

    seconds: float

    @property
    def renew_after(self) -> float:
        return self.seconds / 3

    @property
    def tick(self) -> float:
        """How often the keeper checks the running mirrors: at least four times per lease."""
        return min(KEEPER_TICK_SECONDS, self.seconds / 4)


@dataclass
class Backoff:
    """The pause before reconnecting a lost LISTEN connection: doubling from ``start`` up to ``cap``,
    back to ``start`` once connected."""

    start: float = 0.5
    cap: float = 10.0
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        self._next = self.start

    def reset(self) -> None:
        self._next = self.start

    def pause(self) -> float:
        """The pause to wait now; the next one is twice as long (up to the cap)."""
        current = self._next
        self._next = min(current * 2, self.cap)
        return current
