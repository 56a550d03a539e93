"""Request plumbing shared by every domain's resources: the session and the read connection (both closed at
teardown), the caller and their access to a repository, the body and the query string, the screen every
request passes, and the integers of paths."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, overload
from urllib.parse import unquote

from authlib.integrations.flask_oauth2 import ResourceProtector
from flask import Flask, Response, current_app, g, request
from marshmallow import Schema, ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from sqlalchemy.pool import PoolProxiedConnection
from werkzeug.routing import IntegerConverter, Map, RequestRedirect

from quaymirror import errors
from quaymirror.auth.permissions import RepoAccess, repo_access
from quaymirror.auth.tokens import Caller, current_caller
from quaymirror.db import Database
from quaymirror.errors import InvalidRequest
from quaymirror.readcache import Kept, Prepared, R, raw_connection
from quaymirror.schemas import INT64_MAX, Query
from quaymirror.security.secrets import SecretBox
from quaymirror.settings import Settings

log = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "DELETE, GET, HEAD, OPTIONS, POST, PUT",
    "Access-Control-Max-Age": "21600",
    "Access-Control-Allow-Headers": "AUTHORIZATION, CONTENT-TYPE, X-REQUESTED-WITH",
}


def settings() -> Settings:
    return current_app.extensions["quaymirror.settings"]


def database() -> Database:
    return current_app.extensions["quaymirror.db"]


def secret_box() -> SecretBox:
    """The instance's key, which encrypts the credentials and robot tokens at rest."""
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


# ------------------------------------------------------------------ the caller's access to a repository
def authorize_repo(namespace: str, repository: str, role: str, *, public_read: bool = True) -> RepoAccess:
    """The one way a repository's resource starts: the caller's ``role`` on ``namespace/repository`` in one
    query (401/403 here), as Quay checks it before anything else. Then the resource reads its body, and
    ``.require()`` answers 404 for a repository that does not exist.

    ``public_read``: ``read`` on a public repository passes for anyone (Quay's repository GET); the mirror
    endpoints never read publicly.
    """
    access = repo_access(session(), caller(required=False), namespace, repository,
                         superuser_full_access=settings().superusers_full_access)
    access.check(role, public_read=public_read)
    return access


# ------------------------------------------------------------------ bodies and query strings
def refuse_unstorable(text: str) -> None:
    """Refuse text no database can store: NUL characters (PostgreSQL cannot store or even compare them) and
    lone surrogates such as ``"\\ud800"`` (not UTF-8). One check for paths, query strings and bodies."""
    if "\x00" in text:
        raise InvalidRequest("The request contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("The request contains an invalid Unicode character") from None


def _refuse_unstorable_in(data: Any) -> None:
    """``refuse_unstorable`` on every key and string of a parsed JSON body."""
    pending = [data]
    while pending:  # iterative: the body may be nested as deep as the JSON parser allows
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            refuse_unstorable(item)


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


def json_body() -> Any:
    """The parsed JSON body; malformed JSON and wrong content types answer as Quay (400 / 415)."""
    try:
        data = request.get_json()
    except RecursionError:
        raise InvalidRequest("The JSON body is nested too deeply") from None
    if data is None:
        raise InvalidRequest("Missing JSON body")
    _refuse_unstorable_in(data)
    return data


def _validated(schema: Schema, payload: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return schema.load(payload)
    except ValidationError as error:
        raise InvalidRequest(first_error(error.messages)) from None


def load(schema: Schema) -> dict[str, Any]:
    """The JSON body validated with ``schema``; a violation is a 400 naming the field."""
    payload = json_body()
    if not isinstance(payload, dict):
        raise InvalidRequest(f"Request body must be a JSON object, not {type(payload).__name__}")
    return _validated(schema, payload)


def query(schema: Query) -> dict[str, Any]:
    """The request's query string loaded with ``schema``; a bad argument is a 400 naming it, as ``load``."""
    return _validated(schema, request.args)


# ------------------------------------------------------------------ integers of paths
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


# ------------------------------------------------------------------ every request
def _screen_request() -> Response | None:
    """What every request passes before its endpoint: Werkzeug's slash redirect answers JSON, an oversized
    body is refused whatever the endpoint (Werkzeug alone refuses it only when it is read), and the path and
    the query string must be storable."""
    redirect = request.routing_exception
    if isinstance(redirect, RequestRedirect):
        # /api/v1/user -> /api/v1/user/ answers with a JSON body, not HTML.
        return errors.json_response({"message": "Redirecting", "location": redirect.new_url},
                                    redirect.code, headers={"Location": redirect.new_url})
    if request.content_length is not None and request.content_length > settings().max_content_length:
        return errors.RequestTooLarge().response()
    refuse_unstorable(request.path)
    if request.query_string:
        refuse_unstorable(unquote(request.query_string.decode("latin-1")))
    return None


def _cors(response: Response) -> Response:
    if request.path.startswith("/api/"):
        response.headers.extend(CORS_HEADERS)
    return response


def _close_session(_exc: BaseException | None) -> None:
    """Close what ``session()`` and ``read_first`` opened for the request."""
    for key in ("db_session", "db_read"):
        opened = g.pop(key, None)
        if opened is not None:
            try:
                opened.close()
            except sa_exc.SQLAlchemyError:  # the connection died with the database; nothing to release
                log.debug("closing a %s whose connection is gone", key, exc_info=True)


def init_app(app: Flask) -> None:
    """Register the request screen, the CORS headers of the API and the teardown of the request's session."""
    app.url_map.converters["id"] = IdConverter  # before any route: a rule binds its converters when added
    app.before_request(_screen_request)
    app.after_request(_cors)
    app.teardown_appcontext(_close_session)
