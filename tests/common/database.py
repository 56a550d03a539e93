"""Database and app fixtures of the whole suite: a migrated database on SQLite and on PostgreSQL, an app.

Every test that uses ``database`` runs once per backend. PostgreSQL is the
server on 127.0.0.1:5432 (trust auth); each test session creates its own
database there and drops it at the end. With CI=true an unreachable PostgreSQL
fails the run; elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from quaymirror import db as dbmod
from quaymirror.models import Base
from quaymirror.settings import Settings

PG_ADMIN_URL = os.environ.get("QUAYMIRROR_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
TEST_SECRET = "test-secret-key-for-the-suite"
T = TypeVar("T")


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


_ENGINES: dict[str, Engine] = {}


def _engine(url: str) -> Engine:
    """One engine per URL for the suite's own resets (not the product's: a test's ``database`` is its own)."""
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = create_engine(url, poolclass=NullPool)
    return engine


@dataclass(frozen=True)
class Rows:
    """Every row of every table and where each table's id sequence stands: a state that a PostgreSQL test
    database is put back into in one transaction (SQLite copies a template file instead)."""

    tables: dict[str, list[dict[str, Any]]]
    sequences: dict[str, tuple[int, bool]]


def read_rows(url: str) -> Rows:
    """The rows and id sequences of the PostgreSQL database at ``url`` as they are now."""
    tables: dict[str, list[dict[str, Any]]] = {}
    sequences: dict[str, tuple[int, bool]] = {}
    with _engine(url).connect() as conn:
        for table in Base.metadata.sorted_tables:
            tables[table.name] = [dict(row) for row in conn.execute(table.select().order_by(table.c.id)).mappings()]
            sequence = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": f'"{table.name}"'}).scalar()
            if sequence is not None:
                last, called = conn.execute(text(f"SELECT last_value, is_called FROM {sequence}")).one()
                sequences[table.name] = (last, called)
    return Rows(tables, sequences)


def truncate_all(url: str, rows: Rows | None = None) -> None:
    """Empty every table of the PostgreSQL database at ``url`` and restart the ids, or put ``rows`` back.

    DELETE is ~50x faster than TRUNCATE on tiny tables; the statements of each step go in one round trip.
    """
    sequenced = [table for table in Base.metadata.sorted_tables if "id" in table.c]
    with _engine(url).begin() as conn:
        conn.exec_driver_sql("; ".join(f'DELETE FROM "{table.name}"' for table in reversed(Base.metadata.sorted_tables)))
        for table in Base.metadata.sorted_tables:
            if rows is not None and rows.tables[table.name]:
                conn.execute(table.insert(), rows.tables[table.name])
        positions = {table.name: (rows.sequences[table.name] if rows is not None else (1, False)) for table in sequenced}
        conn.exec_driver_sql("SELECT " + ", ".join(
            f"setval(pg_get_serial_sequence('\"{name}\"', 'id'), {last}, {'true' if called else 'false'})"
            for name, (last, called) in positions.items()))


@dataclass(frozen=True)
class Seed(Generic[T]):
    """Rows made once per session and backend that a test's database starts with: the SQLite file holding
    them, or the :class:`Rows` a PostgreSQL database is reset to; ``made`` is what their builder returned."""

    sqlite_file: Path | None
    rows: Rows | None
    made: T


def seed_sqlite(template: Path, path: Path, build: Callable[[dbmod.Database], T]) -> Seed[T]:
    """``build`` run once on a copy of the migrated ``template`` at ``path``, which each test copies."""
    shutil.copy(template, path)
    database = dbmod.Database(f"sqlite:///{path}")
    try:
        made = build(database)
    finally:
        database.dispose()
    # The last connection's close checkpoints the write-ahead log into the file, the only thing copied.
    assert not path.with_name(path.name + "-wal").exists(), "the seed's write-ahead log was not checkpointed"
    return Seed(path, None, made)


def seed_postgres(url: str, build: Callable[[dbmod.Database], T]) -> Seed[T]:
    """``build`` run once on the emptied session database at ``url``; its rows are what each test gets."""
    truncate_all(url)
    database = dbmod.Database(url)
    try:
        made = build(database)
    finally:
        database.dispose()
    return Seed(None, read_rows(url), made)


# The world's seed of this test, when its database was made with it (``database_url``); ``world`` reads it.
WORLD_SEED = pytest.StashKey[Seed]()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, request, tmp_path) -> str:
    """The test's own database: a copy of the migrated template (SQLite) or the session's database emptied
    (PostgreSQL). A test that uses ``world`` starts with the world's rows in it, made once per session and
    backend (``tests/common/world.py``): building them per test cost more than most tests themselves."""
    seed = request.getfixturevalue(f"{backend}_world") if "world" in request.fixturenames else None
    if seed is not None:
        request.node.stash[WORLD_SEED] = seed
    if backend == "sqlite":
        path = tmp_path / "quaymirror.db"
        shutil.copy(seed.sqlite_file if seed is not None else request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    truncate_all(url, seed.rows if seed is not None else None)
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
