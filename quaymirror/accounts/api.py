"""Account endpoints that Quay clients call before they reach a mirror."""

from __future__ import annotations

from flask import current_app, request
from flask_restful import Api, Resource
from marshmallow import fields

from quaymirror import web
from quaymirror.accounts import service
from quaymirror.accounts.models import User
from quaymirror.accounts.schemas import CreateOrganization, CreateRobot
from quaymirror.auth import scopes
from quaymirror.auth.permissions import is_namespace_admin, is_namespace_member, require_namespace_admin
from quaymirror.errors import Forbidden


def _box():
    return current_app.extensions["quaymirror.secrets"]


class CurrentUser(Resource):
    def get(self):
        caller = web.caller()
        user = caller.user
        orgs = service.organizations_of(web.session(), user)
        return {
            "anonymous": False,
            "username": user.username,
            "email": user.email,
            "verified": True,
            "kind": user.kind,
            "super_user": user.is_superuser,
            "is_me": True,
            "organizations": [{"name": o.username, "kind": "org"} for o in orgs],
        }


class OrganizationList(Resource):
    def post(self):
        caller = web.caller()
        if not caller.has_scope(scopes.USER_ADMIN) or caller.user.is_robot or caller.user.is_organization:
            raise Forbidden()
        data = web.load(CreateOrganization())
        session = web.session()
        with web.atomic(session):
            service.create_organization(session, data["name"], caller.user, data["email"])
        return "Created", 201


class Organization(Resource):
    def get(self, orgname: str):
        """Any valid token; 404 when ``orgname`` is not an organization (Ansible tells users from orgs so)."""
        caller = web.caller()
        session = web.session()
        org = service.organization(session, orgname)
        # As Quay's AdministerOrganizationPermission: an org admin whose token carries org:admin.
        is_admin = caller.has_scope(scopes.ORG_ADMIN) and is_namespace_admin(session, caller.user, org)
        is_member = is_namespace_member(session, caller.user, org)
        return {
            "name": org.username,
            "email": (org.email or "") if is_admin else "",
            "is_admin": is_admin,
            "is_member": is_member,
            "is_org_admin": is_admin,
            "can_create_repo": is_namespace_admin(session, caller.user, org)
            and caller.has_scope(scopes.REPO_CREATE),
        }


def _robot_namespace(orgname: str | None) -> User:
    """The namespace whose robots the caller manages: an org (org:admin) or their own (user:admin)."""
    caller = web.caller()
    session = web.session()
    if orgname is None:
        if not caller.has_scope(scopes.USER_ADMIN) or caller.user.is_robot:
            raise Forbidden()
        return caller.user
    settings = web.settings()
    namespace = require_namespace_admin(session, caller, orgname, scopes.ORG_ADMIN,
                                        superuser_full_access=settings.superusers_full_access)
    if namespace is None or not namespace.is_organization:
        raise Forbidden()
    return namespace


class Robot(Resource):
    def get(self, robot_shortname: str, orgname: str | None = None):
        namespace = _robot_namespace(orgname)
        robot = service.robot_of(web.session(), namespace, robot_shortname)
        return service.robot_view(_box(), robot)

    def put(self, robot_shortname: str, orgname: str | None = None):
        namespace = _robot_namespace(orgname)
        # Quay's Ansible collection sends {} or {"description": ...}; curl users often send nothing.
        data = web.load(CreateRobot()) if request.get_data(cache=True).strip() else {}
        session = web.session()
        with web.atomic(session):
            robot, _token = service.create_robot(session, _box(), namespace, robot_shortname,
                                                 data.get("description") or "")
        return service.robot_view(_box(), robot), 201

    def delete(self, robot_shortname: str, orgname: str | None = None):
        namespace = _robot_namespace(orgname)
        session = web.session()
        with web.atomic(session):
            service.delete_robot(session, service.robot_of(session, namespace, robot_shortname))
        return "", 204


class UserRobot(Robot):
    pass


_FLAG_TRUE = {"true", "1", "yes", "on"}


class EntitiesQuery(web.Query):
    """Quay's lenient flags (``includeOrgs=False`` is what Ansible sends): absent or any other word is false.
    ``includeTeams`` is accepted and has no effect (there are no teams)."""

    namespace = fields.String(load_default="", metadata={"description": "Also this namespace's robots."})
    include_orgs = web.QueryBool(truthy=_FLAG_TRUE, falsy=None, load_default=False, data_key="includeOrgs",
                                 metadata={"description": "Also the organization itself (its admins)."})
    include_teams = web.QueryBool(truthy=_FLAG_TRUE, falsy=None, load_default=False, data_key="includeTeams",
                                  metadata={"description": "Accepted; there are no teams."})


class Entities(Resource):
    def get(self, prefix: str):
        """Users matching ``prefix``, plus a namespace's robots (and the org itself) for those who may see them.

        Unlike Quay (which answers anonymous callers) a valid token is required: no account enumeration.
        """
        caller = web.caller()
        args = web.query(EntitiesQuery())
        session = web.session()
        prefix = "".join(prefix.split()).lower()
        robot_namespace = None
        org = None
        org_data: list[dict] = []
        namespace = service.get_by_name(session, args["namespace"])
        if namespace is not None and namespace.is_organization:
            if is_namespace_member(session, caller.user, namespace):
                robot_namespace = org = namespace
                if (args["include_orgs"] and caller.has_scope(scopes.ORG_ADMIN)
                        and is_namespace_admin(session, caller.user, namespace)
                        and namespace.username.startswith(prefix)):
                    org_data.append({"name": namespace.username, "kind": "org", "is_org_member": True,
                                     "avatar": {"name": namespace.username, "kind": "org"}})
        elif (namespace is not None and not namespace.is_robot and namespace.id == caller.user.id
              and caller.has_scope(scopes.USER_ADMIN)):
            robot_namespace = namespace
        members = set(service.organization_member_names(session, org)) if org is not None else set()
        results = org_data + [
            {
                "name": user.username,
                "kind": "user",
                "is_robot": user.is_robot,
                "avatar": {"name": user.username, "kind": "robot" if user.is_robot else "user"},
                **({"is_org_member": user.is_robot or user.username in members} if org is not None else {}),
            }
            for user in service.search_entities(session, prefix, robot_namespace)
        ]
        return {"results": results}


def register(api: Api) -> None:
    api.add_resource(CurrentUser, "/user/")
    api.add_resource(OrganizationList, "/organization/")
    api.add_resource(Organization, "/organization/<string:orgname>")
    api.add_resource(Robot, "/organization/<string:orgname>/robots/<string:robot_shortname>")
    api.add_resource(UserRobot, "/user/robots/<string:robot_shortname>")
    api.add_resource(Entities, "/entities/<string:prefix>")


