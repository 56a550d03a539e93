"""GET /mirror's read cache: answers without reading the database, never outlives a write.

Writes "by another process" are made on a driver connection of their own, outside SQLAlchemy's
sessions, as another API replica, a worker, psql or sqlite3 would: only the database can tell this
process about them (PostgreSQL's snapshot, SQLite's data_version), and the very next GET sees them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import psycopg2
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url

from quaymirror.auth import models as auth_models
from quaymirror.auth.tokens import hash_token
from quaymirror.db import utcnow
from tests.common.mirror_api import MIRROR, mirror_body

pytestmark = pytest.mark.usefixtures("quay_dns")  # no request of these tests asks the real DNS

ONLY_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"])


def hits() -> float:
    return REGISTRY.get_sample_value("quaymirror_read_cache_lookups_total", {"outcome": "hit"}) or 0.0


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


def test_a_write_by_another_process_is_seen_by_the_next_get(mirrored, admin, database_url):
    assert cached_get(mirrored, admin).get_json()["sync_interval"] == 5000
    with other_connection(database_url) as cursor:
        cursor.execute("UPDATE repomirrorconfig SET sync_interval = 4321")
    assert mirrored.get(MIRROR, headers=admin).get_json()["sync_interval"] == 4321
    assert cached_get(mirrored, admin).get_json()["sync_interval"] == 4321  # and cached again


def test_a_write_through_this_process_is_seen_by_the_next_get(mirrored, admin):
    cached_get(mirrored, admin)
    assert mirrored.put(MIRROR, json={"sync_interval": 777}, headers=admin).status_code == 201
    assert mirrored.get(MIRROR, headers=admin).get_json()["sync_interval"] == 777


def test_a_token_revoked_by_another_process_is_refused_at_once(mirrored, admin, world, database_url):
    cached_get(mirrored, admin)
    with other_connection(database_url) as cursor:
        cursor.execute("DELETE FROM oauthaccesstoken WHERE token_hash = %s", (hash_token(world.tokens["admin"]),))
    assert mirrored.get(MIRROR, headers=admin).status_code == 401


def test_a_permission_removed_by_another_process_is_refused_at_once(mirrored, world, database_url):
    world.grant("reader", "devtable/simple", "admin")
    reader = world.headers("reader")
    assert cached_get(mirrored, reader).status_code == 200
    with other_connection(database_url) as cursor:
        cursor.execute("DELETE FROM repositorypermission")
    assert mirrored.get(MIRROR, headers=reader).status_code == 403


@ONLY_POSTGRESQL
def test_a_write_committed_while_a_get_reads_is_not_served_afterwards(mirrored, admin, database_url):
    """The version is taken before the read: a commit between the two costs a miss, never a stale hit.
    A transaction of another process is held open across a GET, then committed."""
    cached_get(mirrored, admin)
    parsed = make_url(database_url)
    writer = psycopg2.connect(host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database)
    try:
        with writer.cursor() as cursor:
            cursor.execute("UPDATE repomirrorconfig SET sync_interval = 999")
            # Open, not committed: GET still reads 5000 (its snapshot lists the writer as in progress).
            assert mirrored.get(MIRROR, headers=admin).get_json()["sync_interval"] == 5000
        writer.commit()
    finally:
        writer.close()
    assert mirrored.get(MIRROR, headers=admin).get_json()["sync_interval"] == 999


def test_a_token_that_expires_is_refused_although_its_row_is_cached(mirrored, world, monkeypatch):
    world.token("short", "devtable", "repo:admin", expires_in=60)
    short = world.headers("short")
    assert cached_get(mirrored, short).status_code == 200
    # A minute and a second later, by the clock every request checks a token's expiry against (moved
    # instead of waited for): an answer from the cache (on PostgreSQL a write anywhere in the cluster
    # meanwhile costs a miss first), so the row is still kept, and the expiry is checked on every request.
    later = utcnow() + timedelta(seconds=61)
    monkeypatch.setattr(auth_models, "utcnow", lambda: later)
    response = cached_get(mirrored, short)
    assert response.status_code == 401


def test_without_the_cache_every_get_reads_the_database(mirrored, admin, client_with):
    uncached = client_with(read_cache=False)
    before = hits()
    for _ in range(5):
        assert uncached.get(MIRROR, headers=admin).status_code == 200
    assert hits() == before


