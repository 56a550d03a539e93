"""The hot read layer: a statement run on the pooled DBAPI connection itself (``Prepared``), and the process's
cache of its rows, answered again only while the database's version stands (``ReadCache``).

Flask-free: the request plumbing (``web.read_first``) chooses the connection and the switch, and closes the
connection at teardown.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar, cast
from urllib.parse import quote

from prometheus_client import Counter
from sqlalchemy import Select, Text, func, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

# The read cache's own metric (in the default registry, so /metrics shows it): kept here, beside the cache,
# so this low layer needs nothing from the metrics module (which knows the mirror's models).
READ_CACHE = Counter("quaymirror_read_cache_lookups", "GET /mirror reads answered from the process's cache (hit) "
                     "or by the database (miss)", ["outcome"])
READ_CACHE_HIT = READ_CACHE.labels("hit")
READ_CACHE_MISS = READ_CACHE.labels("miss")


R = TypeVar("R", bound=NamedTuple)
T = TypeVar("T")


class Prepared(Generic[R]):
    """A hot read run on the pooled DBAPI connection itself, planned once per connection, its rows of type ``row``.

    GET /mirror is one statement, and SQLAlchemy's execution around it (cache lookup, execution
    context, Result, Row) cost more Python time than the database spent answering; on PostgreSQL,
    planning the seven-table join cost 0.83 ms of 1.1 ms, and psycopg2 never prepares server-side.
    So the statement is compiled once per dialect, each PostgreSQL connection runs ``PREPARE`` once
    and then ``EXECUTE`` (SQLite's driver caches its statements itself), and the row's values pass
    through the columns' own result processors, so they read exactly as from ``session.execute``.
    DBAPI errors leave as SQLAlchemy's, a disconnect invalidating the pool, as SQLAlchemy does.
    Connection poolers in transaction mode (PgBouncer) drop prepared statements: use session mode.

    ``row`` is a NamedTuple whose fields are the statement's labels in their order; a mismatch fails at
    import, not on the first request.
    """

    _BIND = re.compile(r"%\((\w+)\)s")

    def __init__(self, name: str, statement: Select, row: type[R]) -> None:
        labels = tuple(statement.selected_columns.keys())
        if row._fields != labels:
            raise ValueError(f"{row.__name__} has the fields {row._fields}, the statement {name} selects {labels}")
        self.name = name
        self.statement = statement
        self.row = row
        self._plans: dict[str, _Plan] = {}

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            compiled = self.statement.compile(dialect=dialect)
            prepare = None
            if dialect.name == "postgresql":
                order: list[str] = []

                def number(match: re.Match) -> str:
                    if match.group(1) not in order:
                        order.append(match.group(1))
                    return f"${order.index(match.group(1)) + 1}"

                # The body keeps the compiler's %% escapes: it is run with an empty parameter tuple.
                prepare = f"PREPARE {self.name} AS {self._BIND.sub(number, compiled.string)}"
                sql = f"EXECUTE {self.name}({', '.join(['%s'] * len(order))})" if order else f"EXECUTE {self.name}"
            elif dialect.positional:
                order, sql = list(compiled.positiontup or ()), compiled.string
            else:
                raise NotImplementedError(f"Prepared supports PostgreSQL and positional drivers, not {dialect.name}")
            binds = {name: compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in order}
            plan = _Plan(
                prepare=prepare, sql=sql, order=order, defaults=dict(compiled.params),
                binds={name: process for name, process in binds.items() if process is not None},
                results=[(i, process) for i, col in enumerate(self.statement.selected_columns)
                         if (process := col.type.dialect_impl(dialect).result_processor(dialect, None)) is not None],
            )
            self._plans[dialect.name] = plan
        return plan

    def first(self, engine: Engine, connection: PoolProxiedConnection, params: dict[str, Any]) -> R | None:
        """The first row, or None."""
        dialect = engine.dialect
        plan = self._plan(dialect)
        given = {**plan.defaults, **params}
        values = [given[name] if name not in plan.binds else plan.binds[name](given[name]) for name in plan.order]
        cursor = None
        try:
            cursor = connection.cursor()
            # connection.info lives as long as the DBAPI connection, which one thread holds at a time.
            if plan.prepare is not None and self.name not in connection.info:
                cursor.execute(plan.prepare, ())
                connection.info[self.name] = True
            cursor.execute(plan.sql, values)
            row = cursor.fetchone()
            cursor.close()
        except dialect.loaded_dbapi.Error as error:
            disconnect = dialect.is_disconnect(error, connection.dbapi_connection, cursor)
            if disconnect:
                connection.invalidate(error)
                engine.dispose()  # the server went away: the pool's other connections are stale too
            raise _wrapped(engine, error, plan.sql, values, disconnect) from error
        if row is None:
            return None
        if plan.results:
            row = list(row)
            for index, process in plan.results:
                row[index] = process(row[index])
        return self.row._make(row)


def raw_connection(engine: Engine) -> PoolProxiedConnection:
    """A DBAPI connection from ``engine``'s pool; a failure to connect leaves as SQLAlchemy's error
    (``Engine.raw_connection`` lets the driver's own escape), which the app answers with a 503."""
    try:
        return engine.raw_connection()
    except engine.dialect.loaded_dbapi.Error as error:
        raise _wrapped(engine, error, None, None, True) from error


def _wrapped(engine: Engine, error: Exception, statement: str | None, params: Any, disconnect: bool) -> DBAPIError:
    # ``DBAPIError.instance`` is typed as returning the broader StatementError; with a DBAPI error and
    # ``dbapi_base_err`` given it always builds a DBAPIError (or a subclass such as OperationalError).
    return cast(DBAPIError, DBAPIError.instance(statement, params, error, engine.dialect.loaded_dbapi.Error,
                                                connection_invalidated=disconnect, dialect=engine.dialect))


@dataclass(frozen=True)
class _Plan:
    prepare: str | None  # run once per connection (PostgreSQL)
    sql: str
    order: list[str]  # bind names, in the order of the driver's positional parameters
    defaults: dict[str, Any]  # the statement's own bound values (e.g. its LIMIT)
    binds: dict[str, Callable[[Any], Any]]
    results: list[tuple[int, Callable[[Any], Any]]]


class _Snapshot(NamedTuple):
    snapshot: str


# GET's own snapshot on PostgreSQL: equal text, equal committed data (see ReadCache).
_SNAPSHOT = Prepared("quaymirror_snapshot", select(sql_cast(func.txid_current_snapshot(), Text).label("snapshot")),
                     _Snapshot)


class Kept(Generic[R]):
    """A row as a hot read answers it: the row, the database's version it was read at (None: not kept), and
    at most one value derived from it.

    The derived value is computed once per kept row and answered with it for as long as the cache answers
    the row. So ``derive(make)`` is only for a ``make`` whose result depends on nothing but the row's values
    and what stays fixed while the process runs (its configuration): never on the request, the caller or the
    clock, which must be checked on every request from the row itself. Two threads may compute it at the
    same time; both get equal values, and either is kept.
    """

    __slots__ = ("_derived", "row", "version")

    def __init__(self, row: R, version: Hashable | None = None) -> None:
        self.row = row
        self.version = version
        self._derived: Any = _UNSET

    def derive(self, make: Callable[[R], T]) -> T:
        if self._derived is _UNSET:
            self._derived = make(self.row)
        return cast(T, self._derived)


_UNSET = object()


class ReadCache:
    """Rows of hot reads, each kept with the database's version at its read and answered again only while
    that version stands: a hit is exactly as fresh as a read, whoever wrote (another replica, a worker,
    psql), with no lag and nothing to invalidate.

    The version costs far less than the read it saves (on two cores GET /mirror's seven-table read
    cost more than the rest of the request):

    * PostgreSQL: ``txid_current_snapshot()``, one round trip without any table. Two equal snapshots
      (xmin, xmax and the transactions then in progress) mean that no transaction committed or began
      writing in between, so every table reads the same. Any write to the cluster changes it: under a
      steady stream of writes (syncing mirrors renew their leases) GETs read the table as before.
    * SQLite: ``PRAGMA data_version`` on a read-only connection of the cache's own, which changes
      whenever another connection (of any process) committed; no round trip at all.

    The version is taken before the read, so a write committed during the read can only cost a miss.
    What depends on the clock (token expiry) is not part of a row: callers check it on every request.
    """

    def __init__(self, url: str, *, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        # Each entry holds a row of the statement named first in its key (so of that statement's row type).
        self._rows: dict[tuple, Kept[Any]] = {}
        self._sqlite_path = _sqlite_file(url)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        _CACHES.add(self)

    def read(self, statement: Prepared[R], engine: Engine, connection: Callable[[], PoolProxiedConnection],
             params: dict[str, Any]) -> Kept[R] | None:
        """``statement``'s first row for ``params``: the kept one while the database's version is the one it
        was read at, else read on ``connection()`` (and kept). Counted as a hit or a miss."""
        key = (statement.name, *params.items())
        version = self.version(engine, connection)
        kept = self._rows.get(key)
        if kept is not None and version is not None and kept.version == version:
            READ_CACHE_HIT.inc()
            return cast("Kept[R]", kept)
        READ_CACHE_MISS.inc()
        row = statement.first(engine, connection(), params)
        if row is None:
            return None
        fresh = Kept(row, version)
        if version is not None:
            rows = self._rows
            if len(rows) >= self.max_entries:
                rows = self._rows = {}
            rows[key] = fresh
        return fresh

    def version(self, engine: Engine, connection: Callable[[], PoolProxiedConnection]) -> Hashable | None:
        """The database's version now (PostgreSQL: asked on ``connection()``); None when it cannot be
        known (then nothing is cached)."""
        if self._sqlite_path is None:
            snapshot = _SNAPSHOT.first(engine, connection(), {})
            return snapshot.snapshot if snapshot is not None else None
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = sqlite3.connect(f"file:{quote(self._sqlite_path)}?mode=ro", uri=True,
                                                       check_same_thread=False)
                return self._connection.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                return None

    def close(self) -> None:
        with self._lock:
            self._rows = {}
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _forked(self) -> None:
        """In a forked child: the parent's SQLite connection must not be shared."""
        self._lock = threading.Lock()
        self._connection = None


def _sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL; None for other databases (and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return parsed.database


_CACHES: weakref.WeakSet[ReadCache] = weakref.WeakSet()


def _after_fork() -> None:
    # The child runs only the forking thread: nothing else touches the set meanwhile.
    for cache in list(_CACHES):
        cache._forked()


os.register_at_fork(after_in_child=_after_fork)
