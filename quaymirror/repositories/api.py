"""Repository endpoints: create, read, delete, change state, permissions."""

from __future__ import annotations

from flask_restful import Api, Resource

from quaymirror import web
from quaymirror.accounts import service as accounts
from quaymirror.accounts.models import User
from quaymirror.auth import scopes
from quaymirror.auth.permissions import (
    is_namespace_admin,
    namespace_by_name,
    repository_role,
    require_repo_role,
    superuser_passes,
)
from quaymirror.errors import Forbidden, InvalidRequest, NotFound
from quaymirror.repositories import service
from quaymirror.repositories.models import ROLE_RANK, Repository, RepositoryPermission, RepositoryState
from quaymirror.repositories.schemas import ChangeState, CreateRepository, SetPermission


def authorized_repository(namespace: str, repository: str, role: str) -> tuple[User | None, Repository]:
    """Check the caller's role (Quay's order: auth first), then that the repository exists (404)."""
    ns, repo = require_repo_role(
        web.session(), web.caller(required=False), namespace, repository, role,
        superuser_full_access=web.settings().superusers_full_access,
    )
    return ns, service.require(repo)


class RepositoryList(Resource):
    def post(self):
        caller = web.caller()
        data = web.load(CreateRepository())
        session = web.session()
        namespace = namespace_by_name(session, data["namespace"])
        allowed = superuser_passes(caller, web.settings().superusers_full_access) or (
            namespace is not None
            and caller.has_scope(scopes.REPO_CREATE)
            and is_namespace_admin(session, caller.user, namespace)
        )
        if not allowed or namespace is None:
            raise Forbidden()
        with web.atomic(session):
            repo = service.create(session, namespace, data["repository"], visibility=data["visibility"],
                                  description=data["description"] or "", performer=caller.user)
        return {"namespace": namespace.username, "name": repo.name, "kind": repo.kind}, 201


class RepositoryResource(Resource):
    def get(self, namespace: str, repository: str):
        ns, repo = authorized_repository(namespace, repository, "read")
        caller = web.caller(required=False)
        session = web.session()
        role = repository_role(session, caller, ns, repo) if caller is not None and ns is not None else None
        if caller is not None and superuser_passes(caller, web.settings().superusers_full_access):
            role = "admin"
        state = RepositoryState(repo.state)
        can_write = role is not None and ROLE_RANK[role] >= ROLE_RANK["write"] and state == RepositoryState.NORMAL
        return {
            "namespace": repo.namespace.username,
            "name": repo.name,
            "kind": repo.kind,
            "description": repo.description,
            "is_public": repo.visibility == "public",
            "is_organization": repo.namespace.is_organization,
            "is_starred": False,
            "state": state.name,
            "can_write": can_write,
            "can_admin": role == "admin",
            "status_token": "",
            "trust_enabled": False,
            "tag_expiration_s": 1209600,
        }

    def delete(self, namespace: str, repository: str):
        _ns, repo = authorized_repository(namespace, repository, "admin")
        session = web.session()
        with web.atomic(session):
            service.delete(session, repo, performer=web.caller().user)
        return "", 204


class ChangeStateResource(Resource):
    def put(self, namespace: str, repository: str):
        require_repo_role(web.session(), web.caller(required=False), namespace, repository, "admin",
                          superuser_full_access=web.settings().superusers_full_access)
        data = web.load(ChangeState())
        _ns, repo = authorized_repository(namespace, repository, "admin")
        session = web.session()
        with web.atomic(session):
            service.change_state(session, repo, data["state"], performer=web.caller().user, ip=web.client_ip())
        return {"success": True}


def _permission_view(permission: RepositoryPermission, org_members: set[str] | None) -> dict:
    """Quay's role view: ``is_org_member`` only in organizations, ``avatar`` only for people."""
    user = permission.user
    view: dict = {"role": permission.role, "name": user.username, "is_robot": user.is_robot}
    if not user.is_robot:
        view["avatar"] = {"name": user.username, "kind": "user"}
    if org_members is not None:
        view["is_org_member"] = user.is_robot or user.username in org_members
    return view


def _org_members(repo: Repository) -> set[str] | None:
    namespace = repo.namespace
    if not namespace.is_organization:
        return None
    return set(accounts.organization_member_names(web.session(), namespace))


class UserPermissions(Resource):
    def get(self, namespace: str, repository: str):
        _ns, repo = authorized_repository(namespace, repository, "admin")
        perms = service.permissions(web.session(), repo)
        members = _org_members(repo)
        return {"permissions": {p.user.username: _permission_view(p, members) for p in perms}}


class TeamPermissions(Resource):
    def get(self, namespace: str, repository: str):
        authorized_repository(namespace, repository, "admin")
        return {"permissions": {}}


class UserPermission(Resource):
    def _target(self, session, username: str) -> User:
        user = accounts.get_by_name(session, username)
        if user is None or user.is_organization:
            raise InvalidRequest(f"Invalid username: {username}")
        return user

    def get(self, namespace: str, repository: str, username: str):
        _ns, repo = authorized_repository(namespace, repository, "admin")
        session = web.session()
        permission = service.permission_of(session, repo, self._target(session, username))
        if permission is None:
            raise NotFound()
        return _permission_view(permission, _org_members(repo))

    def put(self, namespace: str, repository: str, username: str):
        require_repo_role(web.session(), web.caller(required=False), namespace, repository, "admin",
                          superuser_full_access=web.settings().superusers_full_access)
        data = web.load(SetPermission())
        _ns, repo = authorized_repository(namespace, repository, "admin")
        session = web.session()
        with web.atomic(session):
            permission = service.set_permission(session, repo, self._target(session, username), data["role"],
                                                performer=web.caller().user)
        return _permission_view(permission, _org_members(repo))

    def delete(self, namespace: str, repository: str, username: str):
        _ns, repo = authorized_repository(namespace, repository, "admin")
        session = web.session()
        with web.atomic(session):
            service.remove_permission(session, repo, self._target(session, username))
        return "", 204


def register(api: Api) -> None:
    repo = "/repository/<string:namespace>/<string:repository>"
    api.add_resource(RepositoryList, "/repository")
    api.add_resource(RepositoryResource, repo)
    api.add_resource(ChangeStateResource, f"{repo}/changestate")
    api.add_resource(UserPermissions, f"{repo}/permissions/user/")
    api.add_resource(TeamPermissions, f"{repo}/permissions/team/")
    api.add_resource(UserPermission, f"{repo}/permissions/user/<string:username>")
