"""Engine, sessions and the declarative base shared by every domain package."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, ForeignKey, MetaData, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, Session, mapped_column, sessionmaker

from quaymirror.readcache import ReadCache
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
    """Every table's base: the constraint names alembic expects, and the integer ``id`` each table's rows
    are known by (Quay's tables all have one)."""

    metadata = MetaData(naming_convention=NAMING)

    id: Mapped[int] = mapped_column(primary_key=True)


def owned_by(table: str) -> MappedColumn[Any]:
    """A column naming the ``table`` row this row belongs to: deleted with it (``ON DELETE CASCADE``) and
    indexed, since every such row is looked up by its owner."""
    return mapped_column(ForeignKey(f"{table}.id", ondelete="CASCADE"), index=True)


def rows_changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE; how many rows it changed (the guarded writes decide by it)."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


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
    # connection it held (readcache.Prepared.first disposes the pool on a disconnect); writes keep the ping.
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
