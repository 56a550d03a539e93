"""Account endpoints that Quay clients call before they reach a mirror."""

from __future__ import annotations

from flask import current_app, request
from flask_restful import Api, Resource

from quaymirror import web
from quaymirror.accounts import service
from quaymirror.accounts.models import User
from quaymirror.accounts.schemas import CreateOrganization, CreateRobot
from quaymirror.auth import scopes
from quaymirror.auth.permissions import is_namespace_admin, is_namespace_member, require_namespace_admin
from quaymirror.errors import AuthenticationRequired, Forbidden


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
        caller = web.caller(required=False)
        session = web.session()
        org = service.organization(session, orgname)
        is_admin = caller is not None and is_namespace_admin(session, caller.user, org)
        is_member = caller is not None and is_namespace_member(session, caller.user, org)
        return {
            "name": org.username,
            "email": org.email if is_admin else None,
            "is_admin": is_admin,
            "is_member": is_member,
            "is_org_admin": is_admin,
            "can_create_repo": is_admin,
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
        data = web.load(CreateRobot()) if request.content_length else {"description": ""}
        session = web.session()
        with web.atomic(session):
            robot, _token = service.create_robot(session, _box(), namespace, robot_shortname, data["description"])
        return service.robot_view(_box(), robot), 201

    def delete(self, robot_shortname: str, orgname: str | None = None):
        namespace = _robot_namespace(orgname)
        session = web.session()
        with web.atomic(session):
            service.delete_robot(session, service.robot_of(session, namespace, robot_shortname))
        return "", 204


class UserRobot(Robot):
    pass


class Entities(Resource):
    def get(self, prefix: str):
        caller = web.caller(required=False)
        if caller is None and request.headers.get("Authorization"):
            raise AuthenticationRequired()
        session = web.session()
        include_orgs = request.args.get("includeOrgs", "true").lower() not in {"false", "0"}
        namespace = None
        ns_name = request.args.get("namespace")
        if ns_name and caller is not None:
            candidate = service.get_by_name(session, ns_name)
            if candidate is not None and is_namespace_admin(session, caller.user, candidate):
                namespace = candidate
        results = [
            {
                "name": user.username,
                "kind": "user" if user.is_robot else user.kind,
                "is_robot": user.is_robot,
                "is_org_member": namespace is not None and user.robot_namespace_id == namespace.id,
            }
            for user in service.search_entities(session, prefix, include_orgs, namespace)
        ]
        return {"results": results}


def register(api: Api) -> None:
    api.add_resource(CurrentUser, "/user/")
    api.add_resource(OrganizationList, "/organization/")
    api.add_resource(Organization, "/organization/<string:orgname>")
    api.add_resource(Robot, "/organization/<string:orgname>/robots/<string:robot_shortname>")
    api.add_resource(UserRobot, "/user/robots/<string:robot_shortname>")
    api.add_resource(Entities, "/entities/<string:prefix>")


