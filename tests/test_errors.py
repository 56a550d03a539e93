"""Bad input to every foundation endpoint answers a JSON 4xx; errors keep Quay's shapes and CORS headers.

Never an HTML page, never a stack trace, never a 500 for bad input; a database that is away is a
JSON 503.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import event, func, select

from quaymirror.accounts.models import OrganizationMember, User
from quaymirror.repositories.models import Repository
from quaymirror.web import CORS_HEADERS

FULL = "repo:admin repo:create user:admin org:admin"
MIB = 1024 * 1024


@pytest.fixture
def caller(world):
    """devtable with every scope, admin of its own namespace and of buynlarge: every endpoint is open to it."""
    with world.database.transaction() as s:
        org = s.scalars(select(User).where(User.username == "buynlarge")).one()
        devtable = s.scalars(select(User).where(User.username == "devtable")).one()
        s.add(OrganizationMember(organization_id=org.id, user_id=devtable.id, role="admin"))
    world.token("full", "devtable", FULL)
    return world.headers("full")


@pytest.fixture
def writes(database):
    """The INSERT/UPDATE/DELETE statements sent to the database while the test runs."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        if statement.lstrip().split(None, 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}:
            seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", record)
    yield seen
    event.remove(database.engine, "before_cursor_execute", record)


def assert_json(response, status: int) -> dict | list | str:
    """A JSON answer with ``status``, CORS headers, and nothing of a trace or an HTML page."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/json", (response.mimetype, text)
    assert "Traceback" not in text and "<html" not in text.lower()
    for name, value in CORS_HEADERS.items():
        assert response.headers.get(name) == value, name
    return json.loads(text)


def assert_api_error(response, status: int, error_type: str, detail: str | None = None) -> dict:
    """Quay's ApiError: exactly its six keys, ``type`` an absolute URL under /api/v1/error/."""
    body = assert_json(response, status)
    assert set(body) == {"detail", "error_message", "error_type", "title", "type", "status"}, body
    assert body["error_type"] == body["title"] == error_type
    assert body["status"] == status
    assert body["error_message"] == body["detail"]
    assert body["type"] == f"http://localhost/api/v1/error/{error_type}"
    if detail is not None:
        assert body["detail"] == detail
    return body


# Endpoint id -> (method, path, a valid body, success status, {string field: column size}).
BODY_ENDPOINTS = {
    "org_create": ("POST", "/api/v1/organization/", {"name": "neworg", "email": "new@example.com"}, 201,
                   {"name": 255, "email": 255}),
    "repo_create": ("POST", "/api/v1/repository",
                    {"namespace": "devtable", "repository": "newrepo", "visibility": "private",
                     "description": "words", "repo_kind": "image"}, 201,
                    {"namespace": 255, "repository": 255, "description": 4096}),
    "changestate": ("PUT", "/api/v1/repository/devtable/simple/changestate", {"state": "MIRROR"}, 200, {}),
    "perm_put": ("PUT", "/api/v1/repository/devtable/simple/permissions/user/devtable+dtrobot2",
                 {"role": "write"}, 200, {}),
    "org_robot_put": ("PUT", "/api/v1/organization/buynlarge/robots/newbot", {"description": "made"}, 201,
                      {"description": 1024}),
    "user_robot_put": ("PUT", "/api/v1/user/robots/newbot", {"description": "made"}, 201,
                       {"description": 1024}),
}
# Fields where JSON null is a legal value (Quay's schemas say "string or null").
NULLABLE = {("org_create", "email"), ("repo_create", "description"), ("repo_create", "repo_kind"),
            ("org_robot_put", "description"), ("user_robot_put", "description")}
NO_BODY_ENDPOINTS = {  # deletions last: one test sends them all in order
    "user": ("GET", "/api/v1/user/", 200),
    "org_get": ("GET", "/api/v1/organization/buynlarge", 200),
    "repo_get": ("GET", "/api/v1/repository/devtable/simple", 200),
    "perms_user": ("GET", "/api/v1/repository/devtable/simple/permissions/user/", 200),
    "perms_team": ("GET", "/api/v1/repository/devtable/simple/permissions/team/", 200),
    "org_robot_get": ("GET", "/api/v1/organization/buynlarge/robots/coolrobot", 200),
    "user_robot_get": ("GET", "/api/v1/user/robots/dtrobot", 200),
    "entities": ("GET", "/api/v1/entities/dev", 200),
    "repo_delete": ("DELETE", "/api/v1/repository/devtable/simple", 204),
    "org_robot_delete": ("DELETE", "/api/v1/organization/buynlarge/robots/coolrobot", 204),
    "user_robot_delete": ("DELETE", "/api/v1/user/robots/dtrobot", 204),
}
REQUIRED = {"org_create": "name", "repo_create": "namespace", "changestate": "state", "perm_put": "role"}
INVALID_VALUES = {
    "org_create": [("name", "Not Valid"), ("name", "a"), ("name", "-dash"), ("email", "not-an-email")],
    "repo_create": [("repository", "UPPER"), ("repository", "with/slash"), ("repository", ""),
                    ("repository", ".dot"), ("visibility", "secret"), ("repo_kind", "application")],
    "changestate": [("state", "mirror"), ("state", "MARKED_FOR_DELETION"), ("state", "ORG_MIRROR"), ("state", "")],
    "perm_put": [("role", "owner"), ("role", ""), ("role", "ADMIN")],
}
BODY_IDS = list(BODY_ENDPOINTS)


def test_valid_bodies_with_unknown_fields_succeed(client, caller):
    """Quay's schemas have no additionalProperties: false, and Ansible sends extra keys."""
    for method, path, body, status, _limits in BODY_ENDPOINTS.values():
        response = client.open(path, method=method, headers=caller,
                               json={**body, "no_such_field": [1, {"x": None}]})
        assert_json(response, status)


@pytest.mark.parametrize("endpoint", BODY_IDS)
def test_bodies_that_do_not_parse(endpoint, client, caller, writes):
    """Malformed JSON and wrong content types answer as Quay (400 / 415 ``{"message"}``); then ApiErrors."""
    method, path, body, _status, _limits = BODY_ENDPOINTS[endpoint]

    def send(data, content_type="application/json"):
        return client.open(path, method=method, headers=caller, data=data, content_type=content_type)

    bad_request = {"message": "The browser (or proxy) sent a request that this server could not understand."}
    assert assert_json(send('{"state": "MIRROR",'), 400) == bad_request
    assert assert_json(send(b'{"state": "\xff\xfe"}'), 400) == bad_request  # not UTF-8
    if endpoint not in {"org_robot_put", "user_robot_put"}:  # those take an empty body as {} (Quay)
        assert assert_json(send(""), 400) == bad_request
    for content_type in ["text/plain", "application/x-www-form-urlencoded"]:
        assert assert_json(send(json.dumps(body), content_type), 415) == {
            "message": "Did not attempt to load JSON data because the request Content-Type was not "
                       "'application/json'."
        }
    assert_api_error(send("null"), 400, "invalid_request", "Missing JSON body")
    for payload in ['["state"]', '"MIRROR"', "42", "true"]:
        detail = assert_api_error(send(payload), 400, "invalid_request")["detail"]
        assert detail.startswith("Request body must be a JSON object"), payload
    depth = 200_000
    assert_api_error(send("[" * depth + "]" * depth), 400, "invalid_request", "The JSON body is nested too deeply")
    assert writes == []


@pytest.mark.parametrize("endpoint", BODY_IDS)
def test_invalid_fields_name_the_field(endpoint, client, caller, writes):
    """Missing, wrongly typed, oversized, unstorable and invalid values: a 400 naming the field, no write."""
    method, path, body, status, limits = BODY_ENDPOINTS[endpoint]

    def send(payload):
        return client.open(path, method=method, headers=caller, json=payload)

    def expect_field_error(payload, field, why):
        detail = assert_api_error(send(payload), 400, "invalid_request")["detail"]
        assert detail.startswith(f"{field}: "), (why, detail)
        return detail

    if endpoint in REQUIRED:
        assert "required" in expect_field_error({}, REQUIRED[endpoint], "missing").lower()
    for field in body:
        for value in [123, 1.5, True, ["x"], {"a": "b"}]:
            expect_field_error({**body, field: value}, field, repr(value))
        if (endpoint, field) not in NULLABLE:
            assert expect_field_error({**body, field: None}, field, "null") == f"{field}: Field may not be null."
    for field, size in limits.items():
        detail = expect_field_error({**body, field: "a" * (size + 1)}, field, "oversized")
        assert str(size) in detail
    for field, value in INVALID_VALUES.get(endpoint, []):
        assert_api_error(send({**body, field: value}), 400, "invalid_request")
    key = next(iter(body))
    for bad in ["nul\u0000byte", "lone\ud800surrogate"]:  # no database stores these
        raw = json.dumps({**body, key: bad, "nested": [{"deeper": bad}]})
        response = client.open(path, method=method, headers=caller, data=raw, content_type="application/json")
        assert_api_error(response, 400, "invalid_request")
    assert writes == []
    nulls = {field: None for field in body if (endpoint, field) in NULLABLE}
    if nulls:  # JSON null where Quay's schema says "string or null"
        assert_json(send({**body, **nulls}), status)


@pytest.mark.parametrize("endpoint", ["org_robot_put", "user_robot_put"])
def test_robot_put_without_body_creates_the_robot(endpoint, client, caller):
    """As Quay (``get_json(silent=True) or {}``): ``curl -X PUT`` with no body creates the robot."""
    method, path, _body, status, _limits = BODY_ENDPOINTS[endpoint]
    body = assert_json(client.open(path, method=method, headers=caller), status)
    assert body["description"] == "" and body["token"]


@pytest.mark.parametrize(("endpoint", "field", "value"), [
    ("org_create", "name", "n" * 255),
    ("org_create", "email", "e@" + "x" * 253),
    ("repo_create", "repository", "r" * 255),
    ("repo_create", "description", "d" * 4096),
    ("org_robot_put", "description", "d" * 1024),
    ("user_robot_put", "description", "d" * 1024),
])
def test_strings_at_the_column_size_fit(endpoint, field, value, client, caller):
    """The limits are the columns' sizes: the longest accepted value is stored (PostgreSQL checks)."""
    method, path, body, status, _limits = BODY_ENDPOINTS[endpoint]
    assert_json(client.open(path, method=method, headers=caller, json={**body, field: value}), status)


def test_body_over_one_mib_is_413_everywhere(client, caller, writes):
    """Refused before anything else, also where the endpoint never reads a body."""
    endpoints = [(m, p, b) for m, p, b, _s, _l in BODY_ENDPOINTS.values()]
    endpoints += [(m, p, {}) for m, p, _s in NO_BODY_ENDPOINTS.values()]
    for method, path, body in endpoints:
        payload = json.dumps({**body, "padding": "x" * MIB})
        response = client.open(path, method=method, headers=caller, data=payload, content_type="application/json")
        assert_api_error(response, 413, "request_too_large")
    assert writes == []


def test_bodies_just_under_the_limit_are_read(client, caller):
    for method, path, body, status, _limits in BODY_ENDPOINTS.values():
        payload = json.dumps({**body, "padding": ""})
        payload = payload[:-1] + ', "unknown": "' + "x" * (MIB - len(payload) - 20) + '"}'
        assert len(payload) <= MIB
        response = client.open(path, method=method, headers=caller, data=payload, content_type="application/json")
        assert_json(response, status)


def test_endpoints_without_body_ignore_a_garbage_body(client, caller):
    for method, path, status in NO_BODY_ENDPOINTS.values():  # deletions come last
        response = client.open(path, method=method, headers=caller, data="{garbage",
                               content_type="application/json")
        assert response.status_code == status, path
        if status != 204:
            assert_json(response, status)


def test_odd_paths_answer_json(client, caller):
    for path in [
        "/api/v1/repository/" + "n" * 5000 + "/repo",
        "/api/v1/repository/devtable/" + "r" * 5000,
        "/api/v1/organization/" + "o" * 5000,
        "/api/v1/organization/buynlarge/robots/" + "r" * 5000,
        "/api/v1/user/robots/" + "r" * 5000,
        "/api/v1/repository/devtable/simple/permissions/user/" + "u" * 5000,
        "/api/v1/repository/d%C3%A9vtable/simple",
        "/api/v1/repository/%ff%fe/simple",
    ]:
        response = client.get(path, headers=caller)
        assert 400 <= response.status_code < 500, path[:80]
        assert_json(response, response.status_code)
    assert assert_json(client.get("/api/v1/entities/" + "e" * 5000, headers=caller), 200) == {"results": []}


def test_nul_in_the_url_is_400(client, caller):
    for path in [
        "/api/v1/repository/dev%00table/simple",
        "/api/v1/entities/de%00v",
        "/api/v1/entities/dev?namespace=dev%00table",
        "/api/v1/entities/dev?name%00space=devtable",
        "/api/v1/organization/buy%00nlarge",
        "/api/v1/user/robots/a%00b",
    ]:
        assert_api_error(client.get(path, headers=caller), 400, "invalid_request")


def test_robot_whose_full_name_would_not_fit(client, caller, writes):
    """ns + "+" + short must fit the 255-character username column (PostgreSQL would refuse it)."""
    for path in ["/api/v1/organization/buynlarge/robots/" + "r" * 250, "/api/v1/user/robots/" + "r" * 250]:
        assert_api_error(client.put(path, headers=caller, json={}), 400, "invalid_request")
    assert writes == []


def test_unknown_route_is_json_404(client, caller):
    for path in [
        "/api/v1/nothing",
        "/api/v1/",
        "/api/v2/user/",
        "/api/v1/repository/devtable/simple/nothing",
        "/api/v1/repository/a/b/c/d/e",
        "/api/v1/user/robots/",
        "/api/v1/error/",
    ]:
        assert_api_error(client.get(path, headers=caller), 404, "not_found", "Not Found")
        assert_api_error(client.get(path), 404, "not_found", "Not Found")
        assert_api_error(client.post(path, headers=caller, json={}), 404, "not_found", "Not Found")
    outside = client.get("/nothing")  # outside /api: still JSON, without the API's CORS headers
    assert outside.status_code == 404 and outside.mimetype == "application/json"


def test_wrong_method_is_json_405(client, caller):
    for method, path, allowed in [
        ("POST", "/api/v1/user/", "GET, HEAD, OPTIONS"),
        ("PATCH", "/api/v1/organization/buynlarge", "DELETE, GET, HEAD, OPTIONS, PUT"),
        ("GET", "/api/v1/organization/", "OPTIONS, POST"),
        ("GET", "/api/v1/repository", "OPTIONS, POST"),
        ("PATCH", "/api/v1/repository/devtable/simple", None),
        ("POST", "/api/v1/repository/devtable/simple", None),
        ("GET", "/api/v1/repository/devtable/simple/changestate", "OPTIONS, PUT"),
        ("POST", "/api/v1/repository/devtable/simple/permissions/user/", "GET, HEAD, OPTIONS"),
        ("PUT", "/api/v1/repository/devtable/simple/permissions/team/", "GET, HEAD, OPTIONS"),
        ("POST", "/api/v1/organization/buynlarge/robots/coolrobot", None),
        ("POST", "/api/v1/user/robots/dtrobot", None),
        ("DELETE", "/api/v1/entities/dev", "GET, HEAD, OPTIONS"),
    ]:
        response = client.open(path, method=method, headers=caller, json={})
        assert_api_error(response, 405, "method_not_allowed")
        assert response.headers.get("Allow"), path
        if allowed is not None:
            assert response.headers["Allow"] == allowed, path


def test_slash_redirect_is_json(client, caller):
    response = client.get("/api/v1/user", headers=caller)
    body = assert_json(response, 308)
    assert response.headers["Location"] == "http://localhost/api/v1/user/"
    assert body == {"message": "Redirecting", "location": "http://localhost/api/v1/user/"}
    assert client.get("/api/v1/user", headers=caller, follow_redirects=True).status_code == 200


def test_cors_preflight(client):
    response = client.options("/api/v1/repository/devtable/simple/changestate")
    assert response.status_code == 200
    for name, value in CORS_HEADERS.items():
        assert response.headers[name] == value
    assert "PUT" in response.headers["Allow"]


def test_cors_headers_on_success_and_on_errors(client, caller):
    assert_json(client.get("/api/v1/user/", headers=caller), 200)
    assert_json(client.get("/api/v1/user/"), 401)
    assert_json(client.get("/api/v1/repository/nosuchns/repo", headers=caller), 403)
    assert_json(client.get("/api/v1/repository/devtable/nosuchrepo", headers=caller), 404)
    response = client.delete("/api/v1/repository/devtable/simple", headers=caller)
    assert response.status_code == 204
    for name, value in CORS_HEADERS.items():
        assert response.headers[name] == value


def test_no_cors_outside_the_api(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize(("base_url", "expected"), [
    ("http://localhost", "http://localhost"),
    ("https://quay.example.com", "https://quay.example.com"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
])
def test_error_type_url_follows_scheme_and_host(base_url, expected, client):
    response = client.get("/api/v1/user/", base_url=base_url)
    assert response.get_json()["type"] == f"{expected}/api/v1/error/invalid_token"


def test_unexpected_exception_is_json_500_without_trace(client, caller, monkeypatch):
    from quaymirror.accounts import service

    def explode(*_args, **_kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service, "organizations_of", explode)
    response = client.get("/api/v1/user/", headers=caller)
    body = assert_api_error(response, 500, "internal_error", "Internal Server Error")
    assert "secret internals" not in json.dumps(body)


def test_concurrent_duplicate_is_400_not_500(client, caller, monkeypatch, database):
    """Two creations racing past the existence check: the unique constraint answers, as a 400."""
    from quaymirror.repositories import service

    monkeypatch.setattr(service, "get", lambda *_args, **_kwargs: None)  # the check sees nothing
    body = {"namespace": "devtable", "repository": "simple"}
    assert_api_error(client.post("/api/v1/repository", headers=caller, json=body), 400, "invalid_request",
                     "The request conflicts with existing data")
    with database.transaction() as s:
        assert s.scalar(select(func.count(Repository.id)).where(Repository.name == "simple")) == 1


@pytest.mark.parametrize("url", [
    "postgresql+psycopg2://postgres@127.0.0.1:1/nothing",
    "sqlite:////nonexistent-dir/quaymirror.db",
], ids=["postgresql-closed-port", "sqlite-missing-dir"])
def test_database_away_is_json_503(url, settings):
    from quaymirror.app import create_app
    from quaymirror.db import Database

    database = Database(url)
    try:
        client = create_app(settings.with_overrides(database_url=url), database).test_client()
        for method, path, body in [
            ("GET", "/api/v1/user/", None),
            ("GET", "/api/v1/repository/devtable/simple", None),
            ("POST", "/api/v1/repository", {"namespace": "devtable", "repository": "x"}),
            ("PUT", "/api/v1/user/robots/bot", {}),
            ("GET", "/api/v1/entities/dev", None),
        ]:
            response = client.open(path, method=method, json=body, headers={"Authorization": "Bearer sometoken"})
            assert_api_error(response, 503, "service_unavailable", "The database is unavailable; try again shortly.")
    finally:
        database.dispose()


def test_database_away_does_not_break_health(settings):
    from quaymirror.app import create_app
    from quaymirror.db import Database

    database = Database("postgresql+psycopg2://postgres@127.0.0.1:1/nothing")
    app = create_app(settings, database)
    assert app.test_client().get("/healthz").status_code == 200
    database.dispose()
