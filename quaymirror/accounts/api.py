"""Account endpoints that Quay clients call before they reach a mirror."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from flask import request
from flask_restful import Api, Resource

from quaymirror import web
from quaymirror.accounts import service
from quaymirror.accounts.models import User
from quaymirror.accounts.schemas import (
    CreateOrganization,
    CreateRobot,
    EntitiesQuery,
    EntitiesView,
    OrganizationView,
    RobotView,
    UpdateOrganization,
    UserView,
)
from quaymirror.auth import scopes
from quaymirror.auth.permissions import require_namespace_admin
from quaymirror.auth.tokens import Caller
from quaymirror.errors import Forbidden
from quaymirror.openapi import PLAIN_STRING, Operation


class CurrentUser(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getLoggedInUser", "The user the token belongs to.", None, {200: UserView},
                         tags=("user",)),
    }

    def get(self) -> dict[str, Any]:
        return UserView().dump(service.profile(web.session(), web.caller().user))


class OrganizationList(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "post": Operation("createOrganization", "Create an organization owned by the caller.", scopes.USER_ADMIN,
                          {201: PLAIN_STRING}, body=CreateOrganization, tags=("organization",)),
    }

    def post(self) -> tuple[str, int]:
        caller = web.caller()
        if not caller.has_scope(scopes.USER_ADMIN) or caller.user.is_robot or caller.user.is_organization:
            raise Forbidden()
        data = web.load(CreateOrganization())
        session = web.session()
        with web.atomic(session):
            service.create_organization(session, data["name"], caller.user, data["email"])
        return "Created", 201


def _administered_organization(orgname: str) -> tuple[Caller, User]:
    """Quay's AdministerOrganizationPermission (an org:admin token of an admin, or a superuser with full access:
    401/403, also for an organization that does not exist), then the organization (404 for a user's
    namespace)."""
    caller = web.caller()
    session = web.session()
    require_namespace_admin(session, caller, orgname, scopes.ORG_ADMIN,
                            superuser_full_access=web.settings().superusers_full_access)
    return caller, service.organization(session, orgname)


class Organization(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getOrganization", "An organization.", None, {200: OrganizationView},
                         tags=("organization",)),
        "put": Operation("changeOrganizationDetails", "Change an organization's e-mail (Quay's other keys are "
                         "accepted and ignored).", scopes.ORG_ADMIN, {200: OrganizationView},
                         body=UpdateOrganization, tags=("organization",)),
        "delete": Operation("deleteAdminedOrganization", "Delete an organization and everything it owns.",
                            scopes.ORG_ADMIN, {204: None}, tags=("organization",)),
    }

    def get(self, orgname: str) -> dict[str, Any]:
        """Any valid token; 404 when ``orgname`` is not an organization (Ansible tells users from orgs so)."""
        caller = web.caller()
        session = web.session()
        org = service.organization(session, orgname)
        return OrganizationView().dump(service.describe_organization(session, caller, org))

    def put(self, orgname: str) -> dict[str, Any]:
        data = web.load(UpdateOrganization())  # Quay validates the body first
        caller, org = _administered_organization(orgname)
        session = web.session()
        with web.atomic(session):
            service.update_organization(session, org, data)
            body = OrganizationView().dump(service.describe_organization(session, caller, org))
        return body

    def delete(self, orgname: str) -> tuple[str, int]:
        _caller, org = _administered_organization(orgname)
        session = web.session()
        with web.atomic(session):
            service.delete_organization(session, org)
        return "", 204


def _robot_namespace(orgname: str | None) -> User:
    """The namespace whose robots the caller manages: an org (org:admin) or their own (user:admin)."""
    caller = web.caller()
    if orgname is None:
        if not caller.has_scope(scopes.USER_ADMIN) or caller.user.is_robot:
            raise Forbidden()
        return caller.user
    namespace = require_namespace_admin(web.session(), caller, orgname, scopes.ORG_ADMIN,
                                        superuser_full_access=web.settings().superusers_full_access)
    if namespace is None or not namespace.is_organization:
        raise Forbidden()
    return namespace


def _robot_operations(scope: str, suffix: str, *, get: str, put: str, delete: str) -> Mapping[str, Operation]:
    """The three operations of a robot resource (an organization's robots, or the caller's own)."""
    tags = ("robot",)
    return {
        "get": Operation(f"get{suffix}", get, scope, {200: RobotView}, tags=tags),
        "put": Operation(f"create{suffix}", put, scope, {201: RobotView}, body=CreateRobot, body_optional=True,
                         tags=tags),
        "delete": Operation(f"delete{suffix}", delete, scope, {204: None}, tags=tags),
    }


class Robot(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = _robot_operations(
        scopes.ORG_ADMIN, "OrgRobot", get="An organization's robot, token included.",
        put="Create an organization robot.", delete="Delete an organization robot.")

    def get(self, robot_shortname: str, orgname: str | None = None) -> dict[str, Any]:
        namespace = _robot_namespace(orgname)
        robot = service.robot_of(web.session(), namespace, robot_shortname)
        return RobotView().dump(service.robot_account(web.secret_box(), robot))

    def put(self, robot_shortname: str, orgname: str | None = None) -> tuple[dict[str, Any], int]:
        namespace = _robot_namespace(orgname)
        # Quay's Ansible collection sends {} or {"description": ...}; curl users often send nothing.
        data = web.load(CreateRobot()) if request.get_data(cache=True).strip() else {}
        session = web.session()
        with web.atomic(session):
            robot, _token = service.create_robot(session, web.secret_box(), namespace, robot_shortname,
                                                 data.get("description") or "")
            body = RobotView().dump(service.robot_account(web.secret_box(), robot))
        return body, 201

    def delete(self, robot_shortname: str, orgname: str | None = None) -> tuple[str, int]:
        namespace = _robot_namespace(orgname)
        session = web.session()
        with web.atomic(session):
            service.delete_robot(session, service.robot_of(session, namespace, robot_shortname))
        return "", 204


class UserRobot(Robot):
    openapi: ClassVar[Mapping[str, Operation]] = _robot_operations(
        scopes.USER_ADMIN, "UserRobot", get="One of the caller's robots, token included.",
        put="Create a robot of the caller.", delete="Delete one of the caller's robots.")


class Entities(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getMatchingEntities",
                         "Users (and a namespace's robots) whose name starts with the prefix.", None,
                         {200: EntitiesView}, tags=("entities",), query=EntitiesQuery),
    }

    def get(self, prefix: str) -> dict[str, Any]:
        """Users matching ``prefix``, plus a namespace's robots (and the org itself) for those who may see them.

        Unlike Quay (which answers anonymous callers) a valid token is required: no account enumeration.
        """
        caller = web.caller()
        args = web.query(EntitiesQuery())
        found = service.entities(web.session(), caller, prefix, args["namespace"], include_orgs=args["include_orgs"])
        return EntitiesView().dump({"results": found})


def register(api: Api) -> None:
    api.add_resource(CurrentUser, "/user/")
    api.add_resource(OrganizationList, "/organization/")
    api.add_resource(Organization, "/organization/<string:orgname>")
    api.add_resource(Robot, "/organization/<string:orgname>/robots/<string:robot_shortname>")
    api.add_resource(UserRobot, "/user/robots/<string:robot_shortname>")
    api.add_resource(Entities, "/entities/<string:prefix>")
