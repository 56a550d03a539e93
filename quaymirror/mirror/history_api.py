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

from collections.abc import Mapping
from typing import Any, ClassVar

from flask_restful import Api, Resource

from quaymirror import web
from quaymirror.auth import scopes
from quaymirror.mirror import service as mirrors
from quaymirror.mirror.models import RepoMirrorConfig
from quaymirror.mirror.schemas import SyncListQuery, SyncRunListView, SyncRunView, SyncTagResultsView
from quaymirror.openapi import AllOf, Operation


def _config(namespace: str, repository: str) -> RepoMirrorConfig:
    """The repository's current mirror configuration, checked as GET /mirror checks it (401/403, then 404); an
    organization-mirrored repository's too (the organization mirror syncs it with one of its own)."""
    repo = web.authorize_repo(namespace, repository, "admin", public_read=False).require()
    return mirrors.require(web.session(), repo, managed=True)


class MirrorSyncs(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("listRepoMirrorSyncs", "The mirror's sync runs, newest first.", scopes.REPO_ADMIN,
                         {200: SyncRunListView}, tags=("mirror",), query=SyncListQuery),
    }

    def get(self, namespace: str, repository: str) -> dict[str, Any]:
        config = _config(namespace, repository)
        args = web.query(SyncListQuery())
        return SyncRunListView().dump(mirrors.list_runs(web.session(), config, args["page"], args["limit"]))


class MirrorSync(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getRepoMirrorSync", "One sync run with its per-tag results.", scopes.REPO_ADMIN,
                         {200: AllOf((SyncRunView, SyncTagResultsView))}, tags=("mirror",)),
    }

    def get(self, namespace: str, repository: str, run_id: int) -> dict[str, Any]:
        config = _config(namespace, repository)
        run, tags = mirrors.get_run(web.session(), config, run_id)
        return {**SyncRunView().dump(run), **SyncTagResultsView().dump({"tag_results": tags})}


def register(api: Api) -> None:
    base = "/repository/<string:namespace>/<string:repository>/mirror/syncs"
    api.add_resource(MirrorSyncs, base, endpoint="mirror_syncs")
    api.add_resource(MirrorSync, f"{base}/<id:run_id>", endpoint="mirror_sync")
