"""readcache.Prepared: the hot read run on the DBAPI connection reads exactly as SQLAlchemy would, and fails as it would."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import NamedTuple

import pytest
from sqlalchemy import and_, bindparam, literal_column, select, text
from sqlalchemy.exc import OperationalError

from quaymirror import db as dbmod
from quaymirror.accounts.models import User
from quaymirror.readcache import Kept, Prepared

ROBOT = User.__table__.alias("robot")
# Typed columns (booleans and datetimes need the dialect's processors on SQLite), a literal '%' (the
# PostgreSQL body keeps the compiler's %% escapes), a bind used twice, a LIMIT, an outer join.
STATEMENT = (
    select(User.id.label("id"), User.username.label("name"), User.is_robot.label("robot"),
           User.created.label("created"), literal_column("'100%'").label("percent"), ROBOT.c.username.label("robot_name"))
    .outerjoin(ROBOT, and_(ROBOT.c.robot_namespace_id == User.id, ROBOT.c.username.like(bindparam("pattern"))))
    .where(User.username.like("%er%"), User.username != bindparam("pattern"), User.username == bindparam("name"))
    .limit(1)
)



class Person(NamedTuple):
    id: int
    name: str
    robot: bool
    created: datetime
    percent: str
    robot_name: str | None


@pytest.fixture
def people(database):
    with database.transaction() as session:
        owner = User(username="owner", created=datetime(2026, 11, 27, 7, 30, 5))
        session.add(owner)
        session.flush()
        session.add(User(username="owner+bot", is_robot=True, robot_namespace_id=owner.id))
    return database


def _expected(database: dbmod.Database, params: dict) -> dict | None:
    with database.engine.connect() as connection:
        row = connection.execute(STATEMENT, params).first()
    return row._asdict() if row is not None else None


def test_rows_read_as_from_sqlalchemy_again_and_on_every_connection(people):
    prepared = Prepared("quaymirror_test_people", STATEMENT, Person)
    engine = people.read_engine
    params = {"name": "owner", "pattern": "owner+%"}
    expected = _expected(people, params)
    assert expected["created"] == datetime(2026, 11, 27, 7, 30, 5) and expected["robot"] is False
    assert expected["percent"] == "100%" and expected["robot_name"] == "owner+bot"
    first, second = engine.raw_connection(), engine.raw_connection()  # two pooled connections, each prepared once
    try:
        for connection in (first, second, first, second):
            row = prepared.first(engine, connection, params)
            assert row._asdict() == expected
            assert type(row.created) is datetime and type(row.robot) is bool
        assert prepared.first(engine, first, {"name": "nobody", "pattern": "x"}) is None
    finally:
        first.close()
        second.close()


def test_a_row_type_that_is_not_the_statements_labels_is_refused_at_once():
    """At import of the module that builds it, not at the first request that reads a misnamed value."""
    swapped = NamedTuple("Swapped", [(name, object) for name in ("name", "id", *Person._fields[2:])])
    with pytest.raises(ValueError, match="Swapped has the fields"):
        Prepared("quaymirror_test_swapped", STATEMENT, swapped)
    with pytest.raises(ValueError, match="selects"):
        Prepared("quaymirror_test_short", STATEMENT, NamedTuple("Short", [("id", int)]))


def test_a_kept_row_derives_its_value_once_even_none():
    made: list[Person] = []
    row = Person(1, "owner", False, datetime(2026, 1, 1), "100%", None)
    for value in ("OWNER", None):
        kept = Kept(row, version="v1")
        answers = [kept.derive(lambda r, value=value: made.append(r) or value) for _ in range(3)]
        assert answers == [value] * 3
    assert made == [row, row]  # one computation per kept row


def test_a_connection_the_server_dropped_fails_as_sqlalchemy_and_the_pool_recovers(postgres_url):
    """A real fault: the server ends the connection's backend (pg_terminate_backend)."""
    database = dbmod.Database(postgres_url)
    prepared = Prepared("quaymirror_test_drop", STATEMENT, Person)
    params = {"name": "nobody", "pattern": "x"}
    try:
        engine = database.read_engine
        connection = engine.raw_connection()
        assert prepared.first(engine, connection, params) is None
        with database.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": connection.dbapi_connection.get_backend_pid()})
        with pytest.raises(OperationalError) as raised:  # the app's handler answers it with a JSON 503
            prepared.first(engine, connection, params)
        assert raised.value.connection_invalidated
        connection.close()
        again = engine.raw_connection()  # a new connection, prepared anew
        try:
            assert prepared.first(engine, again, params) is None
        finally:
            again.close()
    finally:
        database.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_get_when_the_database_cannot_be_reached_is_a_json_503(settings):
    """A real fault: nothing listens on the port of the database URL (the read path connects itself)."""
    from quaymirror.app import create_app

    url = "postgresql+psycopg2://postgres@127.0.0.1:9/test"
    database = dbmod.Database(url)
    try:
        client = create_app(replace(settings, database_url=url), database).test_client()
        response = client.get("/api/v1/repository/bench/app/mirror", headers={"Authorization": "Bearer abc"})
        assert response.status_code == 503, response.data
        assert response.get_json()["error_type"] == "service_unavailable"
    finally:
        database.dispose()
