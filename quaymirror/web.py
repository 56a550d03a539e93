"""Request plumbing shared by every domain's resources: the session and the read connection (both closed at
teardown, see ``init_app``), the caller, the body, the query string and the integers of paths."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, overload

from authlib.integrations.flask_oauth2 import ResourceProtector
from flask import Flask, current_app, g, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing, validate
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import PoolProxiedConnection
from werkzeug.routing import IntegerConverter, Map

from quaymirror.auth.tokens import Caller, current_caller
from quaymirror.db import Database
from quaymirror.errors import InvalidRequest
from quaymirror.readcache import Kept, Prepared, R, raw_connection
from quaymirror.security.secrets import SecretBox
from quaymirror.settings import Settings

log = logging.getLogger(__name__)


def settings() -> Settings:
    return current_app.extensions["quaymirror.settings"]


def database() -> Database:
    return current_app.extensions["quaymirror.db"]


def secret_box() -> SecretBox:
    return current_app.extensions["quaymirror.secrets"]


def protector() -> ResourceProtector:
    return current_app.extensions["quaymirror.protector"]


def session() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        db = database()
        g.db_session = db.read_sessionmaker() if request.method in ("GET", "HEAD") else db.sessionmaker()
    return g.db_session


def _read_connection() -> PoolProxiedConnection:
    """The request's DBAPI connection of the read pool, opened on first use and closed at teardown."""
    if "db_read" not in g:
        g.db_read = raw_connection(database().read_engine)
    return g.db_read


def read_first(statement: Prepared[R], params: dict[str, Any]) -> Kept[R] | None:
    """The first row of a hot read, on the request's read connection; from the process's read cache
    (``readcache.ReadCache``) while the database's version is the one it was read at, when the cache is on.

    SQLAlchemy's session, and even its Connection, cost a GET more than its read.
    """
    db = database()
    cache = db.read_cache if settings().read_cache else None
    if cache is not None:
        return cache.read(statement, db.read_engine, _read_connection, params)
    row = statement.first(db.read_engine, _read_connection(), params)
    return Kept(row) if row is not None else None


def _close(_exc: BaseException | None) -> None:
    """Give back what :func:`session` and :func:`_read_connection` opened for the request."""
    for key in ("db_session", "db_read"):
        opened = g.pop(key, None)
        if opened is not None:
            try:
                opened.close()
            except SQLAlchemyError:  # the connection died with the database; nothing to release
                log.debug("closing a %s whose connection is gone", key, exc_info=True)


def init_app(app: Flask) -> None:
    """What the request plumbing needs of the app: closing, at teardown, what it opened."""
    app.teardown_appcontext(_close)


@overload
def caller(required: Literal[True] = ...) -> Caller: ...


@overload
def caller(required: bool) -> Caller | None: ...


def caller(required: bool = True) -> Caller | None:
    """The request's caller, its token looked up in the request's session (401 when required and anonymous).
    A hot read that joined the token reads its caller with ``tokens.caller_from_values`` instead."""
    return current_caller(protector(), required=required)


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


def _validated(schema: Schema, payload: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return schema.load(payload)
    except ValidationError as error:
        raise InvalidRequest(first_error(error.messages)) from None


def load(schema: Schema, data: Any = None) -> dict[str, Any]:
    """Validate ``data`` (default: the JSON body) with ``schema``; a violation is a 400 naming the field."""
    payload = json_body() if data is None else data
    if not isinstance(payload, dict):
        raise InvalidRequest(f"Request body must be a JSON object, not {type(payload).__name__}")
    return _validated(schema, payload)


# ------------------------------------------------------------------ integers of paths and query strings
# The signed 64-bit range: SQLite's INTEGER and PostgreSQL's bigint. Neither database stores a value outside
# it, PostgreSQL refuses one as an OFFSET and SQLite's driver cannot even bind one (OverflowError, a 500), so
# every integer a request carries is checked against it before any query sees it.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class IdConverter(IntegerConverter):
    """``<id:name>``: a row id in a path, 0 to 2^63-1 in ASCII digits.

    A value outside the range does not match the route, so the caller gets the app's JSON 404 like for any
    unknown run, and the database is never asked about an id no column can hold.
    """

    regex = r"[0-9]+"
    minimum = 0
    maximum = INT64_MAX

    def __init__(self, url_map: Map) -> None:
        super().__init__(url_map, min=self.minimum, max=self.maximum)


class Query(Schema):
    """Base of the schemas of query strings: arguments nobody asked for are ignored, as Quay does."""

    class Meta:
        unknown = EXCLUDE


class Int64(fields.Integer):
    """An integer query argument, never outside ``minimum``..``maximum`` (at most the signed 64-bit range).

    With ``empty_is_missing``, ``?page=`` means the default (as the history endpoints always read it).
    """

    default_error_messages: ClassVar[dict[str, str]] = {
        "invalid": "must be an integer",
        "range": "must be between {min} and {max}",
    }

    def __init__(self, *, minimum: int = INT64_MIN, maximum: int = INT64_MAX, empty_is_missing: bool = False,
                 **kwargs: Any) -> None:
        if not INT64_MIN <= minimum <= maximum <= INT64_MAX:
            raise ValueError(f"bounds {minimum}..{maximum} leave the signed 64-bit range")
        super().__init__(**kwargs)
        self.empty_is_missing = empty_is_missing
        self.validators.append(validate.Range(min=minimum, max=maximum, error=self.error_messages["range"]))

    def deserialize(self, value: Any, attr: str | None = None, data: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> Any:
        if self.empty_is_missing and value == "":
            value = missing
        return super().deserialize(value, attr, data, **kwargs)


class QueryBool(fields.Boolean):
    """A query flag, compared stripped and case-insensitively with the endpoint's own words.

    With ``falsy=None`` every word but the truthy ones means false (Quay's lenient flags); otherwise a word
    in neither set is a 400.
    """

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "must be a boolean"}

    def __init__(self, *, truthy: Collection[str], falsy: Collection[str] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.truthy = frozenset(truthy)
        self.falsy = None if falsy is None else frozenset(falsy)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        word = str(value).strip().lower()
        if word in self.truthy:
            return True
        if self.falsy is None or word in self.falsy:
            return False
        raise self.make_error("invalid", input=value)


def query(schema: Query) -> dict[str, Any]:
    """The request's query string loaded with ``schema``; a bad argument is a 400 naming it, as ``load``."""
    return _validated(schema, request.args)
