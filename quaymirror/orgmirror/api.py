"""Quay's organization mirror endpoints (``/api/v1/organization/{org}/mirror...``): each resource checks the
caller, reads the body, calls the service, answers.

Quay's order: a body's schema first (POST and PUT: a malformed body is a 400 even anonymously), then the
caller (an admin of the organization with an ``org:admin`` token, or a superuser with full access: 401/403,
also for an organization that does not exist), then the organization (404 for a user's namespace) and its
configuration (404). Registered only with ``QUAYMIRROR_FEATURE_ORG_MIRROR``: off, the routes do not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from flask_restful import Api, Resource
from marshmallow import Schema

from quaymirror import web
from quaymirror.accounts.models import User
from quaymirror.auth import scopes
from quaymirror.auth.permissions import require_namespace_admin
from quaymirror.mirror.service import Actor
from quaymirror.openapi import PLAIN_STRING, Operation
from quaymirror.orgmirror import service, verify
from quaymirror.orgmirror.schemas import (
    CreateOrgMirrorConfig,
    DiscoveredRepositoriesView,
    OrgMirrorConfigView,
    RepositoriesQuery,
    UpdateOrgMirrorConfig,
    VerifyView,
)

_TAGS = ("org_mirror",)


def _organization(orgname: str) -> tuple[User, Actor]:
    """The caller's right on the organization (401/403 first), then the organization itself (404)."""
    caller = web.caller(required=False)
    namespace = require_namespace_admin(web.session(), caller, orgname, scopes.ORG_ADMIN,
                                        superuser_full_access=web.settings().superusers_full_access)
    organization = service.require_organization(namespace)
    return organization, Actor(caller.user if caller else None, web.client_ip())


def _write(orgname: str, action: Callable[..., object], status: int, schema: Schema | None = None
           ) -> tuple[str, int]:
    """A change: the body (if any), the caller, the organization, the service's write in one transaction."""
    data = web.load(schema) if schema is not None else None
    organization, actor = _organization(orgname)
    session = web.session()
    with web.atomic(session):
        if data is None:
            action(session, organization, actor=actor)
        else:
            action(session, organization, data, actor=actor)
    return "", status


class OrgMirror(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getOrgMirrorConfig", "The organization's mirror configuration.", scopes.ORG_ADMIN,
                         {200: OrgMirrorConfigView}, tags=_TAGS),
        "post": Operation("createOrgMirrorConfig", "Mirror every repository of an upstream namespace into this "
                          "empty organization.", scopes.ORG_ADMIN, {201: PLAIN_STRING},
                          body=CreateOrgMirrorConfig, tags=_TAGS),
        "put": Operation("updateOrgMirrorConfig", "Change the keys sent (the source's type cannot change).",
                         scopes.ORG_ADMIN, {200: PLAIN_STRING}, body=UpdateOrgMirrorConfig, tags=_TAGS),
        "delete": Operation("deleteOrgMirrorConfig", "Stop mirroring: the repositories stay, back to NORMAL.",
                            scopes.ORG_ADMIN, {204: None}, tags=_TAGS),
    }

    def get(self, orgname: str) -> dict[str, Any]:
        organization, _actor = _organization(orgname)
        session = web.session()
        config = service.require(session, organization)
        return OrgMirrorConfigView().dump(service.describe(session, config, web.secret_box()))

    def post(self, orgname: str) -> tuple[str, int]:
        def create(session: Any, organization: User, data: dict[str, Any], *, actor: Actor) -> None:
            service.create(session, organization, data, box=web.secret_box(), settings=web.settings(), actor=actor)

        return _write(orgname, create, 201, CreateOrgMirrorConfig())

    def put(self, orgname: str) -> tuple[str, int]:
        def change(session: Any, organization: User, data: dict[str, Any], *, actor: Actor) -> None:
            sent = list(web.json_body())  # Quay's audit entry lists every key sent, unknown ones too
            service.update(session, organization, data, sent, box=web.secret_box(), settings=web.settings(),
                           actor=actor)

        return _write(orgname, change, 200, UpdateOrgMirrorConfig())

    def delete(self, orgname: str) -> tuple[str, int]:
        return _write(orgname, service.delete, 204)


class OrgMirrorSyncNow(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "post": Operation("syncOrgMirrorNow", "Discover and sync as soon as possible (a body is ignored).",
                          scopes.ORG_ADMIN, {204: None}, tags=_TAGS),
    }

    def post(self, orgname: str) -> tuple[str, int]:
        return _write(orgname, service.sync_now, 204)


class OrgMirrorSyncCancel(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "post": Operation("cancelOrgMirrorSync", "Cancel the discovery and the repositories' syncs.",
                          scopes.ORG_ADMIN, {204: None}, tags=_TAGS),
    }

    def post(self, orgname: str) -> tuple[str, int]:
        return _write(orgname, service.sync_cancel, 204)


class OrgMirrorVerify(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "post": Operation("verifyOrgMirrorConnection", "Whether the upstream answers as a source should.",
                          scopes.ORG_ADMIN, {200: VerifyView}, tags=_TAGS),
    }

    def post(self, orgname: str) -> dict[str, Any]:
        organization, _actor = _organization(orgname)
        result = verify.run(web.session(), organization, box=web.secret_box(), settings=web.settings())
        return VerifyView().dump(result)


class OrgMirrorRepositories(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("listOrgMirrorRepositories", "The repositories discovered upstream, by name.",
                         scopes.ORG_ADMIN, {200: DiscoveredRepositoriesView}, query=RepositoriesQuery, tags=_TAGS),
    }

    def get(self, orgname: str) -> dict[str, Any]:
        organization, _actor = _organization(orgname)
        args = web.query(RepositoriesQuery())
        found = service.list_repositories(web.session(), organization, page=args["page"], limit=args["limit"],
                                          status_name=args["status"])
        return DiscoveredRepositoriesView().dump(found)


def register(api: Api, enabled: bool) -> None:
    """The routes exist only with the feature on (Quay's ``show_if``)."""
    if not enabled:
        return
    base = "/organization/<string:orgname>/mirror"
    api.add_resource(OrgMirror, base)
    api.add_resource(OrgMirrorSyncNow, f"{base}/sync-now")
    api.add_resource(OrgMirrorSyncCancel, f"{base}/sync-cancel")
    api.add_resource(OrgMirrorVerify, f"{base}/verify")
    api.add_resource(OrgMirrorRepositories, f"{base}/repositories")
