"""The mirror health endpoints: ``GET /api/v1/repository/mirror/health`` (one namespace, or every one for a
superuser with full access) and ``GET /api/v1/superuser/mirror/health`` (every namespace, for any superuser).
The rules are in ``health``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from flask import Response
from flask_restful import Api, Resource

from quaymirror import web
from quaymirror.auth import scopes
from quaymirror.auth.permissions import namespace_by_name, superuser_passes
from quaymirror.errors import Forbidden, NotFound, json_response
from quaymirror.mirror import health
from quaymirror.mirror.schemas import HealthQuery, MirrorHealthView
from quaymirror.openapi import AnyOf, Operation

CACHE_CONTROL = "no-cache, no-store, must-revalidate"
_DEGRADED = AnyOf((MirrorHealthView, "ApiError"))  # 503: unhealthy, or the database is away


def _answer(body: health.Health) -> Response:
    """200 when healthy, 503 when not; never cached."""
    return json_response(MirrorHealthView().dump(body), 200 if body.healthy else 503,
                         headers={"Cache-Control": CACHE_CONTROL})


class RepositoryMirrorHealth(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getRepoMirrorHealth",
                         "Mirror health: workers, repositories, pending tags (503 when degraded).", None,
                         {200: MirrorHealthView, 503: _DEGRADED}, tags=("mirror",), query=HealthQuery),
    }

    def get(self) -> Response:
        caller = web.caller()
        args = web.query(HealthQuery())  # before the permission checks: they need the namespace
        session = web.session()
        namespace = None
        if args["namespace"] is not None:
            namespace = namespace_by_name(session, args["namespace"])
            if namespace is None:
                raise NotFound()
        if not health.may_view(session, caller, namespace, full_access=web.settings().superusers_full_access):
            raise Forbidden()
        options = health.Options(
            namespace_id=namespace.id if namespace is not None else None,
            page=(args["limit"], args["offset"]) if args["detailed"] else None,
            worker_replicas=web.settings().worker_replicas,
        )
        return _answer(health.health(session, options))


class SuperuserMirrorHealth(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getSuperuserMirrorHealth",
                         "Mirror health of every namespace for any superuser (super:user scope; full access not "
                         "needed): the summary without per-repository issues or details (503 when degraded).",
                         scopes.SUPERUSER, {200: MirrorHealthView, 503: _DEGRADED}, tags=("superuser", "mirror")),
    }

    def get(self) -> Response:
        """Any superuser with a ``super:user`` token; full access is not needed. Query arguments are ignored."""
        caller = web.caller()  # anonymous, garbage or expired token: 401
        # superuser_passes with full access forced on: exactly "a superuser holding a super:user token".
        if not superuser_passes(caller, full_access=True):
            raise Forbidden()
        options = health.Options(worker_replicas=web.settings().worker_replicas, samples=False)
        return _answer(health.health(web.session(), options))


def register(api: Api) -> None:
    api.add_resource(RepositoryMirrorHealth, "/repository/mirror/health", endpoint="repository_mirror_health")
    api.add_resource(SuperuserMirrorHealth, "/superuser/mirror/health", endpoint="superuser_mirror_health")
