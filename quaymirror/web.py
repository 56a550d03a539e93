"""Request plumbing shared by every domain's resources: the session, the caller, the body."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app, g, request
from marshmallow import Schema, ValidationError
from sqlalchemy.orm import Session
from sqlalchemy.pool import PoolProxiedConnection

from quaymirror import metrics
from quaymirror.auth.models import AccessToken
from quaymirror.auth.tokens import Caller, current_caller
from quaymirror.db import Database, Prepared, raw_connection
from quaymirror.errors import InvalidRequest
from quaymirror.settings import Settings


def settings() -> Settings:
    return current_app.extensions["quaymirror.settings"]


def database() -> Database:
    return current_app.extensions["quaymirror.db"]


def session() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        db = database()
        g.db_session = db.read_sessionmaker() if request.method in ("GET", "HEAD") else db.sessionmaker()
    return g.db_session


def read_first(statement: Prepared, params: dict[str, Any]) -> tuple | None:
    """The first row of a hot read, on a DBAPI connection of the read pool held until teardown; from the
    process's read cache (``db.ReadCache``) while the database's version is the one it was read at.

    SQLAlchemy's session, and even its Connection, cost a GET more than its read.
    """
    db = database()

    def connection() -> PoolProxiedConnection:
        if "db_read" not in g:
            g.db_read = raw_connection(db.read_engine)
        return g.db_read

    cache = db.read_cache if settings().read_cache else None
    if cache is None:
        return statement.first(db.read_engine, connection(), params)
    key = (statement.name, *params.items())
    version = cache.version(db.read_engine, connection)
    row = cache.get(key, version)
    if row is not None:
        metrics.READ_CACHE_HIT.inc()
        return row
    metrics.READ_CACHE_MISS.inc()
    row = statement.first(db.read_engine, connection(), params)
    if row is not None:
        cache.put(key, version, row)
    return row


def caller(required: bool = True, found: AccessToken | None | bool = False) -> Caller | None:
    return current_caller(current_app.extensions["quaymirror.protector"], required=required, found=found)


def client_ip() -> str | None:
    return request.remote_addr


@contextmanager
def atomic(db_session: Session) -> Iterator[Session]:
    """Commit everything done inside as one unit, or nothing."""
    try:
        yield db_session
        db_session.commit()
    except BaseException:
        db_session.rollback()
        raise


def first_error(messages: Any, path: str = "") -> str:
    """One readable line naming the first invalid field, from marshmallow's nested messages."""
    if isinstance(messages, dict):
        key = min(messages, key=str)
        name = f"{path}.{key}" if path and key != "_schema" else (path or str(key))
        return first_error(messages[key], name)
    if isinstance(messages, list) and messages:
        if all(isinstance(m, str) for m in messages):
            return f"{path}: {messages[0]}" if path and path != "_schema" else messages[0]
        return first_error(messages[0], path)
    return f"{path}: {messages}" if path else str(messages)


def _check_strings(data: Any) -> None:
    """Refuse strings no database can store: NUL characters and lone surrogates (``"\\ud800"``)."""
    pending = [data]
    while pending:  # iterative: the body may be nested as deep as the JSON parser allows
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise InvalidRequest("The request contains a NUL character")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest("The request contains an invalid Unicode character") from None


def json_body() -> Any:
    """The parsed JSON body; malformed JSON and wrong content types answer as Quay (400 / 415)."""
    try:
        data = request.get_json()
    except RecursionError:
        raise InvalidRequest("The JSON body is nested too deeply") from None
    if data is None:
        raise InvalidRequest("Missing JSON body")
    _check_strings(data)
    return data


def load(schema: Schema, data: Any = None) -> dict[str, Any]:
    """Validate ``data`` (default: the JSON body) with ``schema``; a violation is a 400 naming the field."""
    payload = json_body() if data is None else data
    if not isinstance(payload, dict):
        raise InvalidRequest(f"Request body must be a JSON object, not {type(payload).__name__}")
    try:
        return schema.load(payload)
    except ValidationError as error:
        raise InvalidRequest(first_error(error.messages)) from None
