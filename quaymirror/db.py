"""Engine, sessions and the declarative base shared by every domain package."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import MetaData, Select, Text, cast, create_engine, event, func, select, text
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection

from quaymirror.settings import Settings

# Stable constraint names so alembic migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def utcnow() -> datetime:
    """Naive UTC, as Quay stores every datetime."""
    return datetime.now(UTC).replace(tzinfo=None)


def make_engine(url: str, autocommit: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    connect_args = {}
    if url.startswith("postgresql"):
        # An unreachable server fails in seconds instead of the OS's TCP timeout (minutes).
        connect_args["connect_timeout"] = CONNECT_TIMEOUT
    # The read pool pings no connection before use: on a busy machine each round trip costs as much as
    # a query. A connection the server dropped fails one GET with a 503 and makes the pool replace every
    # connection it held (Prepared.first disposes the pool on a disconnect); writes keep the ping.
    # Nor does it roll back a returned connection: in autocommit there is no transaction to end.
    options = ({"isolation_level": "AUTOCOMMIT", "pool_pre_ping": False, "pool_reset_on_return": None}
               if autocommit else {"pool_pre_ping": True})
    return create_engine(url, pool_size=10, max_overflow=20, pool_timeout=10, connect_args=connect_args, **options)


CONNECT_TIMEOUT = 5
PING_TIMEOUT = 2.0


class Database:
    """One engine and its session factory; every process builds exactly one."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # Reads on PostgreSQL: a pool of autocommit connections, so a GET sends no BEGIN and no ROLLBACK
        # (two of its five round trips). Switching a pooled connection per request would cost two SETs.
        self.read_engine = make_engine(url, autocommit=True) if url.startswith("postgresql") else self.engine
        self.read_sessionmaker = sessionmaker(self.read_engine, expire_on_commit=False)
        self.read_cache = ReadCache(url) if url.startswith(("postgresql", "sqlite")) else None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed as one unit, or rolled back entirely."""
        with self.sessionmaker() as session, session.begin():
            yield session

    def ping(self, timeout: float = PING_TIMEOUT) -> bool:
        """True when ``SELECT 1`` succeeds within ``timeout`` seconds (readiness probe).

        Runs in a helper thread so a hung connect or a full pool cannot hold the caller
        longer than ``timeout``; the thread finishes on its own (connect timeout).
        """
        outcome: list[bool] = []

        def probe() -> None:
            try:
                with self.engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                outcome.append(True)
            except Exception:  # noqa: BLE001 - any failure means "not ready"
                outcome.append(False)

        thread = threading.Thread(target=probe, name="quaymirror-db-ping", daemon=True)
        thread.start()
        thread.join(timeout)
        return bool(outcome and outcome[0])

    def dispose(self) -> None:
        if self.read_cache is not None:
            self.read_cache.close()
        self.engine.dispose()
        self.read_engine.dispose()


class Plain:
    """Attribute access over values read from a row, for read-only paths where building ORM instances
    would cost more than the read itself (GET /mirror)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


class Prepared:
    """A hot read run on the pooled DBAPI connection itself, planned once per connection.

    GET /mirror is one statement, and SQLAlchemy's execution around it (cache lookup, execution
    context, Result, Row) cost more Python time than the database spent answering; on PostgreSQL,
    planning the seven-table join cost 0.83 ms of 1.1 ms, and psycopg2 never prepares server-side.
    So the statement is compiled once per dialect, each PostgreSQL connection runs ``PREPARE`` once
    and then ``EXECUTE`` (SQLite's driver caches its statements itself), and the row's values pass
    through the columns' own result processors, so they read exactly as from ``session.execute``.
    DBAPI errors leave as SQLAlchemy's, a disconnect invalidating the pool, as SQLAlchemy does.
    Connection poolers in transaction mode (PgBouncer) drop prepared statements: use session mode.
    """

    _BIND = re.compile(r"%\((\w+)\)s")

    def __init__(self, name: str, statement: Select) -> None:
        self.name = name
        self.statement = statement
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
            columns = list(self.statement.selected_columns.items())
            plan = _Plan(
                prepare=prepare, sql=sql, order=order, defaults=dict(compiled.params),
                binds={name: process for name, process in binds.items() if process is not None},
                row=namedtuple("Row", [key for key, _ in columns]),
                results=[(i, process) for i, (_, col) in enumerate(columns)
                         if (process := col.type.dialect_impl(dialect).result_processor(dialect, None)) is not None],
            )
            self._plans[dialect.name] = plan
        return plan

    def first(self, engine: Engine, connection: PoolProxiedConnection, params: dict[str, Any]) -> tuple | None:
        """The first row as a named tuple of the statement's column labels, or None."""
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
        return plan.row._make(row)


def raw_connection(engine: Engine) -> PoolProxiedConnection:
    """A DBAPI connection from ``engine``'s pool; a failure to connect leaves as SQLAlchemy's error
    (``Engine.raw_connection`` lets the driver's own escape), which the app answers with a 503."""
    try:
        return engine.raw_connection()
    except engine.dialect.loaded_dbapi.Error as error:
        raise _wrapped(engine, error, None, None, True) from error


def _wrapped(engine: Engine, error: Exception, statement: str | None, params: Any, disconnect: bool) -> DBAPIError:
    return DBAPIError.instance(statement, params, error, engine.dialect.loaded_dbapi.Error,
                               connection_invalidated=disconnect, dialect=engine.dialect)


@dataclass(frozen=True)
class _Plan:
    prepare: str | None  # run once per connection (PostgreSQL)
    sql: str
    order: list[str]  # bind names, in the order of the driver's positional parameters
    defaults: dict[str, Any]  # the statement's own bound values (e.g. its LIMIT)
    binds: dict[str, Callable[[Any], Any]]
    row: type[tuple]
    results: list[tuple[int, Callable[[Any], Any]]]


# GET's own snapshot on PostgreSQL: equal text, equal committed data (see ReadCache).
_SNAPSHOT = Prepared("quaymirror_snapshot", select(cast(func.txid_current_snapshot(), Text).label("snapshot")))


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
        self._rows: dict[tuple, tuple[Any, tuple]] = {}
        self._sqlite_path = _sqlite_file(url)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        _CACHES.add(self)

    def version(self, engine: Engine, connection: Callable[[], PoolProxiedConnection]) -> Any:
        """The database's version now (PostgreSQL: asked on ``connection()``); None when it cannot be
        known (then nothing is cached)."""
        if self._sqlite_path is None:
            return _SNAPSHOT.first(engine, connection(), {})[0]
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = sqlite3.connect(f"file:{quote(self._sqlite_path)}?mode=ro", uri=True,
                                                       check_same_thread=False)
                return self._connection.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                return None

    def get(self, key: tuple, version: Any) -> tuple | None:
        kept = self._rows.get(key)
        return kept[1] if kept is not None and version is not None and kept[0] == version else None

    def put(self, key: tuple, version: Any, row: tuple) -> None:
        if version is None:
            return
        rows = self._rows
        if len(rows) >= self.max_entries:
            rows = self._rows = {}
        rows[key] = (version, row)

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
    from sqlalchemy.engine import make_url

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


def alembic_config(url: str):
    """Alembic's configuration for ``url``, finding the migrations whether installed or in a checkout."""
    from importlib.resources import files

    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("quaymirror._migrations")))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def ensure_embedded_schema(settings: Settings) -> bool:
    """On the embedded default (SQLite), create the instance folder and bring the schema up to date.

    Every command that opens the database calls this first, so the embedded default needs no separate
    ``db upgrade`` step; a server database (PostgreSQL) is migrated only by ``quaymirror db upgrade``,
    once per release, not by whichever process starts first. True when it migrated.
    """
    if not settings.is_sqlite:
        return False
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    return True
