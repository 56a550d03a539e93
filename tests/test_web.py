"""Integers of paths and query strings, checked once in the shared plumbing (quaymirror.web); both backends.

Every integer a request carries is range-checked before any query sees it: outside the signed 64-bit range
(SQLite's INTEGER, PostgreSQL's bigint) a path id answers the route's JSON 404 and a query argument a JSON
400 naming it. The routes and arguments come from the app itself (its url_map converters and the query
schemas of the operation table), so a route or argument added later is covered here without touching this
file, or fails here until it says how to reach it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from marshmallow import validate
from werkzeug.routing.converters import NumberConverter

from quaymirror import web
from quaymirror.mirror import history
from quaymirror.mirror.models import RunStatus, RunTrigger
from quaymirror.openapi import _RULE_VARIABLE, PREFIX, operations_of
from quaymirror.schemas import Int64
from tests.common.database import TEST_SECRET
from tests.common.mirrors import Mirrors

# The values the issue lists: inside the range (0, 2^63-1) and outside (-1, 2^63, 2^64+1, 10^40).
VALUES = (0, -1, 2**63 - 1, 2**63, 2**64 + 1, 10**40)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
NOT_FOUND = {"detail": "Not Found", "error_message": "Not Found", "error_type": "not_found",
             "title": "not_found", "type": "http://localhost/api/v1/error/not_found", "status": 404}

# How to reach each route: its string path parameters, and the query arguments its integers need to matter
# (health reads limit and offset only for the detailed list).
PATH_VALUES = {"namespace": "devtable", "repository": "mirrored", "prefix": "dev"}
CONTEXT_ARGS = {"repository_mirror_health": {"detailed": "true"}}

_VARIABLE = _RULE_VARIABLE  # the document's own reading of a rule's variables


@dataclass
class Routes:
    client: object
    headers: dict[str, str]
    run_id: int


@pytest.fixture
def routes(app_with, world, database) -> Routes:
    """devtable/mirrored with a mirror and one finished run; a superuser client (health's global view)."""
    mirrors = Mirrors(database, TEST_SECRET)
    config_id = mirrors.create("devtable/mirrored", "quay.io/x/y", ["*"])
    with database.transaction() as session:
        run = history.start_run(session, repository_id=mirrors.config(config_id).repository_id,
                                config_id=config_id, trigger=RunTrigger.SCHEDULE, worker="test",
                                lease_token="t")
        history.finish_run(session, run.id, RunStatus.SUCCESS)
        run_id = run.id
    world.token("super", "devtable", "super:user repo:admin")
    app = app_with(superusers_full_access=True)
    return Routes(app.test_client(), world.headers("super"), run_id)


def _rules(app) -> Iterator:
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(PREFIX + "/"):
            yield rule


def _url(rule, **values) -> str:
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name in values:
            return str(values[name])
        assert name in PATH_VALUES, f"{rule.rule}: add a value for <{name}> to PATH_VALUES"
        return PATH_VALUES[name]

    return _VARIABLE.sub(replace, rule.rule)


def _integer_path_parameters(app) -> list[tuple[object, str]]:
    found = []
    for rule in _rules(app):
        for match in _VARIABLE.finditer(rule.rule):
            converter = app.url_map.converters[match.group("converter") or "default"]
            if issubclass(converter, NumberConverter):
                found.append((rule, match.group("name"), converter))
    return found


def test_every_integer_in_a_path_is_a_bounded_id(routes):
    app = routes.client.application
    found = _integer_path_parameters(app)
    assert found, "no integer path parameter: the test below would check nothing"
    for rule, name, converter in found:
        assert converter is web.IdConverter, f"{rule.rule}: <{name}> must use the id converter (<id:{name}>)"


def test_a_path_id_outside_the_range_answers_the_json_404(routes):
    """In range the route matches (anonymous: 401; admin: 404 for no such run, 200 for a real one); outside it
    the route does not match at all (404 for anyone, and the database is never asked)."""
    client = routes.client
    for rule, name, converter in _integer_path_parameters(client.application):
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        for method in methods:
            real = client.open(_url(rule, **{name: routes.run_id}), method=method, headers=routes.headers)
            assert real.status_code == 200, (rule.rule, real.get_json())
            for value in VALUES:
                url = _url(rule, **{name: value})
                inside = 0 <= value <= INT64_MAX  # ids are never negative
                answer = client.open(url, method=method, headers=routes.headers)
                assert (answer.status_code, answer.get_json()) == (404, NOT_FOUND), (method, url)
                anonymous = client.open(url, method=method)
                assert anonymous.status_code == (401 if inside else 404), (url, anonymous.get_json())
                if not inside:
                    assert anonymous.get_json() == NOT_FOUND, url


def _integer_query_arguments(app) -> list[tuple[object, str, str, validate.Range]]:
    """(rule, method, argument, its range) of every integer field of every operation's query schema."""
    found = []
    for rule in _rules(app):
        resource = app.view_functions[rule.endpoint].view_class
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation = operations_of(resource).get(method.lower())
            if operation is None or operation.query is None:
                continue
            for field_name, field in operation.query().fields.items():
                if isinstance(field, Int64):
                    [bounds] = [v for v in field.validators if isinstance(v, validate.Range)]
                    found.append((rule, method, field.data_key or field_name, bounds))
    return found


def test_a_query_integer_outside_its_range_answers_a_400_naming_it(routes):
    client = routes.client
    found = _integer_query_arguments(client.application)
    assert {(rule.endpoint, argument) for rule, _m, argument, _b in found} >= {
        ("mirror_syncs", "page"), ("mirror_syncs", "limit"),
        ("repository_mirror_health", "limit"), ("repository_mirror_health", "offset")}
    for rule, method, argument, bounds in found:
        assert INT64_MIN <= bounds.min <= bounds.max <= INT64_MAX, (rule.rule, argument)
        url = _url(rule, run_id=routes.run_id)
        for value in VALUES:
            args = {**CONTEXT_ARGS.get(rule.endpoint, {}), argument: str(value)}
            answer = client.open(url, method=method, headers=routes.headers, query_string=args)
            body = answer.get_json()
            if bounds.min <= value <= bounds.max:
                assert answer.status_code == 200, (url, args, body)
            else:
                assert answer.status_code == 400, (url, args, body)
                assert body["detail"] == f"{argument}: must be between {bounds.min} and {bounds.max}", body
                assert body["error_type"] == "invalid_request", body


def test_health_clamps_inside_the_range_as_quay(routes):
    """Quay clamps limit to 1..1000 and offset to 0 and up; the extremes of the range are still clamped."""
    def pagination(**args):
        answer = routes.client.get("/api/v1/repository/mirror/health", headers=routes.headers,
                                   query_string={"detailed": "true", **args})
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()["repositories"]["pagination"]

    assert pagination(limit=-(2**63), offset=-(2**63)) == {"limit": 1, "offset": 0, "has_more": False}
    assert pagination(limit=2**63 - 1, offset=2**63 - 1) == {"limit": 1000, "offset": 2**63 - 1,
                                                              "has_more": False}


@pytest.mark.parametrize("url, detail", [
    ("/api/v1/repository/mirror/health?limit=many", "limit: invalid literal for int() with base 10: 'many'"),
    ("/api/v1/repository/mirror/health?offset=", "offset: invalid literal for int() with base 10: ''"),
    ("/api/v1/repository/mirror/health?detailed=maybe", "detailed: Invalid literal for boolean(): maybe"),
    ("/api/v1/repository/devtable/mirrored/mirror/syncs?page=x", "page: must be an integer"),
    ("/api/v1/repository/devtable/mirrored/mirror/syncs?limit=1.5", "limit: must be an integer"),
])
def test_each_endpoint_keeps_its_messages(routes, url, detail):
    answer = routes.client.get(url, headers=routes.headers)
    assert (answer.status_code, answer.get_json()["detail"]) == (400, detail)


def test_each_endpoint_keeps_its_words(routes):
    """Health's flag knows its words (``" Yes "``, ``""``); history reads an empty value as the default;
    entities' flags take anything and mean false unless truthy."""
    client, headers = routes.client, routes.headers
    detailed = client.get("/api/v1/repository/mirror/health?detailed=%20Yes%20", headers=headers).get_json()
    assert "details" in detailed["repositories"]
    plain = client.get("/api/v1/repository/mirror/health?detailed=&namespace=", headers=headers).get_json()
    assert "details" not in plain["repositories"] and plain["repositories"]["total"] == 1
    listed = client.get("/api/v1/repository/devtable/mirrored/mirror/syncs?page=&limit=", headers=headers)
    assert (listed.status_code, listed.get_json()["page"], len(listed.get_json()["syncs"])) == (200, 1, 1)
    for flag in ("maybe", "False", ""):
        answer = client.get(f"/api/v1/entities/dev?includeOrgs={flag}&includeTeams={flag}", headers=headers)
        assert answer.status_code == 200, answer.get_json()
