"""The OpenAPI 3 description of every ``/api/v1`` route, served at ``GET /api/v1/discovery`` as Quay does.

The paths come from the Flask url_map, so a route cannot be forgotten: a route
nobody documented is still described (its path parameters, its methods, every
error shape), only with a generic operationId and a free-form success body.
Path parameters take their type and bounds from the route's converter. What
each operation does, needs and answers is an :class:`Operation` kept on its
Resource class (``openapi = {"get": Operation(...)}``), so renaming a class
keeps its documentation. Request bodies, query arguments and answers are the
marshmallow schemas the resources load and dump with, through apispec's
MarshmallowPlugin; only the error bodies are JSON Schemas written here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from flask import Flask, current_app
from flask_restful import Api, Resource
from marshmallow import Schema, fields
from werkzeug.routing.converters import IntegerConverter, NumberConverter

from quaymirror import web
from quaymirror.auth import scopes
from quaymirror.errors import ERROR_DESCRIPTIONS
from quaymirror.mirror.schemas import (
    RULE_KIND,
    RULE_PATTERN_MAX,
    RULE_PATTERNS_MAX,
    RULE_TYPE,
    RootRule,
    ViewMirrorConfig,
)
from quaymirror.schemas import DateText, Int64, View

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

# The error bodies, which no resource dumps: errors.py writes them.
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
}

# The answer of Quay's endpoints that return a bare string ("Created", or "" with 201).
PLAIN_STRING: Mapping[str, Any] = {
    "type": "string", "description": "flask-restful's JSON rendering of Quay's plain string answer."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _root_rule_property(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
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


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object", list: "array"}


def _constant_property(self: Any, field: fields.Field, ret: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A constant of a view (``fields.Constant``) has the JSON type of its value."""
    if not isinstance(field, fields.Constant) or "type" in ret:
        return {}
    json_type = _JSON_TYPES.get(type(field.constant))
    return {"type": json_type} if json_type is not None else {}


def _component_name(schema: type[Schema] | Schema) -> str:
    """``UserView`` is documented as ``User``, ``CreateMirrorConfig`` as itself."""
    resolved = resolve_schema_cls(schema)
    name = (resolved[0] if isinstance(resolved, list) else resolved).__name__
    for suffix in ("View", "Schema"):
        if name.endswith(suffix) and name != suffix:
            return name[: -len(suffix)]
    return name


Part = type[Schema] | str  # a schema, or the name of one of COMPONENTS


@dataclass(frozen=True)
class AnyOf:
    """An answer that is one of several bodies (the health's 503: the health, or the database's ApiError)."""

    parts: tuple[Part, ...]


@dataclass(frozen=True)
class AllOf:
    """An answer made of several views' keys together (one sync run with its tag results)."""

    parts: tuple[Part, ...]


# What an operation answers with a status: a view, an error component's name, a combination of them, an
# inline JSON Schema, or None for no body.
Body = type[Schema] | str | AnyOf | AllOf | Mapping[str, Any] | None


@dataclass(frozen=True)
class Operation:
    """What a route's method does, needs and answers (besides the errors every operation may answer)."""

    operation_id: str
    summary: str
    scope: str | None  # None: any valid token; "" : no authentication at all
    responses: Mapping[int, Body]
    body: type[Schema] | None = None
    body_optional: bool = False
    query: type[Schema] | None = None
    tags: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()  # errors besides 400/401/403/404/503, e.g. 409


def operations_of(resource: type) -> Mapping[str, Operation]:
    """The operations a Resource class documents, by lower-case HTTP method (``openapi`` class attribute)."""
    return getattr(resource, "openapi", {})


_BODY_ERRORS = (415,)

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
    """A route nobody documented: still described, with what every route may answer."""
    return Operation(f"{method.lower()}{resource}", f"{method} {resource}", None,
                     {200: {"description": "Undocumented body."}}, body_optional=True)


def _part(part: Part) -> Any:
    return _ref(part) if isinstance(part, str) else part


def _schema(body: Body) -> Any:
    """The body's schema for apispec: views stay classes (MarshmallowPlugin turns them into references)."""
    if isinstance(body, str):
        return _ref(body)
    if isinstance(body, AnyOf):
        return {"anyOf": [_part(part) for part in body.parts]}
    if isinstance(body, AllOf):
        return {"allOf": [_part(part) for part in body.parts]}
    if isinstance(body, Mapping):
        return dict(body)  # a copy: apispec resolves schemas in place
    return body


def _response(status: int, body: Body) -> dict[str, Any]:
    if body is None:
        return {"description": "No content."}
    if isinstance(body, Mapping) and "description" in body and "type" not in body:
        return {"description": body["description"], "content": {"application/json": {"schema": {}}}}
    description = _ERROR_DESCRIPTIONS.get(status, "Error.") if status >= 400 else "Success."
    return {"description": description, "content": {"application/json": {"schema": _schema(body)}}}


def _resource(app: Flask, endpoint: str) -> tuple[str, Mapping[str, Operation]]:
    """The name of the Resource class serving ``endpoint`` and the operations it documents."""
    view = app.view_functions.get(endpoint)
    cls = getattr(view, "view_class", None)
    if cls is None:
        return endpoint, {}
    return cls.__name__, operations_of(cls)


def _new_spec() -> APISpec:
    """The document's frame: its info, the error bodies, the security scheme, and how the fields of our
    schemas read in JSON Schema."""
    plugin = MarshmallowPlugin(schema_name_resolver=_component_name)
    spec = APISpec(
        title=TITLE,
        version=VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={"description": "Quay-compatible repository mirroring API. Every operation but discovery needs "
                             "a bearer token (an OAuth access token or the admin token); the scope each "
                             "operation needs is in its security requirement and in x-scope."},
    )
    assert plugin.converter is not None  # set by APISpec(plugins=...)
    plugin.converter.add_attribute_function(_root_rule_property)
    plugin.converter.add_attribute_function(_constant_property)
    plugin.map_to_openapi_type(Int64, "integer", "int64")
    plugin.map_to_openapi_type(DateText, "string", None)
    for name, schema in COMPONENTS.items():
        spec.components.schema(name, schema)
    spec.components.schema("MirrorConfig", schema=ViewMirrorConfig)  # Quay's name for the GET body
    spec.components.security_scheme(SECURITY_SCHEME, {
        "type": "oauth2",
        "description": "Quay's OAuth access tokens (or the admin token), sent as 'Authorization: Bearer <token>'.",
        "flows": {"implicit": {"authorizationUrl": "/oauth/authorize", "scopes": SCOPE_DESCRIPTIONS}},
    })
    return spec


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of every ``/api/v1`` route of ``app``."""
    spec = _new_spec()
    paths: dict[str, dict[str, Any]] = {}
    path_params: dict[str, list[dict[str, Any]]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not (rule.rule == PREFIX or rule.rule.startswith(PREFIX + "/")) or rule.endpoint == "static":
            continue
        path, params = _openapi_path(app, rule.rule)
        path_params[path] = params
        name, documented = _resource(app, rule.endpoint)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op = documented.get(method.lower()) or _generic(name, method)
            paths.setdefault(path, {})[method.lower()] = _operation(op)

    for path, operations in paths.items():
        spec.path(path=path, operations=operations, parameters=path_params[path] or None)
    document = spec.to_dict()
    for path_item in document["paths"].values():
        if not path_item.get("parameters"):
            path_item.pop("parameters", None)
    return document


def _operation(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {str(status): _response(status, body) for status, body in op.responses.items()}
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


class DiscoveryView(View):
    """This document's top level, as far as a client relies on it."""

    openapi = fields.String(required=True)
    info = fields.Dict(required=True)
    paths = fields.Dict(required=True)


class Discovery(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("discovery", "This OpenAPI document.", "", {200: DiscoveryView}, tags=("discovery",)),
    }

    def get(self) -> dict[str, Any]:
        """No authentication, as Quay's discovery. The document itself, not a dump: it has more keys than
        the view describes."""
        return document()


def register(api: Api) -> None:
    api.add_resource(Discovery, "/discovery")
