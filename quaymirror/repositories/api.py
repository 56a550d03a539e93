"""Repository endpoints: create, read, delete, change state, permissions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from flask_restful import Api, Resource

from quaymirror import web
from quaymirror.auth import scopes
from quaymirror.auth.permissions import may_create_repository, namespace_by_name
from quaymirror.errors import Forbidden, NotFound
from quaymirror.openapi import Operation
from quaymirror.repositories import service
from quaymirror.repositories.schemas import (
    ChangeState,
    CreatedRepositoryView,
    CreateRepository,
    PermissionsView,
    PermissionView,
    RepositoryView,
    SetPermission,
    SuccessView,
)

_REPOSITORY = ("repository",)
_PERMISSION = ("permission",)


class RepositoryList(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "post": Operation("createRepo", "Create a repository.", scopes.REPO_CREATE, {201: CreatedRepositoryView},
                          body=CreateRepository, tags=_REPOSITORY),
    }

    def post(self) -> tuple[dict[str, Any], int]:
        caller = web.caller()
        data = web.load(CreateRepository())
        session = web.session()
        namespace = namespace_by_name(session, data["namespace"])
        settings = web.settings()
        if namespace is None or not may_create_repository(session, caller, namespace,
                                                          superuser_full_access=settings.superusers_full_access):
            raise Forbidden()
        service.check_new(session, namespace, data["repository"])
        if settings.feature_org_mirror:
            service.refuse_if_org_mirrored(session, namespace)  # after the name's checks, as Quay
        with web.atomic(session):
            repo = service.create(session, namespace, data["repository"], visibility=data["visibility"],
                                  description=data["description"] or "", performer=caller.user)
            body = CreatedRepositoryView().dump(repo)
        return body, 201


class RepositoryResource(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getRepo", "A repository.", scopes.REPO_READ, {200: RepositoryView}, tags=_REPOSITORY),
        "delete": Operation("deleteRepository", "Delete a repository.", scopes.REPO_ADMIN, {204: None},
                            tags=_REPOSITORY),
    }

    def get(self, namespace: str, repository: str) -> dict[str, Any]:
        access = web.authorize_repo(namespace, repository, "read")
        return RepositoryView().dump(service.describe(access.require(), access.role))

    def delete(self, namespace: str, repository: str) -> tuple[str, int]:
        access = web.authorize_repo(namespace, repository, "admin")
        repo = access.require()
        session = web.session()
        with web.atomic(session):
            service.delete(session, repo, performer=access.performer)
        return "", 204


class ChangeStateResource(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "put": Operation("changeRepoState", "Change a repository's state.", scopes.REPO_ADMIN, {200: SuccessView},
                         body=ChangeState, tags=_REPOSITORY),
    }

    def put(self, namespace: str, repository: str) -> dict[str, Any]:
        access = web.authorize_repo(namespace, repository, "admin")
        data = web.load(ChangeState())
        repo = access.require()
        session = web.session()
        service.refuse_state_change_if_org_mirrored(session, repo)
        with web.atomic(session):
            service.change_state(session, repo, data["state"], performer=access.performer, ip=web.client_ip())
        return SuccessView().dump({"success": True})


class UserPermissions(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("listRepoUserPermissions", "The users' roles on a repository.", scopes.REPO_ADMIN,
                         {200: PermissionsView}, tags=_PERMISSION),
    }

    def get(self, namespace: str, repository: str) -> dict[str, Any]:
        repo = web.authorize_repo(namespace, repository, "admin").require()
        return PermissionsView().dump({"permissions": service.describe_permissions(web.session(), repo)})


class TeamPermissions(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("listRepoTeamPermissions", "The teams' roles on a repository (none).", scopes.REPO_ADMIN,
                         {200: PermissionsView}, tags=_PERMISSION),
    }

    def get(self, namespace: str, repository: str) -> dict[str, Any]:
        web.authorize_repo(namespace, repository, "admin").require()
        return PermissionsView().dump({"permissions": {}})


class UserPermission(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getUserPermissions", "A user's role on a repository.", scopes.REPO_ADMIN,
                         {200: PermissionView}, tags=_PERMISSION),
        "put": Operation("changeUserPermissions", "Set a user's role on a repository.", scopes.REPO_ADMIN,
                         {200: PermissionView}, body=SetPermission, tags=_PERMISSION),
        "delete": Operation("deleteUserPermissions", "Remove a user's role on a repository.", scopes.REPO_ADMIN,
                            {204: None}, tags=_PERMISSION),
    }

    def get(self, namespace: str, repository: str, username: str) -> dict[str, Any]:
        repo = web.authorize_repo(namespace, repository, "admin").require()
        session = web.session()
        permission = service.permission_of(session, repo, service.grantee(session, username))
        if permission is None:
            raise NotFound()
        return PermissionView().dump(service.describe_permission(session, repo, permission))

    def put(self, namespace: str, repository: str, username: str) -> dict[str, Any]:
        access = web.authorize_repo(namespace, repository, "admin")
        data = web.load(SetPermission())
        repo = access.require()
        session = web.session()
        with web.atomic(session):
            permission = service.set_permission(session, repo, service.grantee(session, username), data["role"],
                                                performer=access.performer)
            body = PermissionView().dump(service.describe_permission(session, repo, permission))
        return body

    def delete(self, namespace: str, repository: str, username: str) -> tuple[str, int]:
        repo = web.authorize_repo(namespace, repository, "admin").require()
        session = web.session()
        with web.atomic(session):
            service.remove_permission(session, repo, service.grantee(session, username))
        return "", 204


def register(api: Api) -> None:
    repo = "/repository/<string:namespace>/<string:repository>"
    api.add_resource(RepositoryList, "/repository")
    api.add_resource(RepositoryResource, repo)
    api.add_resource(ChangeStateResource, f"{repo}/changestate")
    api.add_resource(UserPermissions, f"{repo}/permissions/user/")
    api.add_resource(TeamPermissions, f"{repo}/permissions/team/")
    api.add_resource(UserPermission, f"{repo}/permissions/user/<string:username>")
