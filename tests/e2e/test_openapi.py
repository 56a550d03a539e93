"""The OpenAPI document at /api/v1/discovery: valid OpenAPI 3, and every registered /api/v1 route in it."""

from __future__ import annotations

import re

import pytest
import schemathesis

from quaymirror.app import create_app
from quaymirror.auth import scopes
from quaymirror.openapi import PREFIX, SECURITY_SCHEME, build_spec, operations_of

RULE_VARIABLE = re.compile(r"<(?:[^:>]+:)?([^>]+)>")

QUAY_NICKNAMES = {
    ("/api/v1/repository/{namespace}/{repository}/mirror", "get"): "getRepoMirrorConfig",
    ("/api/v1/repository/{namespace}/{repository}/mirror", "post"): "createRepoMirrorConfig",
    ("/api/v1/repository/{namespace}/{repository}/mirror", "put"): "changeRepoMirrorConfig",
    ("/api/v1/repository/{namespace}/{repository}/mirror/sync-now", "post"): "syncNow",
    ("/api/v1/repository/{namespace}/{repository}/mirror/sync-cancel", "post"): "syncCancel",
    ("/api/v1/repository/{namespace}/{repository}/changestate", "put"): "changeRepoState",
    ("/api/v1/repository", "post"): "createRepo",
    ("/api/v1/repository/{namespace}/{repository}", "get"): "getRepo",
    ("/api/v1/user/", "get"): "getLoggedInUser",
    ("/api/v1/organization/{orgname}/robots/{robot_shortname}", "put"): "createOrgRobot",
    ("/api/v1/discovery", "get"): "discovery",
    ("/api/v1/organization/{orgname}/mirror", "get"): "getOrgMirrorConfig",
    ("/api/v1/organization/{orgname}/mirror", "post"): "createOrgMirrorConfig",
    ("/api/v1/organization/{orgname}/mirror", "put"): "updateOrgMirrorConfig",
    ("/api/v1/organization/{orgname}/mirror", "delete"): "deleteOrgMirrorConfig",
    ("/api/v1/organization/{orgname}/mirror/sync-now", "post"): "syncOrgMirrorNow",
    ("/api/v1/organization/{orgname}/mirror/sync-cancel", "post"): "cancelOrgMirrorSync",
    ("/api/v1/organization/{orgname}/mirror/verify", "post"): "verifyOrgMirrorConnection",
    ("/api/v1/organization/{orgname}/mirror/repositories", "get"): "listOrgMirrorRepositories",
}

# Answered without authentication (as Quay's): no 401 or 403 documented.
PUBLIC = {"/api/v1/discovery", "/api/v1/registry/capabilities"}


@pytest.fixture
def app(settings, database):
    return create_app(settings, database)


@pytest.fixture
def served(app) -> dict:
    response = app.test_client().get("/api/v1/discovery")  # no token: public, as Quay's
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def _routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or not rule.rule.startswith(PREFIX):
            continue
        path = RULE_VARIABLE.sub(lambda m: "{" + m.group(1) + "}", rule.rule)
        routes |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_document_is_valid_openapi_3(served):
    assert served["openapi"].startswith("3.")
    schema = schemathesis.openapi.from_dict(served)
    schema.validate()  # the OpenAPI 3 meta-schema (raises on any violation)
    broken = {**served, "paths": {"/x": {"get": {"responses": {"200": {"content": 5}}}}}}
    with pytest.raises(Exception, match="."):  # the check above does check
        schemathesis.openapi.from_dict(broken).validate()
    assert len(list(schema.get_all_operations())) == sum(
        len([m for m in item if m in {"get", "put", "post", "delete", "patch"}]) for item in served["paths"].values()
    )
    operation_ids = [op["operationId"] for item in served["paths"].values() for m, op in item.items()
                     if isinstance(op, dict) and "operationId" in op]
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_every_registered_route_is_described_with_its_methods(app, served):
    routes = _routes(app)
    assert len(routes) >= 25, routes
    described = {(path, method) for path, item in served["paths"].items() for method in item
                 if method in {"get", "put", "post", "delete", "patch"}}
    assert described == routes
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or not rule.rule.startswith(PREFIX):
            continue
        resource = app.view_functions[rule.endpoint].view_class
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in operations_of(resource), (
                f"{method} {rule.rule} ({resource.__name__}) has no documentation entry")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_path_parameters_bodies_errors_and_scopes(served):
    paths = served["paths"]
    for (path, method), nickname in QUAY_NICKNAMES.items():
        assert paths[path][method]["operationId"] == nickname
    for path, item in paths.items():
        names = set(re.findall(r"{([^}]+)}", path))
        documented = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert documented == names, path
        for method, op in item.items():
            if method == "parameters":
                continue
            responses = op["responses"]
            assert {"400", "404", "503"} <= set(responses), (path, method)
            if path in PUBLIC:
                assert op["security"] == []
                continue
            assert {"401", "403"} <= set(responses), (path, method)
            assert responses["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ApiError"}
            bad = responses["400"]["content"]["application/json"]["schema"]["anyOf"]
            assert {"$ref": "#/components/schemas/DetailError"} in bad
            assert {"$ref": "#/components/schemas/MessageError"} in bad
            [requirement] = op["security"]
            assert list(requirement) == [SECURITY_SCHEME]
            if path.startswith("/api/v1/organization/{orgname}/mirror"):
                assert requirement[SECURITY_SCHEME] == [scopes.ORG_ADMIN], (path, method)
            elif "/mirror" in path and path not in {"/api/v1/repository/mirror/health",
                                                    "/api/v1/superuser/mirror/health"}:
                assert requirement[SECURITY_SCHEME] == [scopes.REPO_ADMIN], (path, method)
    scheme = served["components"]["securitySchemes"][SECURITY_SCHEME]
    assert set(scheme["flows"]["implicit"]["scopes"]) == set(scopes.ALL_SCOPES)
    mirror = paths["/api/v1/repository/{namespace}/{repository}/mirror"]
    assert mirror["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateMirrorConfig"}
    assert mirror["put"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UpdateMirrorConfig"}
    assert mirror["post"]["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DetailError"}
    create = served["components"]["schemas"]["CreateMirrorConfig"]
    assert {"external_reference", "sync_interval", "sync_start_date", "root_rule", "robot_username",
            "skopeo_timeout_interval"} <= set(create["required"])
    assert create["properties"]["skopeo_timeout_interval"]["minimum"] == 300
    view = served["components"]["schemas"]["MirrorConfig"]
    assert "external_registry_password" not in view["properties"]
    # The organization mirror: Quay's source types and ours (registry), the password never in the view.
    org_create = served["components"]["schemas"]["CreateOrgMirrorConfig"]
    assert org_create["properties"]["external_registry_type"]["enum"] == ["harbor", "quay", "registry"]
    assert "registry" in org_create["properties"]["external_registry_type"]["description"]
    assert "external_registry_password" not in served["components"]["schemas"]["OrgMirrorConfig"]["properties"]
    syncs = paths["/api/v1/repository/{namespace}/{repository}/mirror/syncs/{run_id}"]
    assert [p["schema"]["type"] for p in syncs["parameters"] if p["name"] == "run_id"] == ["integer"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_document_is_built_from_the_url_map(app):
    """A route added later is described without touching openapi.py (generic entry)."""
    from flask_restful import Resource

    class Extra(Resource):
        def get(self, thing: str):
            return {}

    from quaymirror.app import QuayApi

    QuayApi(app, prefix="/api/v1").add_resource(Extra, "/extra/<string:thing>")
    document = build_spec(app)
    assert document["paths"]["/api/v1/extra/{thing}"]["get"]["operationId"] == "getExtra"
    schemathesis.openapi.from_dict(document).validate()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_integers_declare_their_bounds(app, served):
    """Every integer a path or query string takes is declared int64 with the bounds the server enforces."""
    from marshmallow import validate

    from quaymirror.schemas import Int64

    paths = served["paths"]
    sync_run = paths["/api/v1/repository/{namespace}/{repository}/mirror/syncs/{run_id}"]
    [run_id] = [p for p in sync_run["parameters"] if p["name"] == "run_id"]
    assert run_id["schema"] == {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**63 - 1}
    queried = 0
    for item in paths.values():
        for parameter in item.get("parameters", []):
            if parameter["schema"]["type"] == "integer":
                assert parameter["schema"]["format"] == "int64", parameter
        for method, op in item.items():
            if method == "parameters":
                continue
            for parameter in op.get("parameters", []):
                schema = parameter["schema"]
                if schema.get("type") == "integer":
                    assert schema["format"] == "int64", (op["operationId"], parameter)
                    assert -(2**63) <= schema["minimum"] <= schema["maximum"] <= 2**63 - 1, parameter
    # The query parameters are the query schemas' fields, bounds included (no second, hand-written copy).
    by_id = {op["operationId"]: op for item in paths.values() for m, op in item.items() if m != "parameters"}
    documented = [op for view in app.view_functions.values()
                  for op in operations_of(getattr(view, "view_class", object)).values()]
    for operation in documented:
        if operation.query is None:
            continue
        declared = {p["name"]: p for p in by_id[operation.operation_id]["parameters"]}
        fields = operation.query().fields
        assert set(declared) == {f.data_key or name for name, f in fields.items()}, operation.operation_id
        for name, field in fields.items():
            parameter = declared[field.data_key or name]
            assert (parameter["in"], parameter["required"]) == ("query", False)
            if isinstance(field, Int64):
                [bounds] = [v for v in field.validators if isinstance(v, validate.Range)]
                schema = parameter["schema"]
                assert (schema["minimum"], schema["maximum"]) == (bounds.min, bounds.max), parameter
                queried += 1
    assert queried >= 4  # history's page and limit, health's limit and offset
    health = {p["name"]: p["schema"] for p in by_id["getRepoMirrorHealth"]["parameters"]}
    assert health["offset"] == {"type": "integer", "format": "int64", "default": 0, "minimum": -(2**63),
                                "maximum": 2**63 - 1}
    assert health["detailed"]["type"] == "boolean"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_documentation_is_the_resource_classes_own(app):
    """An operation's documentation is kept on its Resource class: a class under another name (a rename, a
    subclass) is documented as before, not as an undocumented route."""
    from quaymirror.accounts.api import CurrentUser
    from quaymirror.app import QuayApi

    class RenamedCurrentUser(CurrentUser):
        pass

    QuayApi(app, prefix="/api/v1").add_resource(RenamedCurrentUser, "/renamed/")
    document = build_spec(app)
    renamed = document["paths"]["/api/v1/renamed/"]["get"]
    assert renamed["operationId"] == "getLoggedInUser"
    assert renamed["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/User"}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_answers_are_documented_by_the_views_the_resources_dump_with(served):
    """The success bodies' schemas are the views (``UserView`` -> ``User``, ...); only the error bodies are
    written as JSON Schemas, and no documented operation answers a free-form body."""
    from quaymirror.accounts.schemas import UserView

    schemas = served["components"]["schemas"]
    assert set(schemas["User"]["properties"]) == set(UserView().fields)
    assert set(schemas["User"]["required"]) == set(UserView().fields)
    for path, item in served["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            for status, response in op["responses"].items():
                if status.startswith("2") and "content" in response:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema, (path, method, status)  # not "anything": an undocumented body
