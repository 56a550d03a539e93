"""The OpenAPI 3 description of every ``/api/v1`` route, served at ``GET /api/v1/discovery`` as Quay does.

The paths come from the Flask url_map, so a route cannot be forgotten: a route
this module knows nothing about is still described (its path parameters, its
methods, every error shape), only with a generic operationId and a free-form
success body. Path parameters take their type and bounds from the route's
converter. Request bodies, query arguments and the mirror view come from the
marshmallow schemas through apispec's MarshmallowPlugin; the other answers are
JSON Schemas written here, next to the operation table that says which answers
each operation gives and which OAuth scope it needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, current_app
from flask_restful import Api, Resource
from marshmallow import Schema
from werkzeug.routing.converters import IntegerConverter, NumberConverter

from quaymirror import web
from quaymirror.accounts.api import EntitiesQuery
from quaymirror.accounts.schemas import CreateOrganization, CreateRobot
from quaymirror.auth import scopes
from quaymirror.errors import ERROR_DESCRIPTIONS
from quaymirror.mirror.health import HealthQuery
from quaymirror.mirror.history_api import SyncListQuery
from quaymirror.mirror.schemas import (
    RULE_KIND,
    RULE_PATTERN_MAX,
    RULE_PATTERNS_MAX,
    RULE_TYPE,
    CreateMirrorConfig,
    RootRule,
    UpdateMirrorConfig,
    ViewMirrorConfig,
)
from quaymirror.repositories.models import RepositoryState
from quaymirror.repositories.schemas import ChangeState, CreateRepository, SetPermission

PREFIX = "/api/v1"
SECURITY_SCHEME = "oauth2_implicit"
TITLE = "quaymirror"
VERSION = "v1"
OPENAPI_VERSION = "3.0.3"
EXTENSION_KEY = "quaymirror.openapi"

SCOPE_DESCRIPTIONS = {
    scopes.REPO_READ: "View all visible repositories",
    scopes.REPO_WRITE: "Read/Write to any accessible repositories",
    scopes.REPO_ADMIN: "Administer Repositories",
    scopes.REPO_CREATE: "Create Repositories",
    scopes.USER_READ: "Read User Information",
    scopes.USER_ADMIN: "Administer User",
    scopes.ORG_ADMIN: "Administer Organization",
    scopes.SUPERUSER: "Super User Access",
}

_RULE_VARIABLE = re.compile(r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\([^>]*\))?:)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")

_ROLE = {"type": "string", "enum": ["read", "write", "admin"]}
_AVATAR = {"type": "object", "required": ["name", "kind"],
           "properties": {"name": {"type": "string"}, "kind": {"type": "string"}}}

# Plain JSON Schemas of the answers that no marshmallow schema describes.
COMPONENTS: dict[str, dict[str, Any]] = {
    "ApiError": {
        "type": "object",
        "description": "Quay's ApiError body.",
        "required": ["detail", "error_message", "error_type", "title", "type", "status"],
        "properties": {
            "detail": {"type": "string"},
            "error_message": {"type": "string"},
            "error_type": {"type": "string", "enum": sorted(ERROR_DESCRIPTIONS)},
            "title": {"type": "string"},
            "type": {"type": "string"},
            "status": {"type": "integer"},
        },
    },
    "DetailError": {
        "type": "object",
        "description": "Quay's hand-written answer (dates, architectures, credentials, 409).",
        "required": ["detail"],
        "properties": {"detail": {"type": "string"}},
        "additionalProperties": False,
    },
    "MessageError": {
        "type": "object",
        "description": "Quay's DataModelException answer (robots), and malformed JSON or wrong content type.",
        "required": ["message"],
        "properties": {"message": {"type": "string"}},
        "additionalProperties": False,
    },
    "User": {
        "type": "object",
        "required": ["anonymous", "username", "email", "verified", "kind", "super_user", "is_me", "organizations"],
        "properties": {
            "anonymous": {"type": "boolean"},
            "username": {"type": "string"},
            "email": {"type": "string", "nullable": True},
            "verified": {"type": "boolean"},
            "kind": {"type": "string"},
            "super_user": {"type": "boolean"},
            "is_me": {"type": "boolean"},
            "organizations": {"type": "array", "items": {
                "type": "object", "required": ["name", "kind"],
                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}}}},
        },
    },
    "Organization": {
        "type": "object",
        "required": ["name", "email", "is_admin", "is_member", "is_org_admin", "can_create_repo"],
        "properties": {
            "name": {"type": "string"},
            "email": {"type": "string"},
            "is_admin": {"type": "boolean"},
            "is_member": {"type": "boolean"},
            "is_org_admin": {"type": "boolean"},
            "can_create_repo": {"type": "boolean"},
        },
    },
    "Robot": {
        "type": "object",
        "required": ["name", "created", "last_accessed", "description", "token", "unstructured_metadata"],
        "properties": {
            "name": {"type": "string"},
            "created": {"type": "string"},
            "last_accessed": {"type": "string", "nullable": True},
            "description": {"type": "string", "nullable": True},
            "token": {"type": "string", "nullable": True},
            "unstructured_metadata": {"type": "object"},
        },
    },
    "Entities": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "kind"],
            "properties": {
                "name": {"type": "string"},
                "kind": {"type": "string", "enum": ["user", "org"]},
                "is_robot": {"type": "boolean"},
                "is_org_member": {"type": "boolean"},
                "avatar": _AVATAR,
            },
        }}},
    },
    "CreatedRepository": {
        "type": "object",
        "required": ["namespace", "name", "kind"],
        "properties": {"namespace": {"type": "string"}, "name": {"type": "string"}, "kind": {"type": "string"}},
    },
    "Repository": {
        "type": "object",
        "required": ["namespace", "name", "kind", "description", "is_public", "is_organization", "is_starred",
                     "state", "can_write", "can_admin", "status_token", "trust_enabled", "tag_expiration_s"],
        "properties": {
            "namespace": {"type": "string"},
            "name": {"type": "string"},
            "kind": {"type": "string"},
            "description": {"type": "string", "nullable": True},
            "is_public": {"type": "boolean"},
            "is_organization": {"type": "boolean"},
            "is_starred": {"type": "boolean"},
            "state": {"type": "string", "enum": [s.name for s in RepositoryState]},
            "can_write": {"type": "boolean"},
            "can_admin": {"type": "boolean"},
            "status_token": {"type": "string"},
            "trust_enabled": {"type": "boolean"},
            "tag_expiration_s": {"type": "integer"},
        },
    },
    "Success": {
        "type": "object",
        "required": ["success"],
        "properties": {"success": {"type": "boolean", "enum": [True]}},
    },
    "Permission": {
        "type": "object",
        "required": ["role", "name", "is_robot"],
        "properties": {
            "role": _ROLE,
            "name": {"type": "string"},
            "is_robot": {"type": "boolean"},
            "avatar": _AVATAR,
            "is_org_member": {"type": "boolean"},
        },
    },
    "Permissions": {
        "type": "object",
        "required": ["permissions"],
        "properties": {"permissions": {"type": "object",
                                       "additionalProperties": {"$ref": "#/components/schemas/Permission"}}},
    },
    "SyncRun": {
        "type": "object",
        "required": ["id", "trigger", "status", "in_progress", "started", "finished", "duration_seconds",
                     "reason", "message", "worker", "tags", "progress", "bytes"],
        "properties": {
            "id": {"type": "integer"},
            "trigger": {"type": "string"},
            "status": {"type": "string"},
            "in_progress": {"type": "boolean"},
            "started": {"type": "string", "nullable": True},
            "finished": {"type": "string", "nullable": True},
            "duration_seconds": {"type": "number", "nullable": True},
            "reason": {"type": "string", "nullable": True},
            "message": {"type": "string", "nullable": True},
            "worker": {"type": "string", "nullable": True},
            "tags": {"type": "object",
                     "required": ["matched", "done", "copied", "skipped", "deleted", "failed"],
                     "properties": {k: {"type": "integer", "nullable": True}
                                    for k in ("matched", "done", "copied", "skipped", "deleted", "failed")}},
            "progress": {"type": "object", "required": ["done", "total"],
                         "properties": {"done": {"type": "integer", "nullable": True},
                                        "total": {"type": "integer", "nullable": True}}},
            "bytes": {"type": "integer", "nullable": True},
        },
    },
    "SyncRunList": {
        "type": "object",
        "required": ["syncs", "page", "has_additional"],
        "properties": {
            "syncs": {"type": "array", "items": {"$ref": "#/components/schemas/SyncRun"}},
            "page": {"type": "integer"},
            "has_additional": {"type": "boolean"},
        },
    },
    "SyncTagResult": {
        "type": "object",
        "required": ["tag", "digest", "outcome", "reason", "output", "bytes", "duration_ms", "finished"],
        "properties": {
            "tag": {"type": "string"},
            "digest": {"type": "string", "nullable": True},
            "outcome": {"type": "string"},
            "reason": {"type": "string", "nullable": True},
            "output": {"type": "string", "nullable": True},
            "bytes": {"type": "integer", "nullable": True},
            "duration_ms": {"type": "integer", "nullable": True},
            "finished": {"type": "string", "nullable": True},
        },
    },
    "SyncRunDetail": {
        "allOf": [
            {"$ref": "#/components/schemas/SyncRun"},
            {"type": "object", "required": ["tag_results"],
             "properties": {"tag_results": {"type": "array",
                                            "items": {"$ref": "#/components/schemas/SyncTagResult"}}}},
        ],
    },
    "MirrorHealth": {
        "type": "object",
        "required": ["healthy", "workers", "repositories", "tags_pending", "last_check", "issues"],
        "properties": {
            "healthy": {"type": "boolean"},
            "workers": {"type": "object", "required": ["active", "configured", "status"],
                        "properties": {"active": {"type": "integer"}, "configured": {"type": "integer"},
                                       "status": {"type": "string", "enum": ["healthy", "degraded"]}}},
            "repositories": {"type": "object"},
            "tags_pending": {"type": "integer"},
            "last_check": {"type": "string", "nullable": True},
            "issues": {"type": "array"},
        },
    },
    "Discovery": {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "properties": {"openapi": {"type": "string"}, "info": {"type": "object"}, "paths": {"type": "object"}},
    },
}

_STRING_BODY = {"type": "string", "description": "flask-restful's JSON rendering of Quay's plain string answer."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _root_rule_property(self, field, **kwargs) -> dict[str, Any]:
    """``root_rule`` in both shapes RootRule accepts (MarshmallowPlugin would say "anything")."""
    if not isinstance(field, RootRule):
        return {}
    patterns = {"type": "array", "maxItems": RULE_PATTERNS_MAX,
                "items": {"type": "string", "maxLength": RULE_PATTERN_MAX}}
    return {
        "anyOf": [
            {"type": "object", "required": ["rule_kind", "rule_value"],
             "properties": {"rule_kind": {"type": "string", "enum": [RULE_KIND]}, "rule_value": patterns}},
            {"type": "object", "required": ["rule_type", "rule"],
             "properties": {"rule_type": {"type": "string", "enum": [RULE_TYPE, RULE_TYPE.lower()]},
                            "rule": {"oneOf": [{"type": "string"}, patterns]}}},
        ],
        "description": "Tag globs: Quay's {rule_kind, rule_value} or its documented {rule_type, rule}.",
    }


@dataclass(frozen=True)
class Operation:
    """What a route's method does, needs and answers (besides the errors every operation may answer)."""

    operation_id: str
    summary: str
    scope: str | None  # None: any valid token; "" : no authentication at all
    responses: dict[int, Any]  # status -> component name, inline schema, or None (no body)
    body: type[Schema] | None = None
    body_optional: bool = False
    query: type[web.Query] | None = None
    tags: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()  # errors besides 400/401/403/404/503, e.g. 409


_BODY_ERRORS = (415,)

# Keyed by (flask-restful Resource class name, HTTP method).
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("Discovery", "GET"): Operation("discovery", "This OpenAPI document.", "", {200: "Discovery"},
                                    tags=("discovery",)),
    ("CurrentUser", "GET"): Operation("getLoggedInUser", "The user the token belongs to.", None,
                                      {200: "User"}, tags=("user",)),
    ("OrganizationList", "POST"): Operation("createOrganization", "Create an organization owned by the caller.",
                                            scopes.USER_ADMIN, {201: _STRING_BODY}, body=CreateOrganization,
                                            tags=("organization",)),
    ("Organization", "GET"): Operation("getOrganization", "An organization.", None, {200: "Organization"},
                                       tags=("organization",)),
    ("Robot", "GET"): Operation("getOrgRobot", "An organization's robot, token included.", scopes.ORG_ADMIN,
                                {200: "Robot"}, tags=("robot",)),
    ("Robot", "PUT"): Operation("createOrgRobot", "Create an organization robot.", scopes.ORG_ADMIN,
                                {201: "Robot"}, body=CreateRobot, body_optional=True, tags=("robot",)),
    ("Robot", "DELETE"): Operation("deleteOrgRobot", "Delete an organization robot.", scopes.ORG_ADMIN,
                                   {204: None}, tags=("robot",)),
    ("UserRobot", "GET"): Operation("getUserRobot", "One of the caller's robots, token included.",
                                    scopes.USER_ADMIN, {200: "Robot"}, tags=("robot",)),
    ("UserRobot", "PUT"): Operation("createUserRobot", "Create a robot of the caller.", scopes.USER_ADMIN,
                                    {201: "Robot"}, body=CreateRobot, body_optional=True, tags=("robot",)),
    ("UserRobot", "DELETE"): Operation("deleteUserRobot", "Delete one of the caller's robots.", scopes.USER_ADMIN,
                                       {204: None}, tags=("robot",)),
    ("Entities", "GET"): Operation(
        "getMatchingEntities", "Users (and a namespace's robots) whose name starts with the prefix.", None,
        {200: "Entities"}, tags=("entities",), query=EntitiesQuery),
    ("RepositoryList", "POST"): Operation("createRepo", "Create a repository.", scopes.REPO_CREATE,
                                          {201: "CreatedRepository"}, body=CreateRepository,
                                          tags=("repository",)),
    ("RepositoryResource", "GET"): Operation("getRepo", "A repository.", scopes.REPO_READ, {200: "Repository"},
                                             tags=("repository",)),
    ("RepositoryResource", "DELETE"): Operation("deleteRepository", "Delete a repository.", scopes.REPO_ADMIN,
                                                {204: None}, tags=("repository",)),
    ("ChangeStateResource", "PUT"): Operation("changeRepoState", "Change a repository's state.",
                                              scopes.REPO_ADMIN, {200: "Success"}, body=ChangeState,
                                              tags=("repository",)),
    ("UserPermissions", "GET"): Operation("listRepoUserPermissions", "The users' roles on a repository.",
                                          scopes.REPO_ADMIN, {200: "Permissions"}, tags=("permission",)),
    ("TeamPermissions", "GET"): Operation("listRepoTeamPermissions", "The teams' roles on a repository (none).",
                                          scopes.REPO_ADMIN, {200: "Permissions"}, tags=("permission",)),
    ("UserPermission", "GET"): Operation("getUserPermissions", "A user's role on a repository.",
                                         scopes.REPO_ADMIN, {200: "Permission"}, tags=("permission",)),
    ("UserPermission", "PUT"): Operation("changeUserPermissions", "Set a user's role on a repository.",
                                         scopes.REPO_ADMIN, {200: "Permission"}, body=SetPermission,
                                         tags=("permission",)),
    ("UserPermission", "DELETE"): Operation("deleteUserPermissions", "Remove a user's role on a repository.",
                                            scopes.REPO_ADMIN, {204: None}, tags=("permission",)),
    ("RepositoryMirror", "GET"): Operation("getRepoMirrorConfig", "The repository's mirror configuration.",
                                           scopes.REPO_ADMIN, {200: ViewMirrorConfig}, tags=("mirror",)),
    ("RepositoryMirror", "POST"): Operation("createRepoMirrorConfig", "Create the mirror configuration.",
                                            scopes.REPO_ADMIN, {201: _STRING_BODY}, body=CreateMirrorConfig,
                                            tags=("mirror",), errors=(409,)),
    ("RepositoryMirror", "PUT"): Operation("changeRepoMirrorConfig", "Change the mirror configuration.",
                                           scopes.REPO_ADMIN, {201: _STRING_BODY}, body=UpdateMirrorConfig,
                                           tags=("mirror",)),
    ("RepositoryMirror", "DELETE"): Operation("deleteRepoMirrorConfig", "Delete the mirror configuration.",
                                              scopes.REPO_ADMIN, {204: None}, tags=("mirror",)),
    ("RepositoryMirrorSyncNow", "POST"): Operation("syncNow", "Sync the mirror as soon as possible.",
                                                   scopes.REPO_ADMIN, {204: None}, tags=("mirror",)),
    ("RepositoryMirrorSyncCancel", "POST"): Operation("syncCancel", "Cancel the running or pending sync.",
                                                      scopes.REPO_ADMIN, {204: None}, tags=("mirror",)),
    ("MirrorSyncs", "GET"): Operation(
        "listRepoMirrorSyncs", "The mirror's sync runs, newest first.", scopes.REPO_ADMIN, {200: "SyncRunList"},
        tags=("mirror",), query=SyncListQuery),
    ("RepositoryMirrorHealth", "GET"): Operation(
        "getRepoMirrorHealth", "Mirror health: workers, repositories, pending tags (503 when degraded).", None,
        {200: "MirrorHealth", 503: {"anyOf": [_ref("MirrorHealth"), _ref("ApiError")]}}, tags=("mirror",),
        query=HealthQuery),
    ("SuperuserMirrorHealth", "GET"): Operation(
        "getSuperuserMirrorHealth",
        "Mirror health of every namespace for any superuser (super:user scope; full access not needed): "
        "the summary without per-repository issues or details (503 when degraded).",
        scopes.SUPERUSER, {200: "MirrorHealth", 503: {"anyOf": [_ref("MirrorHealth"), _ref("ApiError")]}},
        tags=("superuser", "mirror")),
    ("MirrorSync", "GET"): Operation("getRepoMirrorSync", "One sync run with its per-tag results.",
                                     scopes.REPO_ADMIN, {200: "SyncRunDetail"}, tags=("mirror",)),
}

_ERROR_DESCRIPTIONS = {
    400: "Invalid request (ApiError), or Quay's {\"detail\"} / {\"message\"} answers.",
    401: "Missing, unknown or expired token.",
    403: "The token lacks the scope, or its owner the role.",
    404: "No such resource.",
    409: "Conflict (Quay's {\"detail\"} answer).",
    415: "The body is not JSON (Quay's {\"message\"} answer).",
    503: "The database is unavailable.",
}


def _error_schema(status: int) -> dict[str, Any]:
    if status == 400:
        return {"anyOf": [_ref("ApiError"), _ref("DetailError"), _ref("MessageError")]}
    if status == 409:
        return _ref("DetailError")
    if status == 415:
        return _ref("MessageError")
    return _ref("ApiError")


def _converter_schema(app: Flask, name: str) -> dict[str, Any]:
    """A path parameter's schema, from the bounds its converter enforces (a value outside answers 404)."""
    converter = app.url_map.converters.get(name or "default")
    if converter is not None and issubclass(converter, web.IdConverter):
        return {"type": "integer", "format": "int64",
                "minimum": converter.minimum, "maximum": converter.maximum}
    if converter is not None and issubclass(converter, NumberConverter):  # werkzeug's: unsigned, unbounded
        return {"type": "integer" if issubclass(converter, IntegerConverter) else "number", "minimum": 0}
    return {"type": "string", "minLength": 1}


def _openapi_path(app: Flask, rule: str) -> tuple[str, list[dict[str, Any]]]:
    params: list[dict[str, Any]] = []

    def replace(match: re.Match) -> str:
        name = match.group("name")
        params.append({"name": name, "in": "path", "required": True,
                       "schema": _converter_schema(app, match.group("converter"))})
        return "{" + name + "}"

    return _RULE_VARIABLE.sub(replace, rule), params


def _generic(resource: str, method: str) -> Operation:
    """A route the table does not know: still described, with what every route may answer."""
    return Operation(f"{method.lower()}{resource}", f"{method} {resource}", None,
                     {200: {"description": "Undocumented body."}}, body_optional=True)


def _response(spec: APISpec, status: int, body: Any) -> dict[str, Any]:
    if body is None:
        return {"description": "No content."}
    if isinstance(body, str):
        schema: Any = _ref(body)
    elif status >= 400:
        return {"description": _ERROR_DESCRIPTIONS.get(status, "Error."),
                "content": {"application/json": {"schema": body}}}
    elif isinstance(body, type) and issubclass(body, Schema):
        schema = body
    elif "description" in body and "type" not in body:
        return {"description": body["description"], "content": {"application/json": {"schema": {}}}}
    else:
        schema = body
    return {"description": "Success.", "content": {"application/json": {"schema": schema}}}


def _resource_name(app: Flask, endpoint: str) -> str:
    view = app.view_functions.get(endpoint)
    cls = getattr(view, "view_class", None)
    return cls.__name__ if cls is not None else endpoint


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of every ``/api/v1`` route of ``app``."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title=TITLE,
        version=VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={"description": "Quay-compatible repository mirroring API. Every operation but discovery needs "
                             "a bearer token (an OAuth access token or the admin token); the scope each "
                             "operation needs is in its security requirement and in x-scope."},
    )
    plugin.converter.add_attribute_function(_root_rule_property)
    plugin.map_to_openapi_type(web.Int64, "integer", "int64")
    for name, schema in COMPONENTS.items():
        spec.components.schema(name, schema)
    spec.components.schema("MirrorConfig", schema=ViewMirrorConfig)
    spec.components.schema("CreateMirrorConfig", schema=CreateMirrorConfig)
    spec.components.schema("UpdateMirrorConfig", schema=UpdateMirrorConfig)
    spec.components.security_scheme(SECURITY_SCHEME, {
        "type": "oauth2",
        "description": "Quay's OAuth access tokens (or the admin token), sent as 'Authorization: Bearer <token>'.",
        "flows": {"implicit": {"authorizationUrl": "/oauth/authorize", "scopes": SCOPE_DESCRIPTIONS}},
    })

    paths: dict[str, dict[str, Any]] = {}
    path_params: dict[str, list[dict[str, Any]]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not (rule.rule == PREFIX or rule.rule.startswith(PREFIX + "/")) or rule.endpoint == "static":
            continue
        path, params = _openapi_path(app, rule.rule)
        path_params[path] = params
        resource = _resource_name(app, rule.endpoint)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op = OPERATIONS.get((resource, method)) or _generic(resource, method)
            paths.setdefault(path, {})[method.lower()] = _operation(spec, op)

    for path, operations in paths.items():
        spec.path(path=path, operations=operations,
                  parameters=path_params[path] or None)  # type: ignore[arg-type]
    document = spec.to_dict()
    for path_item in document["paths"].values():
        if not path_item.get("parameters"):
            path_item.pop("parameters", None)
    return document


def _operation(spec: APISpec, op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {str(status): _response(spec, status, body) for status, body in op.responses.items()}
    error_statuses = [400, 404, 503, *op.errors]
    if op.scope != "":
        error_statuses += [401, 403]
    if op.body is not None:
        error_statuses += list(_BODY_ERRORS)
    for status in sorted(set(error_statuses)):
        if str(status) in responses:  # the operation answers this status with its own body
            continue
        responses[str(status)] = {"description": _ERROR_DESCRIPTIONS[status],
                                  "content": {"application/json": {"schema": _error_schema(status)}}}
    # gunicorn answers a request line over its limit itself, before the API sees it, as nginx does for Quay.
    responses["414"] = {"description": "Request line longer than 4094 bytes (answered by the HTTP server).",
                        "content": {"text/html": {"schema": {"type": "string"}}}}
    operation: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "responses": responses,
    }
    if op.tags:
        operation["tags"] = list(op.tags)
    if op.scope == "":
        operation["security"] = []
    else:
        operation["security"] = [{SECURITY_SCHEME: [op.scope] if op.scope else []}]
        operation["x-scope"] = op.scope or "any valid token"
    if op.query is not None:  # apispec expands the schema into one parameter per argument
        operation["parameters"] = [{"in": "query", "schema": op.query}]
    if op.body is not None:
        operation["requestBody"] = {"required": not op.body_optional,
                                    "content": {"application/json": {"schema": op.body}}}
    return operation


def document(app: Flask | None = None) -> dict[str, Any]:
    """The app's document, built once (the url_map does not change after the first request)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    cached = app.extensions.get(EXTENSION_KEY)
    if cached is None:
        cached = app.extensions[EXTENSION_KEY] = build_spec(app)
    return cached


class Discovery(Resource):
    def get(self):
        """No authentication, as Quay's discovery."""
        return document()


def register(api: Api) -> None:
    api.add_resource(Discovery, "/discovery")
