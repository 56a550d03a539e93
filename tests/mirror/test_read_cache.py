"""GET /mirror's read cache: answers without reading the database, never outlives a write.

Writes "by another process" are made on a driver connection of their own, outside SQLAlchemy's
sessions, as another API replica, a worker, psql or sqlite3 would: only the database can tell this
process about them (PostgreSQL's NOTIFY, SQLite's data_version).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg2
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.sql.util import find_tables

from quaymirror import db as dbmod
from quaymirror.auth.tokens import hash_token
from quaymirror.mirror.api import _VIEW
from tests.mirror.conftest import MIRROR, mirror_body

ONLY_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"])
LISTENER = f"quaymirror-listen-{dbmod.CHANGED}"


def hits() -> float:
    return REGISTRY.get_sample_value("quaymirror_read_cache_lookups_total", {"outcome": "hit"}) or 0.0


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.02)


class _Cursor:
    """psycopg2's paramstyle (%s) on either driver."""

    def __init__(self, cursor, sqlite: bool) -> None:
        self._cursor, self._sqlite = cursor, sqlite

    def execute(self, sql: str, params: tuple = ()) -> None:
        self._cursor.execute(sql.replace("%s", "?") if self._sqlite else sql, params)

    def fetchall(self) -> list:
        return self._cursor.fetchall()


@contextmanager
def other_connection(url: str) -> Iterator[_Cursor]:
    """An autocommit driver connection of its own: another process, as far as the database can tell."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(parsed.database, isolation_level=None)
    else:
        conn = psycopg2.connect(host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database)
        conn.autocommit = True
    try:
        yield _Cursor(conn.cursor(), parsed.get_backend_name() == "sqlite")
    finally:
        conn.close()


@pytest.fixture
def mirrored(client, admin):
    assert client.post(MIRROR, json=mirror_body(), headers=admin).status_code == 201
    return client


def cached_get(client, headers: dict[str, str]):
    """GET until one answer came from the cache (the listener starts with the first GET); that answer."""
    deadline = time.monotonic() + 10
    while True:
        before = hits()
        response = client.get(MIRROR, headers=headers)
        if hits() > before:
            return response
        assert time.monotonic() < deadline, "no GET was answered from the cache within 10 s"
        time.sleep(0.02)


def test_a_repeated_get_is_answered_from_the_cache_with_the_same_body(mirrored, admin):
    fresh = mirrored.get(MIRROR, headers=admin)
    cached = cached_get(mirrored, admin)
    assert (cached.status_code, cached.data) == (fresh.status_code, fresh.data)
    exposed = mirrored.get("/metrics").get_data(as_text=True)
    assert 'quaymirror_read_cache_lookups_total{outcome="hit"}' in exposed


@ONLY_POSTGRESQL
def test_a_write_through_this_process_is_read_back_at_once_without_waiting_for_its_notification(
        mirrored, admin, database_url):
    cached_get(mirrored, admin)
    with other_connection(database_url) as cursor:
        # No notification this time: only this process's own commit can empty its cache.
        cursor.execute("ALTER TABLE repomirrorconfig DISABLE TRIGGER quaymirror_changed")
        try:
            assert mirrored.put(MIRROR, json={"sync_interval": 777}, headers=admin).status_code == 201
            assert mirrored.get(MIRROR, headers=admin).get_json()["sync_interval"] == 777
        finally:
            cursor.execute("ALTER TABLE repomirrorconfig ENABLE TRIGGER quaymirror_changed")


def test_a_write_by_another_process_reaches_a_cached_get(mirrored, admin, database_url, backend):
    assert cached_get(mirrored, admin).get_json()["sync_interval"] == 5000
    with other_connection(database_url) as cursor:
        cursor.execute("UPDATE repomirrorconfig SET sync_interval = 4321")
    if backend == "sqlite":  # data_version is asked on every lookup: the very next GET sees the write
        assert mirrored.get(MIRROR, headers=admin).get_json()["sync_interval"] == 4321
    wait_for(lambda: mirrored.get(MIRROR, headers=admin).get_json()["sync_interval"] == 4321, 5,
             "the other process's write reaching GET")


def test_a_token_revoked_by_another_process_is_refused(mirrored, admin, world, database_url):
    cached_get(mirrored, admin)
    with other_connection(database_url) as cursor:
        cursor.execute("DELETE FROM oauthaccesstoken WHERE token_hash = %s",
                       (hash_token(world.tokens["admin"]),))
    wait_for(lambda: mirrored.get(MIRROR, headers=admin).status_code == 401, 5, "the revoked token's 401")


def test_a_permission_removed_by_another_process_is_refused(mirrored, world, database_url):
    world.grant("reader", "devtable/simple", "admin")
    reader = world.headers("reader")
    assert cached_get(mirrored, reader).status_code == 200
    with other_connection(database_url) as cursor:
        cursor.execute("DELETE FROM repositorypermission")
    wait_for(lambda: mirrored.get(MIRROR, headers=reader).status_code == 403, 5, "the 403 without the permission")


def test_a_token_that_expires_is_refused_although_its_row_is_cached(mirrored, world):
    world.token("short", "devtable", "repo:admin", expires_in=3)
    short = world.headers("short")
    assert cached_get(mirrored, short).status_code == 200
    expires = time.monotonic() + 3.2
    wait_for(lambda: time.monotonic() > expires, 5, "the token's expiry")
    before = hits()
    response = mirrored.get(MIRROR, headers=short)
    assert hits() > before  # the row still came from the cache: the expiry is checked on every request
    assert response.status_code == 401


@ONLY_POSTGRESQL
def test_while_the_listener_is_down_gets_read_the_database_and_its_return_empties_the_cache(
        mirrored, admin, database, database_url):
    """A real fault: the server ends the listener's backend; a write made meanwhile sends its NOTIFY to nobody."""
    cached_get(mirrored, admin)
    listener = database.read_cache._listener
    with other_connection(database_url) as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = %s AND datname = current_database()", (LISTENER,))
        assert cursor.fetchall() == [(True,)]
        wait_for(lambda: not listener.listening.is_set(), 5, "the listener noticing its end")
        cursor.execute("UPDATE repomirrorconfig SET sync_interval = 1234")
        before = hits()
        assert mirrored.get(MIRROR, headers=admin).get_json()["sync_interval"] == 1234
        assert hits() == before  # read from the database
        wait_for(lambda: listener.listening.is_set(), 15, "the listener's reconnection")
        assert cached_get(mirrored, admin).get_json()["sync_interval"] == 1234


def test_a_read_that_raced_an_invalidation_is_not_kept(database):
    cache = database.read_cache
    wait_for(lambda: cache.lookup(("k",))[1] is not None, 10, "the listener starting")
    _row, generation = cache.lookup(("k",))
    cache.invalidate()  # a write committed while the read was in flight
    cache.store(("k",), ("old",), generation)
    assert cache.lookup(("k",))[0] is None
    _row, generation = cache.lookup(("k",))
    cache.store(("k",), ("new",), generation)
    assert cache.lookup(("k",))[0] == ("new",)


def test_without_the_cache_every_get_reads_the_database(mirrored, admin, client_with):
    uncached = client_with(read_cache=False)
    before = hits()
    for _ in range(5):
        assert uncached.get(MIRROR, headers=admin).status_code == 200
    assert hits() == before


@ONLY_POSTGRESQL
def test_every_table_the_cached_statement_reads_announces_its_writes(database):
    read = {getattr(table, "element", table).name for table in find_tables(_VIEW, include_aliases=True)}
    with database.engine.connect() as connection:
        triggered = set(connection.scalars(text(
            "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE t.tgname = 'quaymirror_changed'")))
    assert len(read) == 7 and read <= triggered, read - triggered
