"""Prometheus metrics of the mirror worker: Quay's names and labels, plus ours.

Quay's (same names, types and labels):

* ``quay_repository_rows_unmirrored`` (gauge): due mirrors left unclaimed after a worker pass;
* ``quay_repository_mirror_pending_tags{namespace,repository}`` (gauge): tags left to check in the run;
* ``quay_repository_mirror_last_sync_status{namespace,repository,last_error_reason}`` (gauge): 2 running,
  1 success, 0 fail/cancel (on failure both the ``""`` and the ``<reason>`` series are 0);
* ``quay_repository_mirror_sync_complete{namespace,repository}`` (gauge): 1 after a SUCCESS with no failed tag;
* ``quay_repository_mirror_sync_failures_total{namespace,reason}`` (counter);
* ``quay_repository_mirror_last_sync_timestamp{namespace,repository}`` (gauge): Unix time the run started;
* ``quay_repository_mirror_sync_duration_seconds{namespace}`` (histogram; Quay's buckets plus shorter ones);
* ``quay_repository_mirror_workers_active`` (gauge): 1 while a worker runs in this process.

Quay's organization mirror's (``quay_org_mirror_*``): ``configs_pending_discovery`` (gauge: due configurations
a pass read), ``discovery_total{status}`` (counter: success / fail / cancel), ``discovery_duration_seconds``
(histogram), ``repos_discovered`` (gauge: what the last discovery kept), ``repos_created_total`` (counter: new
discovered rows, as Quay counts them), ``repo_sync_total{status}`` and ``repo_sync_duration_seconds`` (an
organization-mirrored repository's runs, which also count in the repository mirror's metrics).

Ours: ``quaymirror_mirror_pickup_seconds`` (wake-up to claim), ``quaymirror_mirror_tags_total{namespace,
outcome}`` (a ``TagOutcome``: copied / skipped / failed / deleted / kept / cancelled), ``quaymirror_mirror_bytes_copied_total{namespace}``,
``quaymirror_read_cache_lookups_total{outcome}`` (hit / miss: GET /mirror's read cache).

Everything lives in the default registry: ``GET /metrics`` of the API (the embedded worker's
figures) and the ``quaymirror worker`` process's own endpoint (``QUAYMIRROR_METRICS_PORT``).
"""

from __future__ import annotations

import logging

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from quaymirror.mirror.models import RunStatus
from quaymirror.mirror.worker import reasons

log = logging.getLogger(__name__)

# Quay's names for our failure reasons where they differ (Quay reports a cancel as an unknown error).
QUAY_REASONS = {reasons.INVALID_SOURCE: "invalid_source_registry", reasons.TIMEOUT: "network_timeout",
                reasons.CANCELLED: "unknown_error"}

ROWS_UNMIRRORED = Gauge("quay_repository_rows_unmirrored", "Due mirrors left unclaimed after a worker pass")
PENDING_TAGS = Gauge("quay_repository_mirror_pending_tags", "Tags left to mirror in the current run",
                     ["namespace", "repository"])
LAST_SYNC_STATUS = Gauge("quay_repository_mirror_last_sync_status",
                         "Last sync status: 2 running, 1 success, 0 failed or cancelled",
                         ["namespace", "repository", "last_error_reason"])
SYNC_COMPLETE = Gauge("quay_repository_mirror_sync_complete", "1 when the last sync succeeded with every tag",
                      ["namespace", "repository"])
SYNC_FAILURES = Counter("quay_repository_mirror_sync_failures", "Failed sync runs", ["namespace", "reason"])
LAST_SYNC_TIMESTAMP = Gauge("quay_repository_mirror_last_sync_timestamp", "Unix time the last sync started",
                            ["namespace", "repository"])
SYNC_DURATION = Histogram("quay_repository_mirror_sync_duration_seconds", "Duration of sync runs", ["namespace"],
                          buckets=(1, 5, 15, 60, 300, 900, 3600, float("inf")))
WORKERS_ACTIVE = Gauge("quay_repository_mirror_workers_active", "1 while a mirror worker runs in this process")

ORG_CONFIGS_PENDING = Gauge("quay_org_mirror_configs_pending_discovery",
                            "Organization mirrors due for a discovery at the last pass")
ORG_DISCOVERIES = Counter("quay_org_mirror_discovery", "Organization mirror discoveries", ["status"])
ORG_DISCOVERY_SECONDS = Histogram("quay_org_mirror_discovery_duration_seconds", "Duration of discoveries",
                                  buckets=(0.1, 0.5, 1, 5, 15, 60, 300, float("inf")))
ORG_REPOS_DISCOVERED = Gauge("quay_org_mirror_repos_discovered", "Repositories the last discovery kept")
ORG_REPOS_CREATED = Counter("quay_org_mirror_repos_created", "Repositories discovered for the first time")
ORG_REPO_SYNCS = Counter("quay_org_mirror_repo_sync", "Sync runs of organization-mirrored repositories", ["status"])
ORG_REPO_SYNC_SECONDS = Histogram("quay_org_mirror_repo_sync_duration_seconds",
                                  "Duration of organization-mirrored repositories' sync runs",
                                  buckets=(1, 5, 15, 60, 300, 900, 3600, float("inf")))

PICKUP = Histogram("quaymirror_mirror_pickup_seconds", "From a sync-now wake-up to the claim of the mirror",
                   buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf")))
TAGS = Counter("quaymirror_mirror_tags", "Tag results of sync runs", ["namespace", "outcome"])
BYTES_COPIED = Counter("quaymirror_mirror_bytes_copied", "Bytes of images copied (where known)", ["namespace"])


def quay_reason(reason: str | None) -> str:
    if not reason:
        return "unknown_error"
    return QUAY_REASONS.get(reason, reason)


def run_started(namespace: str, repository: str, started: float) -> None:
    LAST_SYNC_STATUS.labels(namespace, repository, "").set(2)
    LAST_SYNC_TIMESTAMP.labels(namespace, repository).set(started)
    PENDING_TAGS.labels(namespace, repository).set(0)


def run_finished(namespace: str, repository: str, outcome: RunStatus, reason: str | None, duration: float,
                 any_failed: bool) -> None:
    """SUCCESS, FAIL and CANCEL set the last status; an interrupted run counts only its duration."""
    PENDING_TAGS.labels(namespace, repository).set(0)
    SYNC_DURATION.labels(namespace).observe(duration)
    if outcome == RunStatus.SUCCESS:
        LAST_SYNC_STATUS.labels(namespace, repository, "").set(1)
        SYNC_COMPLETE.labels(namespace, repository).set(0 if any_failed else 1)
    elif outcome in (RunStatus.FAIL, RunStatus.CANCEL):
        why = quay_reason(reason)
        LAST_SYNC_STATUS.labels(namespace, repository, "").set(0)
        LAST_SYNC_STATUS.labels(namespace, repository, why).set(0)
        SYNC_COMPLETE.labels(namespace, repository).set(0)
        if outcome == RunStatus.FAIL:
            SYNC_FAILURES.labels(namespace, why).inc()


def exposition() -> tuple[bytes, str]:
    """The text exposition of the default registry and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


def serve(port: int, host: str = "127.0.0.1") -> bool:
    """Serve /metrics on ``host:port`` in a daemon thread (``quaymirror worker``); False when disabled."""
    if not port:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as error:  # the port is taken (another worker on this host): run without
        log.warning("metrics: cannot listen on %s:%d (%s); /metrics is not served by this worker", host, port, error)
        return False
    log.info("metrics on http://%s:%d/metrics", host, port)
    return True
