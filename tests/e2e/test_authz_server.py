"""The authorization matrix (issue 6) against the real server: ``quaymirror serve --no-worker`` (gunicorn).

Every endpoint x every caller, on SQLite and PostgreSQL: the foundation endpoints (the tables of
tests/common/authz.py) and the mirror endpoints (the tables below, incl. sync-now, sync-cancel,
DELETE, the sync history and the mirror health). Each cell checks the status, that the answer is
JSON, and Quay's error body for 401/403; a caller whose writes are all refused leaves the database
exactly as it was.

Per backend two servers start once for the module, one per value of
QUAYMIRROR_SUPERUSERS_FULL_ACCESS, both on the one database (``--no-worker``: nothing but the
requests touches it). Before each test (one caller) that database is emptied and the world rebuilt
with the usual fixtures (``matrix_world``, ``mirror_world``), so one caller's successful writes
cannot change the next caller's expectations.
"""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.pool import NullPool

from quaymirror.db import utcnow
from quaymirror.mirror.models import MirrorSyncRun, RepoMirrorConfig, RepoMirrorStatus, RunStatus
from quaymirror.models import Base
from tests.common.authz import CALLERS as FOUNDATION_CALLERS
from tests.common.authz import ENDPOINTS, ERROR_BODIES, EXPECTED
from tests.common.database import TEST_SECRET, truncate_all
from tests.common.mirror_api import PUBLIC_ADDRESS, post_body
from tests.common.mirrors import Mirrors
from tests.common.servers import Server

MUTATING = {"POST", "PUT", "DELETE"}
NOT_JSON = object()


def call(port: int, method: str, path: str, token: str | None = None,
         body: object = None) -> tuple[int, object, dict[str, str]]:
    """One request on a fresh connection: (status, the body parsed strictly as JSON, headers).

    An empty body is None, a body that is no JSON ``NOT_JSON`` (servers.request would return its text).
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        response_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = NOT_JSON
    return response.status, payload, response_headers


# ------------------------------------------------------------------------------ servers and data


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request) -> str:
    """The suite's backend parametrisation, module-scoped here so each backend starts its servers once."""
    return request.param


@pytest.fixture(scope="module")
def server_database_url(backend, request, tmp_path_factory) -> str:
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("authz-sqlite") / "quaymirror.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module")
def servers(server_database_url, tmp_path_factory) -> Iterator[dict[bool, Server]]:
    """{superusers_full_access: server}: ``serve --no-worker`` (no worker may touch the mirror rows)."""
    started: dict[bool, Server] = {}
    try:
        # One after the other: on an empty SQLite database ``serve`` creates the bootstrap admin, and two
        # servers starting together would both try.
        for full_access in (False, True):
            instance = tmp_path_factory.mktemp(f"authz-instance-{'on' if full_access else 'off'}")
            started[full_access] = Server(instance, "--no-worker", database_url=server_database_url,
                                          secret_key=TEST_SECRET, superusers_full_access=full_access,
                                          storage=f"oci:{instance / 'storage'}", api_workers=2)
            started[full_access].wait_healthy()
        yield started
    finally:
        for server in started.values():
            server.stop()


def _empty(url: str) -> None:
    if not url.startswith("sqlite"):
        truncate_all(url)
        return
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
    try:
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(text(f'DELETE FROM "{table.name}"'))
    finally:
        engine.dispose()


@pytest.fixture
def database_url(server_database_url, servers) -> str:
    """Overrides the suite's: the servers' database, emptied for this test (``world`` then fills it)."""
    _empty(server_database_url)
    return server_database_url


def snapshot(database) -> dict[str, list[str]]:
    """Every row of every table, for "a refused caller changed nothing"."""
    with database.transaction() as session:
        return {table.name: sorted(repr(tuple(row)) for row in session.execute(select(table)))
                for table in Base.metadata.sorted_tables}


def check_cell(where: str, status: int, payload: object, headers: dict[str, str], want: int) -> str | None:
    """What is wrong with one answer (None: nothing): status, JSON, Quay's error body."""
    if status != want:
        return f"{where} -> {status} (expected {want}) {payload!r}"
    if status == 204:
        return None if payload is None else f"{where} -> 204 with a body {payload!r}"
    if not headers.get("content-type", "").startswith("application/json") or payload is None or payload is NOT_JSON:
        return f"{where} -> not JSON: {headers.get('content-type')} {payload!r}"
    if status in ERROR_BODIES:
        if not isinstance(payload, dict):
            return f"{where} -> body {payload!r}"
        error_type, detail = ERROR_BODIES[status]
        if payload.get("error_type") != error_type or payload.get("detail") != detail:
            return f"{where} -> body {payload!r}"
    return None


# ------------------------------------------------------------------------- foundation endpoints


@pytest.mark.parametrize("caller_name", list(FOUNDATION_CALLERS))
def test_foundation_matrix(caller_name, matrix_world, servers, database):
    caller = FOUNDATION_CALLERS[caller_name]
    server = servers[caller.full_access]
    token = matrix_world.tokens[caller.token] if caller.token else None
    writes_refused = all(EXPECTED[caller_name][column] >= 400
                         for column, (method, _path, _body) in ENDPOINTS.items() if method in MUTATING)
    before = snapshot(database) if writes_refused else None
    wrong = []
    for column, (method, path, body) in ENDPOINTS.items():
        status, payload, headers = call(server.port, method, path, token, body)
        want = EXPECTED[caller_name][column]
        problem = check_cell(f"{column}: {method} {path}", status, payload, headers, want)
        # 400 is only expected where the robot of that name does not exist (Quay's data-model answer), and for
        # the organization mirror's POST of an empty body (its schema, checked before the caller).
        expected_400 = ({"external_namespace: Missing data for required field."}
                        if column == "orgmirror_post_empty" else None)
        if problem is None and want == 400 and (
                payload.get("detail") not in expected_400 if expected_400 is not None
                else payload != {"message": "Could not find robot with specified username"}):
            problem = f"{column}: {method} {path} -> body {payload!r}"
        if problem:
            wrong.append(problem)
    assert not wrong, f"{caller_name}:\n" + "\n".join(wrong)
    if before is not None:
        assert snapshot(database) == before, f"{caller_name}: refused, yet the database changed"


# ----------------------------------------------------------------------------- mirror endpoints

COLUMNS = ["get", "post", "put", "delete", "sync_now", "sync_cancel", "syncs", "sync_run"]
SUCCESS = {"get": 200, "post": 201, "put": 201, "delete": 204, "sync_now": 204, "sync_cancel": 204, "syncs": 200,
           "sync_run": 200}
NAMESPACES = {"devtable": "devtable+dtrobot", "buynlarge": "buynlarge+coolrobot"}
SYNC_RUN_IDS = {"devtable": 901, "buynlarge": 902}  # one finished run per namespace, for GET .../syncs/<id>


def request_for(column: str, namespace: str) -> tuple[str, str, dict | None]:
    base = f"/api/v1/repository/{namespace}/m_{column}/mirror"
    return {
        "get": ("GET", base, None),
        # An IP literal: the server resolves host names itself (no test resolver in its process).
        "post": ("POST", base, post_body(NAMESPACES[namespace], f"{PUBLIC_ADDRESS}/a/b")),
        "put": ("PUT", base, {"sync_interval": 7200}),
        "delete": ("DELETE", base, None),
        "sync_now": ("POST", base + "/sync-now", None),
        "sync_cancel": ("POST", base + "/sync-cancel", None),
        "syncs": ("GET", base + "/syncs", None),
        "sync_run": ("GET", f"{base}/syncs/{SYNC_RUN_IDS[namespace]}", None),
    }[column]


HEALTH = "/api/v1/repository/mirror/health"
# The health columns: the global view and one per namespace.
SUPERUSER_HEALTH = "/api/v1/superuser/mirror/health"
HEALTH_COLUMNS = {"health": HEALTH, **{f"health_{ns}": f"{HEALTH}?namespace={ns}" for ns in NAMESPACES},
                  "superuser_health": SUPERUSER_HEALTH}
# devtable is a superuser: its tokens holding super:user read the superuser health, full access or not.
SUPER_USER_TOKENS = {"only:super:user", "sudo"}


@dataclass(frozen=True)
class MirrorCaller:
    """A token label (resolved in ``matrix_world``), the server's full-access switch, and its rights:
    ``admin_of`` the namespaces whose mirrors it manages (repository admin or superuser), ``sees`` the
    namespaces whose mirror health it reads (member of it or the user itself) and ``superuser`` when it
    passes every check (full access on, a super:user token of a superuser: also the global health).
    """

    token: str | None
    full_access: bool = False
    admin_of: frozenset[str] = frozenset()
    sees: frozenset[str] = frozenset()
    superuser: bool = False


DEVTABLE = frozenset({"devtable"})
BOTH = frozenset(NAMESPACES)
CALLERS: dict[str, MirrorCaller] = {
    "anonymous": MirrorCaller(None),
    "garbage token": MirrorCaller("garbage"),
    "expired token": MirrorCaller("expired"),
    "raw robot token as bearer": MirrorCaller("robot-password"),
    # devtable's tokens with a single scope: only repo:admin reaches admin on devtable's repositories.
    "only repo:read": MirrorCaller("only:repo:read", sees=DEVTABLE),
    "only repo:write": MirrorCaller("only:repo:write", sees=DEVTABLE),
    "only repo:admin": MirrorCaller("only:repo:admin", admin_of=DEVTABLE, sees=DEVTABLE),
    "only repo:create": MirrorCaller("only:repo:create", sees=DEVTABLE),
    "only user:read": MirrorCaller("only:user:read", sees=DEVTABLE),
    "only user:admin": MirrorCaller("only:user:admin", sees=DEVTABLE),
    "only org:admin": MirrorCaller("only:org:admin", sees=DEVTABLE),
    "only super:user": MirrorCaller("only:super:user", sees=DEVTABLE),
    "namespace owner": MirrorCaller("owner", admin_of=DEVTABLE, sees=DEVTABLE),
    "org admin": MirrorCaller("orgadmin", admin_of=frozenset({"buynlarge"}), sees=frozenset({"buynlarge"})),
    "org member without admin": MirrorCaller("member", sees=frozenset({"buynlarge"})),
    "other user": MirrorCaller("other"),
    # devtable+dtrobot's OAuth token: read on devtable/simple only. A user namespace's health is its
    # user's alone, so not its robots'.
    "robot oauth token": MirrorCaller("robot"),
    "superuser, full access off, super:user": MirrorCaller("sudo", admin_of=DEVTABLE, sees=DEVTABLE),
    "superuser, full access on, super:user only": MirrorCaller("only:super:user", True, BOTH, BOTH, True),
    "superuser, full access on, super:user + all": MirrorCaller("sudo", True, BOTH, BOTH, True),
    "superuser, full access on, no super:user": MirrorCaller("owner", True, DEVTABLE, DEVTABLE),
}
UNAUTHENTICATED = {"anonymous", "garbage token", "expired token", "raw robot token as bearer"}


def expected(caller: str, column: str, namespace: str) -> int:
    if caller in UNAUTHENTICATED:
        return 401
    return SUCCESS[column] if namespace in CALLERS[caller].admin_of else 403


def expected_health(caller: str, column: str) -> int:
    """The health of this world is good (nothing failing): 200 where allowed."""
    if caller in UNAUTHENTICATED:
        return 401
    if column == "superuser_health":
        return 200 if CALLERS[caller].token in SUPER_USER_TOKENS else 403
    if CALLERS[caller].superuser:
        return 200
    if column == "health":
        return 403
    return 200 if column.removeprefix("health_") in CALLERS[caller].sees else 403


@pytest.fixture
def mirror_world(matrix_world, database):
    """matrix_world plus one MIRROR repository per column and namespace (a config except for POST)."""
    mirrors = Mirrors(database, TEST_SECRET)
    for namespace in NAMESPACES:
        for column in COLUMNS:
            if column == "post":
                matrix_world.repo(f"{namespace}/m_post", state="MIRROR")
                continue
            status = {"sync_cancel": RepoMirrorStatus.SYNC_NOW,
                      "sync_run": RepoMirrorStatus.SUCCESS}.get(column, RepoMirrorStatus.NEVER_RUN)
            config_id = mirrors.create(f"{namespace}/m_{column}", "quay.io/a/b", status=status)
            if column == "sync_run":
                finished = utcnow() - timedelta(minutes=5)
                with database.transaction() as session:
                    config = session.get(RepoMirrorConfig, config_id)
                    session.add(MirrorSyncRun(id=SYNC_RUN_IDS[namespace], repository_id=config.repository_id,
                                        config_id=config_id, trigger="schedule", worker="w-old",
                                        started=finished - timedelta(seconds=5), finished=finished,
                                        status=RunStatus.SUCCESS, tags_matched=0))
    return matrix_world


def test_every_mirror_caller_is_a_foundation_caller_too():
    """Both matrices ask the same population (the mirror one adds the full-access superuser with every scope)."""
    assert {c.token for c in CALLERS.values()} == {c.token for c in FOUNDATION_CALLERS.values()}
    assert len(CALLERS) == len(FOUNDATION_CALLERS) + 1


@pytest.mark.parametrize("caller", list(CALLERS))
def test_mirror_matrix(caller, mirror_world, servers, database):
    who = CALLERS[caller]
    server = servers[who.full_access]
    token = mirror_world.tokens[who.token] if who.token else None
    refused = not who.admin_of
    before = snapshot(database) if refused else None
    wrong = []
    for namespace in NAMESPACES:
        for column in COLUMNS:
            method, path, body = request_for(column, namespace)
            status, payload, headers = call(server.port, method, path, token, body)
            problem = check_cell(f"{namespace}/{column}: {method} {path}", status, payload, headers,
                                 expected(caller, column, namespace))
            if problem:
                wrong.append(problem)
    for column, path in HEALTH_COLUMNS.items():
        status, payload, headers = call(server.port, "GET", path, token)
        problem = check_cell(f"{column}: GET {path}", status, payload, headers, expected_health(caller, column))
        if problem is None and status == 200 and payload.get("healthy") is not True:
            problem = f"{column}: GET {path} -> body {payload!r}"
        if problem:
            wrong.append(problem)
    assert not wrong, f"{caller}:\n" + "\n".join(wrong)

    # A refused caller changed nothing: the PUT target keeps its interval, the DELETE target its config...
    from quaymirror.accounts import service as accounts

    with database.transaction() as session:
        names = {accounts.get_by_name(session, ns).id: ns for ns in NAMESPACES}
        intervals = {f"{names[row.repository.namespace_id]}/{row.repository.name}": row.sync_interval
                     for row in session.scalars(select(RepoMirrorConfig))}
    for namespace in NAMESPACES:
        if expected(caller, "put", namespace) != 201:
            assert intervals[f"{namespace}/m_put"] == 3600
        if expected(caller, "delete", namespace) != 204:
            assert f"{namespace}/m_delete" in intervals
        if expected(caller, "post", namespace) != 201:
            assert f"{namespace}/m_post" not in intervals
    # ... and one refused everywhere left every row of every table as it was.
    if before is not None:
        assert snapshot(database) == before, f"{caller}: refused, yet the database changed"
