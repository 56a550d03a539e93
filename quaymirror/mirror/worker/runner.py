"""The worker: an APScheduler poll, immediate wake-ups, claims, leases, cancel and shutdown.

* A **pass** (APScheduler job every ``QUAYMIRROR_WORKER_POLL_SECONDS``,
  ``max_instances=1``) reads the due mirrors in one bounded query and claims
  as many as there are free slots (``QUAYMIRROR_WORKER_CONCURRENCY``) in one
  transaction; each claimed mirror runs in a thread of its own pool.
* **Wake-ups** run a pass at once: sync-now in this process
  (``events.subscribe``), sync-now from any process on PostgreSQL (``LISTEN``),
  and a slot that frees up. A wake-up during a pass makes the pass run again.
* A **keeper** thread looks at the running mirrors' rows every half second:
  a CANCEL (or a lease that is no longer ours) kills that run's skopeo
  processes at once; the lease is renewed every third of its length
  (``policy.LeasePolicy``). It also
  beats the worker's heartbeat row every ``QUAYMIRROR_HEARTBEAT_SECONDS``
  (``quaymirror.mirror.heartbeat``), which the mirror health counts.
* **Discovery** of organization mirrors (``quaymirror.orgmirror.worker``, when
  ``QUAYMIRROR_FEATURE_ORG_MIRROR`` is on): every scheduled pass starts one in a thread
  of its own unless one is still going, so a slow upstream never delays the
  repository mirrors' claims; a discovery that queued repositories wakes the
  pass, which claims them like any mirror (with the organization mirror's
  source and audit listener, ``quaymirror.orgmirror.repo_sync``).
* **Shutdown** (SIGTERM of ``quaymirror worker``, or the API process exiting)
  kills every skopeo process and gives the claims back as SYNC_NOW with no
  lease, announced with NOTIFY, so another worker takes them at once; then it
  deletes its heartbeat row, so it stops counting at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.schedulers.background import BackgroundScheduler

from quaymirror import metrics
from quaymirror.db import Database, utcnow
from quaymirror.mirror import events, heartbeat, status
from quaymirror.mirror.models import RepoMirrorStatus, RunStatus
from quaymirror.mirror.worker import claims
from quaymirror.mirror.worker.policy import FailureCooldown, LeasePolicy
from quaymirror.mirror.worker.run import MirrorRun
from quaymirror.mirror.worker.skopeo import ProcessGroup, RunFiles, StopReason
from quaymirror.orgmirror import repo_sync
from quaymirror.orgmirror import worker as org_worker
from quaymirror.settings import Settings

if TYPE_CHECKING:  # the worker never imports the web layer; only the embedded start names its app
    from flask import Flask

log = logging.getLogger(__name__)

JOB_ID = "quaymirror-mirror-pass"
MAX_BATCH = 100
# A pass reads and claims in rounds while slots stay free and candidates keep coming, at most this often.
MAX_ROUNDS = 5
SHUTDOWN_TIMEOUT = 10.0


@dataclass
class ActiveRun:
    """A mirror running in this worker: its claim, its processes, its lease as last renewed."""

    claimed: claims.Claimed
    group: ProcessGroup
    lease: status.Lease
    renewed: float = field(default_factory=time.monotonic)
    # Set by the run just before it releases its claim: from then on a lease that is gone was given up, not lost.
    finishing: bool = False

    def mark_finishing(self) -> None:
        self.finishing = True


class Worker:
    """One worker: runs up to ``worker_concurrency`` mirrors at once, coordinating only through the database."""

    def __init__(self, settings: Settings, database: Database | None = None, *, owner: str | None = None,
                 listen: bool = True, subscribe: bool = True) -> None:
        self.settings = settings
        self.database = database or Database(settings.database_url)
        self._own_database = database is None
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._listen = listen and not settings.is_sqlite
        self._subscribe = subscribe
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._runs: dict[int, ActiveRun] = {}
        self._claiming = 0
        self._executor = ThreadPoolExecutor(max_workers=settings.worker_concurrency, thread_name_prefix="mirror")
        self._discoverer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="org-discovery")
        self._discovering = False
        self._stopping = threading.Event()
        self._wake_pending = False
        self._in_pass = False
        self._cooldown = FailureCooldown(settings.retry_seconds)
        self._lease = LeasePolicy(settings.lease_seconds)
        self._scheduler: BackgroundScheduler | None = None
        self._listener: events.PgListener | None = None
        self._keeper: threading.Thread | None = None
        self._started: datetime | None = None  # naive UTC, as the heartbeat row stores it
        self._registered = False  # the heartbeat row was written once: a later insert means it had been deleted
        self._woken: dict[int, float] = {}  # config id -> when its sync-now wake-up arrived (pick-up metric)

    # --------------------------------------------------------- lifecycle
    def start(self, *, poll: bool = True) -> Worker:
        """Start the keeper, the wake-up sources and (unless ``poll`` is false, for tests) the scheduler."""
        swept = RunFiles.sweep()
        if swept:
            log.info("removed %d run directories left by killed workers", swept)
        if poll:
            # Quiet: "skipped: maximum number of running instances reached" is expected after a wake-up,
            # and every poll would log "Running job ..." at INFO.
            logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
            logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
            scheduler = BackgroundScheduler(timezone=UTC, job_defaults={
                "coalesce": True, "max_instances": 1, "misfire_grace_time": None,
            })
            scheduler.add_job(self._job, "interval", seconds=self.settings.worker_poll_seconds, id=JOB_ID,
                              next_run_time=datetime.now(UTC))
            scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES)
            scheduler.start()
            self._scheduler = scheduler
        # Counted from the moment start() returns; a database that is down now is retried by the keeper.
        self._started = utcnow()
        self._beat()
        self._keeper = threading.Thread(target=self._keep, name="quaymirror-keeper", daemon=True)
        self._keeper.start()
        if self._subscribe:
            events.subscribe(self._notified)
        if self._listen:
            self._listener = events.PgListener(self.settings.database_url, self._notified).start()
        log.info("mirror worker %s started: poll every %ss, %d mirrors x %d tags at once, lease %ss, storage %s",
                 self.owner, self.settings.worker_poll_seconds, self.settings.worker_concurrency,
                 self.settings.tag_concurrency, self.settings.lease_seconds, self.settings.storage)
        metrics.WORKERS_ACTIVE.set(1)
        return self

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop: no new passes, skopeo processes killed, claims given back (SYNC_NOW), threads joined."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        metrics.WORKERS_ACTIVE.set(0)
        if self._subscribe:
            events.unsubscribe(self._notified)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._listener is not None:
            self._listener.stop()
        with self._lock:
            active = list(self._runs.values())
        for run in active:
            run.group.stop(StopReason.SHUTDOWN)
        if active:
            log.info("mirror worker %s: stopping %d running mirror(s)", self.owner, len(active))
        if not self.wait_idle(timeout):
            log.warning("mirror worker %s: %d run(s) still busy after %.0fs", self.owner, len(self._runs), timeout)
        if self._keeper is not None:
            self._keeper.join(timeout=2)  # before the delete: a beat after it would insert the row again
            try:
                with self.database.transaction() as session:
                    heartbeat.remove(session, self.owner)
            except Exception:  # the database is down: the row goes stale on its own
                log.warning("mirror worker %s: could not remove its heartbeat row", self.owner, exc_info=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._discoverer.shutdown(wait=True, cancel_futures=True)
        if self._own_database:
            self.database.dispose()
        log.info("mirror worker %s stopped", self.owner)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no mirror runs in this worker (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._runs or self._claiming:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # ----------------------------------------------------------- wake-ups
    def _notified(self, config_id: int | None) -> None:
        if config_id is not None:
            with self._lock:
                if len(self._woken) < 10_000:
                    self._woken.setdefault(config_id, time.monotonic())
        self.wake()

    def wake(self) -> None:
        """Run a pass now (or right after the current one)."""
        if self._stopping.is_set():
            return
        with self._lock:
            self._wake_pending = True
            if self._in_pass:
                return
        self._reschedule(0)

    def _reschedule(self, delay: float) -> None:
        scheduler = self._scheduler
        if scheduler is None or self._stopping.is_set():
            return
        try:
            scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC) + timedelta(seconds=delay))
        except Exception:  # the scheduler is shutting down
            log.debug("could not reschedule the mirror pass", exc_info=True)

    def _on_skipped(self, _event: object) -> None:
        # A wake-up hit the end of a running pass: try again a moment later.
        with self._lock:
            pending = self._wake_pending
        if pending:
            self._reschedule(0.05)

    def _job(self) -> None:
        self._start_discovery()
        for _ in range(1000):
            with self._lock:
                self._in_pass = True
                self._wake_pending = False
            try:
                self.run_pass()
            except Exception:  # the database is down, ...: the next poll tries again
                log.exception("mirror pass failed")
            with self._lock:
                if not self._wake_pending or self._stopping.is_set():
                    self._in_pass = False
                    return
        with self._lock:
            self._in_pass = False

    # ------------------------------------------------------------- a pass
    def run_pass(self) -> int:
        """Claim due mirrors for the free slots and start them; return how many were claimed."""
        claimed = 0
        left = 0  # due mirrors seen and not claimed (Quay's quay_repository_rows_unmirrored)
        for _ in range(MAX_ROUNDS):
            free = self._free_slots()
            if free <= 0 or self._stopping.is_set():
                break
            limit = min(max(free * 4, 8), MAX_BATCH)
            with self.database.transaction() as session:
                candidates = claims.due(session, utcnow(), limit)
            got = self._claim_and_launch(candidates, free)
            claimed += got
            left = len(candidates) - got
            if len(candidates) < limit or got >= free:
                break
        metrics.ROWS_UNMIRRORED.set(left)
        if self._scheduler is not None and self._free_slots() > 0:
            self._sleep_until_next_due()
        return claimed

    def _start_discovery(self) -> None:
        """The organization mirrors' discovery, in its own thread, one at a time in this worker."""
        if not self.settings.feature_org_mirror or self._stopping.is_set():
            return
        with self._lock:
            if self._discovering:
                return
            self._discovering = True
        try:
            self._discoverer.submit(self._discover)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self._discovering = False

    def _discover(self) -> None:
        try:
            org_worker.discover_due(self.database, self.settings)
        except Exception:  # the database is down, ...: the next pass tries again
            log.exception("organization mirror discovery pass failed")
        finally:
            with self._lock:
                self._discovering = False

    def _claim_and_launch(self, candidates: list[claims.Candidate], free: int) -> int:
        """Claim up to ``free`` of the candidates and start their runs; how many were started.

        As many claims as free slots in one transaction (one commit); again for the slots left by
        candidates another worker (or a user) changed meanwhile.
        """
        pending = [c for c in candidates if c.config_id not in self._runs and not self._cooldown.holds(
            c.config_id, sync_now=c.sync_status == RepoMirrorStatus.SYNC_NOW)]
        launched = 0
        while pending and launched < free and not self._stopping.is_set():
            batch, pending = pending[:free - launched], pending[free - launched:]
            with self._lock:
                self._claiming += 1  # wait_idle also waits for claims not launched yet
            try:
                for got in claims.claim_many(self.database, batch, self.owner, self.settings.lease_seconds):
                    self._launch(got)
                    launched += 1
            finally:
                with self._idle:
                    self._claiming -= 1
                    self._idle.notify_all()
        return launched

    def _sleep_until_next_due(self) -> None:
        """Bring the next pass forward to when a schedule or a lease falls due, if before the next poll."""
        with self.database.transaction() as session:
            when = claims.next_due(session, utcnow())
        if when is None:
            return
        delay = max(0.0, (when - utcnow()).total_seconds()) + 0.05
        job = self._scheduler.get_job(JOB_ID) if self._scheduler is not None else None
        next_run = getattr(job, "next_run_time", None)
        if next_run is None or datetime.now(UTC) + timedelta(seconds=delay) < next_run:
            self._reschedule(delay)

    def _free_slots(self) -> int:
        with self._lock:
            return self.settings.worker_concurrency - len(self._runs)

    def _launch(self, claimed: claims.Claimed) -> None:
        run = ActiveRun(claimed, ProcessGroup(), claimed.lease)
        with self._lock:
            self._runs[claimed.config_id] = run
            woken = self._woken.pop(claimed.config_id, None)
        if woken is not None:
            metrics.PICKUP.observe(time.monotonic() - woken)
        try:
            self._executor.submit(self._execute, run)
        except RuntimeError:  # the executor was shut down between the claim and now
            self._execute(run)

    def _execute(self, run: ActiveRun) -> None:
        try:
            if self._stopping.is_set():
                run.group.stop(StopReason.SHUTDOWN)
            claimed = run.claimed
            parts = {} if claimed.org_repository_id is None else repo_sync.run_parts(
                self.database, self.settings, claimed.config_id, claimed.org_repository_id)
            began = time.monotonic()
            outcome = MirrorRun(self.settings, self.database, claimed, run.group, finishing=run.mark_finishing,
                                **parts).execute()
            if outcome == RunStatus.FAIL:
                self._cooldown.failed(claimed.config_id)
            if claimed.org_repository_id is not None and outcome != RunStatus.INTERRUPTED:
                metrics.ORG_REPO_SYNCS.labels(outcome.lower()).inc()
                metrics.ORG_REPO_SYNC_SECONDS.observe(time.monotonic() - began)
        except Exception:
            log.exception("mirror run %d crashed", run.claimed.run_id)
        finally:
            with self._idle:
                self._runs.pop(run.claimed.config_id, None)
                self._idle.notify_all()
            self.wake()  # a slot is free

    # ---------------------------------------------------- leases, cancel and heartbeat
    def _keep(self) -> None:
        """Lease checks every tick and heartbeats every interval, each woken at its own time."""
        tick = self._lease.tick
        every = self.settings.heartbeat_seconds
        next_check = time.monotonic() + tick
        next_beat = time.monotonic() + every
        while not self._stopping.wait(max(0.0, min(next_check, next_beat) - time.monotonic())):
            now = time.monotonic()
            if now >= next_beat:
                self._beat()
                next_beat = time.monotonic() + every
            if now >= next_check:
                try:
                    self._keep_once()
                except Exception:  # a database hiccup: keep watching
                    log.warning("mirror worker %s: lease check failed", self.owner, exc_info=True)
                next_check = time.monotonic() + tick

    def _beat(self) -> None:
        """Renew the heartbeat row; insert it when it is missing (first beat, or deleted as stale by a peer)."""
        if self._stopping.is_set():
            return
        interval = self.settings.heartbeat_seconds
        try:
            with self.database.transaction() as session:
                renewed = heartbeat.renew(session, self.owner, interval)
                if not renewed:
                    heartbeat.register(session, self.owner, self._started or utcnow(), interval)
        except Exception:  # the database is down: the next beat tries again (insert included)
            log.warning("mirror worker %s: heartbeat failed", self.owner, exc_info=True)
            return
        if not renewed and self._registered:
            log.warning("mirror worker %s: its heartbeat row was gone (stale after a pause); inserted again",
                        self.owner)
        self._registered = True

    def _keep_once(self) -> None:
        with self._lock:
            active = [r for r in self._runs.values() if not r.group.is_stopped]
        if not active:
            return
        with self.database.transaction() as session:
            rows = status.leases(session, [r.claimed.config_id for r in active])
        for run in active:
            if run.finishing:  # it may have released its claim since `active` was taken: nothing to keep
                continue
            row = rows.get(run.claimed.config_id)
            if row is not None and row.held_by(run.lease) and row.cancelled:
                log.info("mirror config %d: cancelled; stopping its skopeo processes", run.claimed.config_id)
                run.group.stop(StopReason.CANCELLED)
            elif row is None or not row.held_by(run.lease):
                log.warning("mirror config %d: lease lost; stopping the run", run.claimed.config_id)
                run.group.stop(StopReason.LEASE_LOST)
            elif time.monotonic() - run.renewed >= self._lease.renew_after:
                self._renew(run)

    def _renew(self, run: ActiveRun) -> None:
        with self.database.transaction() as session:
            renewed = status.renew(session, run.lease, self.settings.lease_seconds)
        if renewed is not None:  # else cancelled or lost meanwhile: the next tick tells which
            run.lease = renewed
            run.renewed = time.monotonic()


# ------------------------------------------------------------- entry points
_in_process: list[Worker] = []


def start_in_process(app: Flask, settings: Settings) -> Worker:
    """The embedded worker of ``quaymirror serve``: shares the app's database; sync-now wakes it directly.

    Stopped by :func:`shutdown_in_process` (gunicorn's ``worker_exit`` hook), or at interpreter exit.
    """
    worker = Worker(settings, app.extensions.get("quaymirror.db"))
    worker.start()
    _in_process.append(worker)
    atexit.register(worker.shutdown)
    return worker


def shutdown_in_process() -> None:
    """Stop every embedded worker of this process: skopeo killed, claims given back (SYNC_NOW)."""
    while _in_process:
        _in_process.pop().shutdown()


def run_forever(settings: Settings) -> None:
    """``quaymirror worker``: run until SIGTERM/SIGINT, then give the claims back and exit."""
    from quaymirror import db

    db.ensure_embedded_schema(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    metrics.serve(settings.metrics_port, settings.metrics_host)
    worker = Worker(settings).start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        worker.shutdown()
