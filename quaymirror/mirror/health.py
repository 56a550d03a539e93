"""Quay's mirror health: ``GET /api/v1/repository/mirror/health`` and
``GET /api/v1/superuser/mirror/health``.

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

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Response
from flask_restful import Api, Resource
from marshmallow import fields, post_load
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from quaymirror import web
from quaymirror.accounts.models import User
from quaymirror.auth.permissions import is_namespace_member, namespace_by_name, superuser_passes
from quaymirror.db import utcnow
from quaymirror.errors import Forbidden, NotFound, json_response
from quaymirror.mirror import heartbeat
from quaymirror.mirror.models import MirrorSyncRun as SyncRun
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus
from quaymirror.repositories.models import Repository, RepositoryState

FAILURE_THRESHOLD = 0.2
STALE_AFTER = timedelta(hours=24)
MAX_SAMPLES = 5
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CACHE_CONTROL = "no-cache, no-store, must-revalidate"


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


@dataclass(frozen=True)
class Options:
    namespace_id: int | None = None
    detailed: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    worker_replicas: int | None = None
    samples: bool = True  # the per-repository issues (stale, never run, retries exhausted)


def _base(namespace_id: int | None):
    """The conditions every count shares: enabled configs of MIRROR repositories (of one namespace)."""
    conditions = [Repository.state == RepositoryState.MIRROR, RepoMirrorConfig.is_enabled.is_(True)]
    if namespace_id is not None:
        conditions.append(Repository.namespace_id == namespace_id)
    return conditions


def _last_sync():
    """Per repository: the end of its last finished run."""
    return (
        select(SyncRun.repository_id.label("repository_id"), func.max(SyncRun.finished).label("last_sync"))
        .where(SyncRun.finished.is_not(None))
        .group_by(SyncRun.repository_id)
        .subquery("last_sync")
    )


def active_workers(session: Session, now: datetime) -> int:
    """Live workers, by heartbeat: leases and runs would miss an idle worker and count a stopped one."""
    return heartbeat.count_alive(session, now)


def _samples(session: Session, conditions: list, extra, last_sync=None) -> list[tuple[str, str]]:
    query = (
        select(User.username, Repository.name)
        .select_from(RepoMirrorConfig)
        .join(Repository, Repository.id == RepoMirrorConfig.repository_id)
        .join(User, User.id == Repository.namespace_id)
    )
    if last_sync is not None:
        query = query.join(last_sync, last_sync.c.repository_id == Repository.id)
    query = query.where(*conditions, extra).order_by(Repository.namespace_id, Repository.name).limit(MAX_SAMPLES)
    return [(ns, name) for ns, name in session.execute(query)]


def health(session: Session, options: Options, now: datetime | None = None) -> dict[str, Any]:
    """The body of Quay's mirror health answer."""
    now = now or utcnow()
    stamp = iso(now)
    conditions = _base(options.namespace_id)
    joined = select(RepoMirrorConfig.sync_status, func.count()).join(
        Repository, Repository.id == RepoMirrorConfig.repository_id
    ).where(*conditions).group_by(RepoMirrorConfig.sync_status)
    by_status = {status: count for status, count in session.execute(joined)}
    total = sum(by_status.values())
    failed = by_status.get(RepoMirrorStatus.FAIL, 0)
    never_run = by_status.get(RepoMirrorStatus.NEVER_RUN, 0)
    repositories: dict[str, Any] = {
        "total": total,
        "syncing": by_status.get(RepoMirrorStatus.SYNCING, 0),
        "completed": by_status.get(RepoMirrorStatus.SUCCESS, 0),
        "failed": failed,
        "never_run": never_run,
    }

    pending_query = (
        select(func.coalesce(func.sum(SyncRun.tags_matched - SyncRun.tags_done), 0))
        .select_from(SyncRun)
        .join(Repository, Repository.id == SyncRun.repository_id)
        .where(SyncRun.finished.is_(None), SyncRun.tags_matched.is_not(None),
               SyncRun.tags_matched > SyncRun.tags_done)
    )
    if options.namespace_id is not None:
        pending_query = pending_query.where(Repository.namespace_id == options.namespace_id)
    tags_pending = int(session.scalar(pending_query) or 0)

    active = active_workers(session, now)
    replicas = options.worker_replicas
    issues: list[dict[str, str]] = []
    healthy = True

    if replicas and total > 0 and 0 < active < replicas:
        healthy = False
        issues.append({
            "severity": "warning",
            "message": f"{replicas - active} mirror worker(s) are not reporting in this process "
                       f"(REPO_MIRROR_WORKER_REPLICAS={replicas}, quay_repository_mirror_workers_active={active})",
            "timestamp": stamp,
        })

    last_sync = _last_sync()
    if options.samples:
        for ns, name in _samples(session, conditions, last_sync.c.last_sync < now - STALE_AFTER, last_sync):
            issues.append({"severity": "warning",
                           "message": f"Repository {ns}/{name} hasn't synced in over 24 hours", "timestamp": stamp})
        for ns, name in _samples(session, conditions, RepoMirrorConfig.sync_status == RepoMirrorStatus.NEVER_RUN):
            issues.append({"severity": "warning", "message": f"Repository {ns}/{name} has never been synced",
                           "timestamp": stamp})
        exhausted = and_(RepoMirrorConfig.sync_status == RepoMirrorStatus.FAIL,
                         RepoMirrorConfig.sync_retries_remaining == 0)
        for ns, name in _samples(session, conditions, exhausted):
            issues.append({"severity": "error",
                           "message": f"Repository {ns}/{name} has exhausted all retry attempts", "timestamp": stamp})

    ran = total - never_run
    if ran > 0 and failed / ran > FAILURE_THRESHOLD:
        healthy = False
        issues.insert(0, {
            "severity": "critical",
            "message": f"{failed / ran * 100:.1f}% of repositories are failing (threshold: 20.0%)",
            "timestamp": stamp,
        })

    if options.detailed:
        details_query = (
            select(User.username, Repository.name, RepoMirrorConfig.sync_status, RepoMirrorConfig.is_enabled,
                   last_sync.c.last_sync, RepoMirrorConfig.sync_retries_remaining)
            .select_from(RepoMirrorConfig)
            .join(Repository, Repository.id == RepoMirrorConfig.repository_id)
            .join(User, User.id == Repository.namespace_id)
            .outerjoin(last_sync, last_sync.c.repository_id == Repository.id)
            .where(*conditions)
            .order_by(Repository.namespace_id, Repository.name)
            .offset(options.offset)
            .limit(options.limit + 1)
        )
        rows = session.execute(details_query).all()
        repositories["details"] = [
            {"namespace": ns, "repository": name, "sync_status": RepoMirrorStatus(status).name,
             "is_enabled": bool(enabled), "last_sync": iso(last), "retries_remaining": retries}
            for ns, name, status, enabled, last, retries in rows[: options.limit]
        ]
        repositories["pagination"] = {"limit": options.limit, "offset": options.offset,
                                      "has_more": len(rows) > options.limit}

    return {
        "healthy": healthy,
        "workers": {"active": active, "configured": replicas or active,
                    "status": "healthy" if healthy else "degraded"},
        "repositories": repositories,
        "tags_pending": tags_pending,
        "last_check": stamp,
        "issues": issues,
    }


# ------------------------------------------------------------------ endpoint
_TRUE = {"true", "1", "yes", "on", "t", "y"}
_FALSE = {"false", "0", "no", "off", "f", "n", ""}
_NOT_AN_INT = {"invalid": "invalid literal for int() with base 10: {input!r}"}  # Quay's reqparse message


class HealthQuery(web.Query):
    """Quay's arguments: ``limit`` is clamped to 1..MAX_LIMIT and ``offset`` to 0 and up, as Quay does; only a
    value no database integer can hold (or no integer at all) is a 400."""

    namespace = fields.String(load_default="", metadata={"description": "Only this namespace's mirrors."})
    detailed = web.QueryBool(truthy=_TRUE, falsy=_FALSE, load_default=False,
                             error_messages={"invalid": "Invalid literal for boolean(): {input}"},
                             metadata={"description": "Also list the repositories (limit, offset)."})
    limit = web.Int64(load_default=DEFAULT_LIMIT, error_messages=_NOT_AN_INT,
                      metadata={"description": f"Page size of the details, clamped to 1..{MAX_LIMIT}."})
    offset = web.Int64(load_default=0, error_messages=_NOT_AN_INT,
                       metadata={"description": "Details to skip; a negative value means 0."})

    @post_load
    def _clamp(self, data: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        return {**data, "namespace": data["namespace"] or None,
                "limit": min(MAX_LIMIT, max(1, data["limit"])), "offset": max(0, data["offset"])}


def _answer(body: dict[str, Any]) -> Response:
    """200 when healthy, 503 when not; never cached."""
    return json_response(body, 200 if body["healthy"] else 503, headers={"Cache-Control": CACHE_CONTROL})


class RepositoryMirrorHealth(Resource):
    def get(self):
        caller = web.caller()
        args = web.query(HealthQuery())  # before the permission checks: they need the namespace
        session = web.session()
        namespace_name = args["namespace"]
        full_access = web.settings().superusers_full_access
        namespace_id = None
        if namespace_name is None:
            if not superuser_passes(caller, full_access):
                raise Forbidden()
        else:
            namespace = namespace_by_name(session, namespace_name)
            if namespace is None:
                raise NotFound()
            if not superuser_passes(caller, full_access) and not _may_view(session, caller.user, namespace):
                raise Forbidden()
            namespace_id = namespace.id
        options = Options(
            namespace_id=namespace_id,
            detailed=args["detailed"],
            limit=args["limit"],
            offset=args["offset"],
            worker_replicas=web.settings().worker_replicas,
        )
        return _answer(health(session, options))


class SuperuserMirrorHealth(Resource):
    def get(self):
        """Any superuser with a ``super:user`` token; full access is not needed. Query arguments are ignored."""
        caller = web.caller()  # anonymous, garbage or expired token: 401
        # superuser_passes with full access forced on: exactly "a superuser holding a super:user token".
        if not superuser_passes(caller, full_access=True):
            raise Forbidden()
        options = Options(worker_replicas=web.settings().worker_replicas, samples=False)
        return _answer(health(web.session(), options))


def _may_view(session: Session, user: User, namespace: User) -> bool:
    """Org: a member; user namespace: that user."""
    if namespace.is_organization:
        return is_namespace_member(session, user, namespace)
    return user.id == namespace.id


def register(api: Api) -> None:
    api.add_resource(RepositoryMirrorHealth, "/repository/mirror/health", endpoint="repository_mirror_health")
    api.add_resource(SuperuserMirrorHealth, "/superuser/mirror/health", endpoint="superuser_mirror_health")
