"""Fixtures shared by the whole suite: a migrated database on SQLite and on PostgreSQL, an app, users.

Every test that uses ``database`` runs once per backend. PostgreSQL is the
server on 127.0.0.1:5432 (trust auth); each test session creates its own
database there and drops it at the end. With CI=true an unreachable PostgreSQL
fails the run; elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from quaymirror import db as dbmod
from quaymirror.models import Base
from quaymirror.settings import Settings

PG_ADMIN_URL = os.environ.get("QUAYMIRROR_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
TEST_SECRET = "test-secret-key-for-the-suite"


def _pg_admin_engine():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@contextmanager
def fresh_postgres(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (its URL), dropped afterwards.

    An unreachable server fails the test under CI=true and skips it elsewhere, with the reason.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = _pg_admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001 - any connection problem means "no PostgreSQL here"
        message = f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {type(error).__name__}: {error}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
            ), {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    with fresh_postgres("quaymirror_test") as url:
        dbmod.upgrade(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once is the slow part)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    dbmod.upgrade(f"sqlite:///{path}")
    return path


# Fixtures that need something outside this Python process: a PostgreSQL server, docker-registry, skopeo,
# or a quaymirror server process. A test that uses one, runs on the PostgreSQL backend, or is marked
# ``integration`` by its module (tests that start processes themselves) is an integration test; every other
# one is a unit test: ``pytest -m unit`` runs those alone, on a machine with none of these (CI shows it).
OUTSIDE_FIXTURES = frozenset({
    "postgres_url", "pg_database", "pg_settings",
    "registry", "tls_registry", "auth_registry", "counting_skopeo", "make_worker", "workers", "live_server",
    "process_env",
})
# Whole directories of such tests: the end-to-end tests (real servers) and the registry harness's own.
OUTSIDE_DIRECTORIES = ("e2e", "harness")


def pytest_collection_modifyitems(items) -> None:
    root = Path(__file__).parent
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("backend") == "postgresql"
        directory = item.path.relative_to(root).parts[0]
        if (on_postgres or directory in OUTSIDE_DIRECTORIES or OUTSIDE_FIXTURES & set(item.fixturenames)
                or item.get_closest_marker("integration")):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


_ENGINES: dict[str, object] = {}


def _truncate_all(url: str) -> None:
    """Empty every table and restart the ids: DELETE is ~50x faster than TRUNCATE on tiny tables."""
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f'DELETE FROM "{table.name}"'))
        for table in Base.metadata.sorted_tables:
            if "id" in table.c:
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{table.name}\"', 'id'), 1, false)"))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, request, tmp_path) -> str:
    if backend == "sqlite":
        path = tmp_path / "quaymirror.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _truncate_all(url)
    return url


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    instance = tmp_path / "instance"
    instance.mkdir()
    return Settings(
        instance_path=instance,
        database_url=database_url,
        secret_key=TEST_SECRET,
        storage=f"oci:{instance / 'storage'}",
        worker_poll_seconds=0.2,
    )


@pytest.fixture
def database(settings) -> Iterator[dbmod.Database]:
    database = dbmod.Database(settings.database_url)
    yield database
    database.dispose()


@pytest.fixture
def app(settings, database):
    from quaymirror.app import create_app

    app = create_app(settings, database)
    app.config["TESTING"] = False  # errors must render as in production, not propagate
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@dataclass
class World:
    """Quay's test fixtures (initdb): users, an org, robots, repositories and one token per scope set."""

    database: dbmod.Database
    secret_key: str
    tokens: dict[str, str] = field(default_factory=dict)
    robot_tokens: dict[str, str] = field(default_factory=dict)

    def user(self, name: str, superuser: bool = False):
        from quaymirror.accounts import service as accounts

        with self.database.transaction() as s:
            return accounts.create_user(s, name, f"{name}@example.com", superuser)

    def org(self, name: str, owner: str, members: tuple[str, ...] = ()):
        from quaymirror.accounts import service as accounts
        from quaymirror.accounts.models import OrganizationMember

        with self.database.transaction() as s:
            org = accounts.create_organization(s, name, accounts.get_by_name(s, owner))
            for member in members:
                s.add(OrganizationMember(organization_id=org.id, user_id=accounts.get_by_name(s, member).id,
                                         role="member"))
            return org

    def robot(self, full_name: str) -> str:
        from quaymirror.accounts import service as accounts
        from quaymirror.security.secrets import SecretBox

        ns, short = full_name.split("+")
        with self.database.transaction() as s:
            _robot, token = accounts.create_robot(s, SecretBox(self.secret_key), accounts.get_by_name(s, ns), short)
        self.robot_tokens[full_name] = token
        return token

    def repo(self, path: str, state: str = "NORMAL", visibility: str = "private"):
        from quaymirror.accounts import service as accounts
        from quaymirror.repositories import service as repositories
        from quaymirror.repositories.models import RepositoryState

        ns, name = path.split("/")
        with self.database.transaction() as s:
            return repositories.create(s, accounts.get_by_name(s, ns), name, visibility=visibility,
                                       state=RepositoryState[state])

    def grant(self, who: str, path: str, role: str) -> None:
        from quaymirror.accounts import service as accounts
        from quaymirror.repositories import service as repositories

        ns, name = path.split("/")
        with self.database.transaction() as s:
            repo = repositories.get(s, accounts.get_by_name(s, ns), name)
            repositories.set_permission(s, repo, accounts.get_by_name(s, who), role)

    def token(self, label: str, owner: str, scopes: str, expires_in: int | None = None) -> str:
        from quaymirror.accounts import service as accounts
        from quaymirror.auth import scopes as scope_names
        from quaymirror.auth.tokens import issue

        with self.database.transaction() as s:
            raw = issue(s, accounts.get_by_name(s, owner), scope_names.parse(scopes), expires_in)
        self.tokens[label] = raw
        return raw

    def headers(self, label: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[label]}"} if label else {}


@pytest.fixture
def world(database) -> World:
    """The fixture set of Quay's recorded exchanges (see tests/mirror/test_quay_captures.py)."""
    w = World(database, TEST_SECRET)
    w.user("devtable", superuser=True)
    w.user("reader")
    w.user("freshuser")
    w.repo("devtable/simple")
    w.robot("devtable+dtrobot")
    w.robot("devtable+dtrobot2")
    w.org("buynlarge", owner="freshuser")
    w.robot("buynlarge+coolrobot")
    w.token("admin", "devtable", "repo:admin")
    w.token("read", "devtable", "repo:read")
    w.token("write", "devtable", "repo:write")
    w.token("reader", "reader", "repo:admin")
    w.token("fresh", "freshuser", "repo:admin")
    return w


@pytest.fixture
def empty_database_url(backend, tmp_path) -> Iterator[str]:
    """A brand-new database without any table, for tests that run the migrations themselves.

    SQLite: a file in the test's temp folder. PostgreSQL: its own database, dropped afterwards.
    """
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with fresh_postgres("quaymirror_empty") as url:
        yield url


@pytest.fixture
def app_with(settings, database):
    """Build another app on the test's database with some settings changed: ``app_with(superusers_full_access=True)``."""
    from quaymirror.app import create_app

    def build(**overrides):
        app = create_app(settings.with_overrides(**overrides), database)
        app.config["TESTING"] = False
        return app

    return build
