"""Sync history endpoints (Quay has none): the runs of a repository's mirror, and one run with its tags.

``GET /api/v1/repository/<ns>/<repo>/mirror/syncs?page=1&limit=20`` lists
runs newest first; ``GET .../mirror/syncs/<id>`` adds the per-tag results.
Same authorization and the same 404 as the mirror GET (repository admin, or
superuser with full access; never public; 404 without a mirror configuration).
The history is the current configuration's: the runs of a deleted one stay in
the table for the audit trail, but neither route shows them. A run in progress
shows ``progress`` (tags done / matched) as the worker records each tag.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask_restful import Api, Resource
from sqlalchemy import select

from quaymirror import web
from quaymirror.auth.permissions import require_repo_role
from quaymirror.errors import NotFound
from quaymirror.mirror import service as mirrors
from quaymirror.mirror.models import MirrorSyncRun as SyncRun
from quaymirror.mirror.models import MirrorSyncTag as SyncTag
from quaymirror.mirror.models import RepoMirrorConfig, RunStatus
from quaymirror.repositories import service as repositories

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_PAGE = 1_000_000


class SyncListQuery(web.Query):
    """``?page=&limit=``: an empty value means the default."""

    page = web.Int64(minimum=1, maximum=MAX_PAGE, load_default=1, empty_is_missing=True,
                     metadata={"description": "Page of runs, newest first."})
    limit = web.Int64(minimum=1, maximum=MAX_LIMIT, load_default=DEFAULT_LIMIT, empty_is_missing=True,
                      metadata={"description": "Runs per page."})


def _config(namespace: str, repository: str) -> RepoMirrorConfig:
    """The repository's current mirror configuration, checked as GET /mirror checks it (401/403, then 404)."""
    session = web.session()
    _ns, repo = require_repo_role(
        session, web.caller(required=False), namespace, repository, "admin",
        superuser_full_access=web.settings().superusers_full_access, public_read=False,
    )
    return mirrors.require(session, repositories.require(repo))


def _date(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def run_view(run: SyncRun) -> dict[str, Any]:
    finished = run.finished
    return {
        "id": run.id,
        "trigger": run.trigger,
        "status": run.status,
        "in_progress": run.status == RunStatus.SYNCING,
        "started": _date(run.started),
        "finished": _date(finished),
        "duration_seconds": round((finished - run.started).total_seconds(), 3) if finished else None,
        "reason": run.reason,
        "message": run.message,
        "worker": run.worker,
        "tags": {
            "matched": run.tags_matched,
            "done": run.tags_done,
            "copied": run.tags_copied,
            "skipped": run.tags_skipped,
            "deleted": run.tags_deleted,
            "failed": run.tags_failed,
        },
        "progress": {"done": run.tags_done, "total": run.tags_matched},
        "bytes": run.bytes,
    }


def tag_view(tag: SyncTag) -> dict[str, Any]:
    return {
        "tag": tag.tag,
        "digest": tag.digest,
        "outcome": tag.outcome,
        "reason": tag.reason,
        "output": tag.output,
        "bytes": tag.bytes,
        "duration_ms": tag.duration_ms,
        "finished": _date(tag.finished),
    }


class MirrorSyncs(Resource):
    def get(self, namespace: str, repository: str):
        config = _config(namespace, repository)
        args = web.query(SyncListQuery())
        page, limit = args["page"], args["limit"]
        rows = list(web.session().scalars(
            select(SyncRun)
            .where(SyncRun.repository_id == config.repository_id, SyncRun.config_id == config.id)
            .order_by(SyncRun.id.desc()).offset((page - 1) * limit).limit(limit + 1)
        ))
        return {"syncs": [run_view(r) for r in rows[:limit]], "page": page, "has_additional": len(rows) > limit}


class MirrorSync(Resource):
    def get(self, namespace: str, repository: str, run_id: int):
        config = _config(namespace, repository)
        session = web.session()
        run = session.get(SyncRun, run_id)
        if run is None or run.config_id != config.id:
            raise NotFound()
        tags = session.scalars(select(SyncTag).where(SyncTag.run_id == run.id).order_by(SyncTag.id))
        return {**run_view(run), "tag_results": [tag_view(t) for t in tags]}


def register(api: Api) -> None:
    base = "/repository/<string:namespace>/<string:repository>/mirror/syncs"
    api.add_resource(MirrorSyncs, base, endpoint="mirror_syncs")
    api.add_resource(MirrorSync, f"{base}/<id:run_id>", endpoint="mirror_sync")
