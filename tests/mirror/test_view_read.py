"""GET /mirror's hot read (mirror/view_read.py) answers exactly what the ORM path answers.

The ORM path is the specification: ``web.authorize_repo`` (the caller loaded through the request's
session, what every repository resource starts with), ``RepoAccess.require``, ``service.require``, ``service.describe_config`` and the
``ViewMirrorConfig`` schema, errors rendered by the app's own renderer. The hot path is the real GET
through the app: one prepared statement, the caller from its own columns, the read cache and the body
kept with the cached row. For every caller kind and every target (and, on the mirrored repository, every
shape of configuration), on both backends, with superusers' full access off and on, the two must give
the same status and the same bytes: with the read cache off, on, and on again (a request the cache
answers). A failing test lists every cell that disagrees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from sqlalchemy import select

from quaymirror import web
from quaymirror.accounts import service as accounts
from quaymirror.accounts.models import OrganizationMember
from quaymirror.app import render_error
from quaymirror.auth.models import AccessToken
from quaymirror.auth.tokens import hash_token
from quaymirror.errors import dumps
from quaymirror.mirror import service
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorStatus
from quaymirror.mirror.schemas import ViewMirrorConfig
from quaymirror.repositories import service as repositories
from quaymirror.repositories.models import Repository, RepositoryState
from tests.common.mirror_api import mirror_body

pytestmark = pytest.mark.usefixtures("quay_dns")  # no request of these tests asks the real DNS

FULL = "repo:admin repo:create user:admin org:admin"  # every scope but super:user
MIRRORED = ("devtable", "simple")
# Every kind of target: the mirrored repository, an org's, a public one, one marked for deletion, one
# without a configuration, missing repositories, a missing namespace and a robot (no namespace).
TARGETS = [MIRRORED, ("buynlarge", "orgrepo"), ("devtable", "public"), ("devtable", "doomed"),
           ("devtable", "noconfig"), ("devtable", "nosuchrepo"), ("buynlarge", "nosuchrepo"), ("nosuchns", "repo"),
           ("devtable+dtrobot", "simple")]


@dataclass(frozen=True)
class Kind:
    """A caller kind: the Authorization header it sends (``{token}``: the raw token of ``label``)."""

    label: str | None
    header: str = "Bearer {token}"


# Tokens made by ``callers``: label -> (owner, scopes, expires_in).
TOKENS: dict[str, tuple[str, str, int | None]] = {
    "expired": ("devtable", f"{FULL} super:user", -60),
    **{f"only:{scope}": ("devtable", scope, None) for scope in
       ("repo:read", "repo:write", "repo:admin", "repo:create", "user:read", "user:admin", "org:admin", "super:user")},
    "owner": ("devtable", FULL, None),
    "owner-expiring": ("devtable", FULL, 3600),
    "sudo": ("devtable", f"{FULL} super:user", None),
    "orgadmin": ("freshuser", FULL, None),
    "orgadmin-read": ("freshuser", "repo:read", None),
    "member": ("member", FULL, None),
    "other": ("reader", FULL, None),
    "direct-read": ("directread", FULL, None),
    "direct-write": ("directwrite", FULL, None),
    "direct-admin": ("directadmin", FULL, None),
    "direct-admin-capped": ("directadmin", "repo:write", None),
    "robot-read": ("devtable+dtrobot", FULL, None),
    "robot-admin": ("devtable+dtrobot2", FULL, None),
    "robot-none": ("buynlarge+coolrobot", FULL, None),
    "unknown-scope": ("devtable", FULL, None),  # its stored scope string gets an unknown scope below
}
KINDS: dict[str, Kind] = {
    "anonymous": Kind(None),
    "garbage token": Kind("garbage"),
    "expired token": Kind("expired"),
    "robot password as bearer": Kind("robot-password"),
    "basic auth": Kind(None, "Basic ZGV2dGFibGU6cGFzc3dvcmQ="),
    "bearer without token": Kind(None, "Bearer"),
    "other token type": Kind("owner", "Token {token}"),
    "lower-case bearer": Kind("owner", "bearer {token}"),
    "token hash as bearer": Kind("owner-hash"),
    **{f"only {scope}": Kind(f"only:{scope}") for scope in
       ("repo:read", "repo:write", "repo:admin", "repo:create", "user:read", "user:admin", "org:admin", "super:user")},
    "namespace owner": Kind("owner"),
    "namespace owner, expiring later": Kind("owner-expiring"),
    "unknown scope stored": Kind("unknown-scope"),
    "org admin": Kind("orgadmin"),
    "org admin, repo:read": Kind("orgadmin-read"),
    "org member": Kind("member"),
    "unrelated user": Kind("other"),
    "direct read": Kind("direct-read"),
    "direct write": Kind("direct-write"),
    "direct admin": Kind("direct-admin"),
    "direct admin, repo:write": Kind("direct-admin-capped"),
    "robot with read": Kind("robot-read"),
    "robot with admin": Kind("robot-admin"),
    "robot without permission": Kind("robot-none"),
    "superuser with super:user": Kind("sudo"),
    "superuser, super:user only": Kind("only:super:user"),
}


@dataclass
class Callers:
    """The raw tokens of ``TOKENS`` (and a few that are no token) by label."""

    raw: dict[str, str] = field(default_factory=dict)

    def headers(self, kind: Kind) -> dict[str, str]:
        if kind.label is None and "{token}" in kind.header:
            return {}
        return {"Authorization": kind.header.format(token=self.raw.get(kind.label or "", ""))}


def _post(client: FlaskClient, namespace: str, repository: str, headers: dict[str, str], **body: Any) -> None:
    response = client.post(f"/api/v1/repository/{namespace}/{repository}/mirror", json=mirror_body(**body),
                           headers=headers)
    assert response.status_code == 201, response.data


@pytest.fixture
def callers(world, client) -> Callers:
    """Quay's initdb fixtures plus every target of ``TARGETS`` and every token of ``TOKENS``."""
    world.user("member")
    for name in ("directread", "directwrite", "directadmin"):
        world.user(name)
    with world.database.transaction() as s:
        org = accounts.get_by_name(s, "buynlarge")
        s.add(OrganizationMember(organization_id=org.id, user_id=accounts.get_by_name(s, "member").id, role="member"))
    for path in ("buynlarge/orgrepo", "devtable/doomed", "devtable/noconfig"):
        world.repo(path)
    world.repo("devtable/public", visibility="public")
    world.grant("directread", "devtable/simple", "read")
    world.grant("directwrite", "devtable/simple", "write")
    world.grant("directadmin", "devtable/simple", "admin")
    world.grant("devtable+dtrobot2", "devtable/simple", "admin")
    found = Callers({"garbage": "notarealtoken", "robot-password": world.robot_tokens["devtable+dtrobot"]})
    for label, (owner, scope, expires_in) in TOKENS.items():
        found.raw[label] = world.token(label, owner, scope, expires_in)
    found.raw["owner-hash"] = hash_token(found.raw["owner"])
    with world.database.transaction() as s:
        s.scalars(select(AccessToken).where(AccessToken.token_hash == hash_token(found.raw["unknown-scope"]))
                  ).one().scope = "repo:admin nonsense:scope"
    admin, fresh = world.headers("admin"), world.headers("fresh")
    _post(client, "devtable", "public", admin)
    _post(client, "devtable", "doomed", admin)
    _post(client, "buynlarge", "orgrepo", fresh, robot_username="buynlarge+coolrobot", external_registry_config={})
    with world.database.transaction() as s:
        doomed = repositories.get(s, accounts.get_by_name(s, "devtable"), "doomed")
        doomed.state = RepositoryState.MARKED_FOR_DELETION
    return found


def orm_answer(app: Flask, namespace: str, repository: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """The ORM path's answer to the request, rendered as the app renders every answer."""
    with app.test_request_context(f"/api/v1/repository/{namespace}/{repository}/mirror", headers=headers):
        try:
            session = web.session()
            repo = web.authorize_repo(namespace, repository, "admin", public_read=False).require()
            config = service.require(session, repo)
            return 200, dumps(ViewMirrorConfig().dump(service.describe_config(config, repo, web.secret_box()))).encode()
        except Exception as error:  # noqa: BLE001 - every error leaves through the app's renderer
            response = render_error(error)
            return response.status_code, response.get_data()


def hits() -> float:
    return REGISTRY.get_sample_value("quaymirror_read_cache_lookups_total", {"outcome": "hit"}) or 0.0


def answer(client: FlaskClient, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    response = client.get(path, headers=headers)
    return response.status_code, response.data


def cached_answer(client: FlaskClient, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """The answer of a GET the read cache answered (on PostgreSQL a write anywhere in the cluster costs a
    miss first, so retried until one is a hit)."""
    deadline = time.monotonic() + 10
    while True:
        before = hits()
        response = client.get(path, headers=headers)
        if hits() > before:
            return response.status_code, response.data
        assert time.monotonic() < deadline, f"no GET of {path} was answered from the cache within 10 s"


@dataclass
class Disagreements:
    cells: list[str] = field(default_factory=list)
    statuses: set[int] = field(default_factory=set)

    def check(self, app_with: Callable[..., Flask], callers: Callers, targets: list[tuple[str, str]]) -> None:
        for full_access in (False, True):
            uncached = app_with(superusers_full_access=full_access, read_cache=False)
            cached = app_with(superusers_full_access=full_access, read_cache=True)
            fast_uncached, fast_cached = uncached.test_client(), cached.test_client()
            for namespace, repository in targets:
                path = f"/api/v1/repository/{namespace}/{repository}/mirror"
                for name, kind in KINDS.items():
                    headers = callers.headers(kind)
                    expected = orm_answer(uncached, namespace, repository, headers)
                    self.statuses.add(expected[0])
                    answers = {"cache off": answer(fast_uncached, path, headers),
                               "cache on": answer(fast_cached, path, headers)}
                    if namespace not in ("nosuchns", "devtable+dtrobot"):  # no row: nothing to keep
                        answers["cache on, again"] = cached_answer(fast_cached, path, headers)
                    for mode, (status, body) in answers.items():
                        if (status, body) != expected:
                            self.cells.append(f"{namespace}/{repository}, {name}, full access {full_access}, {mode}: "
                                              f"ORM {expected[0]} {expected[1]!r} != hot {status} {body!r}")


def test_every_caller_on_every_target_answers_as_the_orm_path(callers, client, admin, app_with):
    _post(client, *MIRRORED, admin)
    found = Disagreements()
    found.check(app_with, callers, TARGETS)
    assert not found.cells, "\n".join(found.cells)
    assert found.statuses == {200, 401, 403, 404}  # every answer was met


@dataclass(frozen=True)
class Shape:
    """A configuration of the mirrored repository: POSTed with ``body`` (and ``settings``), then stored
    values changed by ``stored`` (attribute -> value); ``shows``: keys of the body it must answer."""

    body: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    stored: dict[str, Any] = field(default_factory=dict)
    shows: dict[str, Any] = field(default_factory=dict)


SHAPES: dict[str, Shape] = {
    "Quay's test body": Shape(shows={"external_registry_username": "fakeUsername", "sync_status": "NEVER_RUN"}),
    "no credentials, no registry config": Shape(
        body={"external_registry_username": None, "external_registry_password": None, "external_registry_config": {}},
        shows={"external_registry_username": None, "external_registry_config": {}}),
    "disabled": Shape(body={"is_enabled": False}, shows={"is_enabled": False}),
    **{f"status {status.name}": Shape(
        stored={"sync_status": status, "sync_retries_remaining": abs(status) % 4,
                "sync_expiration_date": datetime(2031, 5, 6, 7, 8, 9, 123456) if status == RepoMirrorStatus.SYNCING
                else None},
        shows={"sync_status": status.name}) for status in RepoMirrorStatus},
    "username no longer decrypts": Shape(stored={"external_registry_username": "not-a-valid-token"},
                                         shows={"external_registry_username": service.UNDECRYPTABLE}),
    "architecture filter": Shape(body={"architecture_filter": ["amd64", "arm64"]},
                                 settings={"feature_sparse_index": True},
                                 shows={"architecture_filter": ["amd64", "arm64"]}),
    "proxy config, TLS off, unsigned": Shape(
        body={"external_registry_config": {"verify_tls": False, "unsigned_images": True,
                                           "proxy": {"https_proxy": "https://proxy.example.com:3128"}}},
        shows={"external_registry_config": {"verify_tls": False, "unsigned_images": True,
                                            "proxy": {"https_proxy": "https://proxy.example.com:3128"}}}),
    "stored JSON that is no object or list": Shape(
        stored={"external_registry_config_json": "null", "architecture_filter_json": None},
        shows={"external_registry_config": {}, "architecture_filter": []}),
    "one rule": Shape(body={"root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["v1.*"]}},
                      shows={"root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["v1.*"]}}),
    "many rules, not ASCII": Shape(
        body={"root_rule": {"rule_kind": "tag_glob_csv", "rule_value": [f"r{i}-ü*" for i in range(40)]}}),
    "no dates": Shape(stored={"sync_start_date": None, "sync_expiration_date": None},
                      shows={"sync_start_date": None, "sync_expiration_date": None}),
    "dates with microseconds": Shape(
        stored={"sync_start_date": datetime(2030, 1, 2, 3, 4, 5, 999999),
                "sync_expiration_date": datetime(2030, 1, 2, 4, 4, 5, 1)},
        shows={"sync_start_date": "2030-01-02T03:04:05Z", "sync_expiration_date": "2030-01-02T04:04:05Z"}),
    "other robot, largest numbers": Shape(
        body={"robot_username": "devtable+dtrobot2", "sync_interval": 2**31 - 1, "skopeo_timeout_interval": 2**31 - 1},
        stored={"skopeo_timeout": 2**40},
        shows={"robot_username": "devtable+dtrobot2", "sync_interval": 2**31 - 1, "skopeo_timeout_interval": 2**40}),
}


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def shape(request) -> Shape:
    return SHAPES[request.param]


@pytest.fixture
def shaped(shape, callers, app_with, admin, world) -> Shape:
    _post(app_with(**shape.settings).test_client(), *MIRRORED, admin, **shape.body)
    if shape.stored:
        with world.database.transaction() as s:
            config = s.scalars(select(RepoMirrorConfig).join(Repository).where(Repository.name == MIRRORED[1])).one()
            for attribute, value in shape.stored.items():
                setattr(config, attribute, value)
    return shape


def test_every_config_shape_answers_as_the_orm_path(shaped, callers, client, admin, app_with):
    shown = client.get("/api/v1/repository/devtable/simple/mirror", headers=admin)
    assert shown.status_code == 200
    assert {key: shown.get_json()[key] for key in shaped.shows} == shaped.shows  # the shape is what is read
    found = Disagreements()
    found.check(app_with, callers, [MIRRORED])
    assert not found.cells, "\n".join(found.cells)
