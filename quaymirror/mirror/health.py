"""Quay's mirror health, the rules behind ``GET /api/v1/repository/mirror/health`` and
``GET /api/v1/superuser/mirror/health`` (the resources are in ``health_api``).

The superuser endpoint answers the same summary for every namespace, without
the per-repository issue samples and without details; it needs a superuser's
token with the ``super:user`` scope (Quay's superuser endpoints' scope), whether
or not ``QUAYMIRROR_SUPERUSERS_FULL_ACCESS`` is on.

Quay reads worker liveness, pending tags and last-sync times from the worker's
Prometheus metrics; we read the same facts from the database, which every
worker process writes anyway:

* ``workers.active``: the worker processes alive now, syncing or idle: their
  heartbeat rows (``quaymirror.mirror.heartbeat``) not yet stale. A worker
  stopped cleanly stops counting at once; one killed outright, within
  ``heartbeat.STALE_BEATS`` heartbeat intervals;
* ``tags_pending``: matched minus done tags of the runs still in progress;
* last sync of a repository: the end of its last finished run.

Counts cover only enabled configurations of repositories in MIRROR state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Subquery, and_, func, select
from sqlalchemy.orm import Session

from quaymirror.accounts.models import User
from quaymirror.auth.permissions import is_namespace_member, superuser_passes
from quaymirror.auth.tokens import Caller
from quaymirror.db import utcnow
from quaymirror.mirror import heartbeat
from quaymirror.mirror.models import MirrorSyncRun, RepoMirrorConfig, RepoMirrorStatus
from quaymirror.repositories.models import Repository, RepositoryState

FAILURE_THRESHOLD = 0.2
STALE_AFTER = timedelta(hours=24)
MAX_SAMPLES = 5


@dataclass(frozen=True)
class Options:
    """What one health request asks for."""

    namespace_id: int | None = None
    page: tuple[int, int] | None = None  # (limit, offset) of the detailed list of repositories, when asked for
    worker_replicas: int | None = None
    samples: bool = True  # the per-repository issues (stale, never run, retries exhausted)


@dataclass(frozen=True)
class Issue:
    """Something that needs a look; Quay's severities are critical, error and warning."""

    severity: str
    message: str
    timestamp: datetime


@dataclass(frozen=True)
class RepositoryHealth:
    """One mirrored repository in the detailed answer."""

    namespace: str
    repository: str
    sync_status: str
    is_enabled: bool
    last_sync: datetime | None
    retries_remaining: int


@dataclass(frozen=True)
class Details:
    """One page of the mirrored repositories, and whether more follow."""

    repositories: list[RepositoryHealth]
    limit: int
    offset: int
    has_more: bool


@dataclass(frozen=True)
class Health:
    """Quay's mirror health answer: healthy, or degraded by the issues that say why."""

    healthy: bool
    active_workers: int
    configured_workers: int
    repositories: Repositories
    tags_pending: int
    last_check: datetime
    issues: list[Issue]


@dataclass(frozen=True)
class Repositories:
    """The counts by status; ``details`` only when asked for (else Quay leaves its keys out)."""

    total: int
    syncing: int
    completed: int
    failed: int
    never_run: int
    details: Details | None = None


def may_view(session: Session, caller: Caller, namespace: User | None, *, full_access: bool) -> bool:
    """Every namespace (``namespace`` None): a superuser with full access. An organization: also its members;
    a user's namespace: also that user."""
    if superuser_passes(caller, full_access):
        return True
    if namespace is None:
        return False
    if namespace.is_organization:
        return is_namespace_member(session, caller.user, namespace)
    return caller.user.id == namespace.id


def active_workers(session: Session, now: datetime) -> int:
    """Live workers, by heartbeat: leases and runs would miss an idle worker and count a stopped one."""
    return heartbeat.count_alive(session, now)


def health(session: Session, options: Options, now: datetime | None = None) -> Health:
    """Quay's mirror health: counts, pending tags, workers, and the issues that make it unhealthy."""
    now = now or utcnow()
    conditions = _base(options.namespace_id)
    by_status = _counts_by_status(session, conditions)
    total = sum(by_status.values())
    failed = by_status.get(RepoMirrorStatus.FAIL, 0)
    never_run = by_status.get(RepoMirrorStatus.NEVER_RUN, 0)
    active = active_workers(session, now)
    last_sync = _last_sync()

    failing = _failure_issue(failed, total - never_run, now)
    missing = _worker_issue(options.worker_replicas, active, total, now)
    issues = [issue for issue in (failing, missing) if issue is not None]
    if options.samples:
        issues += _sample_issues(session, conditions, last_sync, now)
    healthy = failing is None and missing is None

    repositories = Repositories(
        total=total,
        syncing=by_status.get(RepoMirrorStatus.SYNCING, 0),
        completed=by_status.get(RepoMirrorStatus.SUCCESS, 0),
        failed=failed,
        never_run=never_run,
        details=_details(session, conditions, last_sync, *options.page) if options.page is not None else None,
    )
    return Health(healthy=healthy, active_workers=active, configured_workers=options.worker_replicas or active,
                  repositories=repositories, tags_pending=_tags_pending(session, options.namespace_id),
                  last_check=now, issues=issues)


def _base(namespace_id: int | None) -> list[ColumnElement[bool]]:
    """The conditions every count shares: enabled configs of mirrored repositories (of one namespace), an
    organization mirror's repositories included (each is synced by a configuration of its own)."""
    conditions: list[ColumnElement[bool]] = [
        Repository.state.in_([RepositoryState.MIRROR, RepositoryState.ORG_MIRROR]),
        RepoMirrorConfig.is_enabled.is_(True)]
    if namespace_id is not None:
        conditions.append(Repository.namespace_id == namespace_id)
    return conditions


def _last_sync() -> Subquery:
    """Per repository: the end of its last finished run."""
    return (
        select(MirrorSyncRun.repository_id.label("repository_id"), func.max(MirrorSyncRun.finished).label("last_sync"))
        .where(MirrorSyncRun.finished.is_not(None))
        .group_by(MirrorSyncRun.repository_id)
        .subquery("last_sync")
    )


def _counts_by_status(session: Session, conditions: Sequence[ColumnElement[bool]]) -> dict[int, int]:
    query = (
        select(RepoMirrorConfig.sync_status, func.count())
        .join(Repository, Repository.id == RepoMirrorConfig.repository_id)
        .where(*conditions)
        .group_by(RepoMirrorConfig.sync_status)
    )
    return {status: count for status, count in session.execute(query)}


def _tags_pending(session: Session, namespace_id: int | None) -> int:
    """Matched minus done tags of the runs still in progress."""
    query = (
        select(func.coalesce(func.sum(MirrorSyncRun.tags_matched - MirrorSyncRun.tags_done), 0))
        .select_from(MirrorSyncRun)
        .join(Repository, Repository.id == MirrorSyncRun.repository_id)
        .where(MirrorSyncRun.finished.is_(None), MirrorSyncRun.tags_matched.is_not(None),
               MirrorSyncRun.tags_matched > MirrorSyncRun.tags_done)
    )
    if namespace_id is not None:
        query = query.where(Repository.namespace_id == namespace_id)
    return int(session.scalar(query) or 0)


def _failure_issue(failed: int, ran: int, now: datetime) -> Issue | None:
    """Quay's critical issue: more than FAILURE_THRESHOLD of the mirrors that ran are failing."""
    if ran <= 0 or failed / ran <= FAILURE_THRESHOLD:
        return None
    return Issue("critical", f"{failed / ran * 100:.1f}% of repositories are failing (threshold: 20.0%)", now)


def _worker_issue(replicas: int | None, active: int, total: int, now: datetime) -> Issue | None:
    """Some but not all of the configured workers report (none at all is not counted as missing, as Quay)."""
    if not (replicas and total > 0 and 0 < active < replicas):
        return None
    return Issue("warning", f"{replicas - active} mirror worker(s) are not reporting in this process "
                            f"(REPO_MIRROR_WORKER_REPLICAS={replicas}, quay_repository_mirror_workers_active={active})",
                 now)


def _sample_issues(session: Session, conditions: Sequence[ColumnElement[bool]], last_sync: Subquery,
                   now: datetime) -> list[Issue]:
    """Up to MAX_SAMPLES repositories of each kind of trouble: stale, never synced, out of retries."""
    stale = _samples(session, conditions, last_sync.c.last_sync < now - STALE_AFTER, last_sync)
    never = _samples(session, conditions, RepoMirrorConfig.sync_status == RepoMirrorStatus.NEVER_RUN)
    exhausted = _samples(session, conditions, and_(RepoMirrorConfig.sync_status == RepoMirrorStatus.FAIL,
                                                   RepoMirrorConfig.sync_retries_remaining == 0))
    return (
        [Issue("warning", f"Repository {name} hasn't synced in over 24 hours", now) for name in stale]
        + [Issue("warning", f"Repository {name} has never been synced", now) for name in never]
        + [Issue("error", f"Repository {name} has exhausted all retry attempts", now) for name in exhausted]
    )


def _samples(session: Session, conditions: Sequence[ColumnElement[bool]], extra: ColumnElement[bool],
             last_sync: Subquery | None = None) -> list[str]:
    """The ``namespace/name`` of the first MAX_SAMPLES mirrors matching ``extra``."""
    query = (
        select(User.username, Repository.name)
        .select_from(RepoMirrorConfig)
        .join(Repository, Repository.id == RepoMirrorConfig.repository_id)
        .join(User, User.id == Repository.namespace_id)
    )
    if last_sync is not None:
        query = query.join(last_sync, last_sync.c.repository_id == Repository.id)
    query = query.where(*conditions, extra).order_by(Repository.namespace_id, Repository.name).limit(MAX_SAMPLES)
    return [f"{ns}/{name}" for ns, name in session.execute(query)]


def _details(session: Session, conditions: Sequence[ColumnElement[bool]], last_sync: Subquery, limit: int,
             offset: int) -> Details:
    """One page of the mirrored repositories, by namespace then name."""
    query = (
        select(User.username, Repository.name, RepoMirrorConfig.sync_status, RepoMirrorConfig.is_enabled,
               last_sync.c.last_sync, RepoMirrorConfig.sync_retries_remaining)
        .select_from(RepoMirrorConfig)
        .join(Repository, Repository.id == RepoMirrorConfig.repository_id)
        .join(User, User.id == Repository.namespace_id)
        .outerjoin(last_sync, last_sync.c.repository_id == Repository.id)
        .where(*conditions)
        .order_by(Repository.namespace_id, Repository.name)
        .offset(offset)
        .limit(limit + 1)
    )
    rows = session.execute(query).all()
    repositories = [
        RepositoryHealth(ns, name, RepoMirrorStatus(status).name, bool(enabled), last, retries)
        for ns, name, status, enabled, last, retries in rows[:limit]
    ]
    return Details(repositories, limit, offset, len(rows) > limit)
