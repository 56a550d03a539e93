"""create_app(settings): wires the domains together, nothing else."""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from flask_restful import Api
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from quaymirror import errors, web
from quaymirror.auth.tokens import make_protector
from quaymirror.db import Database
from quaymirror.security.secrets import SecretBox
from quaymirror.settings import Settings

log = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "DELETE, GET, HEAD, OPTIONS, POST, PUT",
    "Access-Control-Max-Age": "21600",
    "Access-Control-Allow-Headers": "AUTHORIZATION, CONTENT-TYPE, X-REQUESTED-WITH",
}


# Errors that mean "the database cannot be reached right now", not "this request is wrong".
DB_UNAVAILABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
)


def _database_error(error: BaseException) -> Response | None:
    """503 when the database is away; 400 for values or conflicts the database refused."""
    if isinstance(error, DB_UNAVAILABLE) or (
        isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated
    ):
        log.warning("database unavailable: %s", str(error).splitlines()[0] if str(error) else type(error).__name__)
        return errors.ServiceUnavailable().response()
    if isinstance(error, sa_exc.IntegrityError | StaleDataError):
        # A concurrent request created the same thing between our check and our insert.
        log.info("integrity error: %s", str(error).splitlines()[0])
        return errors.InvalidRequest("The request conflicts with existing data").response()
    if isinstance(error, sa_exc.DataError):
        log.warning("data error: %s", str(error).splitlines()[0])
        return errors.InvalidRequest("A value in the request is out of range or too long").response()
    return None


def render_error(error: BaseException) -> Response:
    """Every error leaves as JSON: Quay's shapes for Quay's cases, ApiError otherwise, never a trace."""
    if isinstance(error, errors.ApiError | errors.PlainError):
        return error.response()
    if isinstance(error, HTTPException):
        code = error.code or 500
        if code == 404:
            return errors.NotFound().response()
        if code == 405:
            response = errors.MethodNotAllowed().response()
            valid = getattr(error, "valid_methods", None)
            if valid:
                response.headers["Allow"] = ", ".join(sorted(valid))
            return response
        if code == 413:
            return errors.RequestTooLarge().response()
        # 400 (malformed JSON) and 415 (wrong content type) keep Quay's {"message": ...} body.
        return errors.json_response({"message": error.description}, code)
    response = _database_error(error)
    if response is not None:
        return response
    log.exception("unhandled error on %s %s", request.method, request.path)
    return errors.ApiError().response()


class QuayApi(Api):
    """flask-restful with our error rendering instead of its own."""

    def handle_error(self, e):
        return render_error(e)

    def add_resource(self, resource, *urls, **kwargs):
        # Our resources keep no state: one instance serves every request (Flask's View option), instead
        # of a new one per request.
        resource.init_every_request = False
        return super().add_resource(resource, *urls, **kwargs)


def create_app(settings: Settings | None = None, database: Database | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.config["PROPAGATE_EXCEPTIONS"] = False
    db = database or Database(settings.database_url)
    app.extensions["quaymirror.settings"] = settings
    app.extensions["quaymirror.db"] = db
    app.extensions["quaymirror.secrets"] = SecretBox(settings.secret_key)
    app.extensions["quaymirror.protector"] = make_protector(web.session)
    web.init_app(app)

    # Before any route: a rule binds its converters when it is added.
    app.url_map.converters["id"] = web.IdConverter
    api = QuayApi(app, prefix="/api/v1")
    from quaymirror.accounts.api import register as register_accounts
    from quaymirror.mirror.api import register as register_mirror
    from quaymirror.mirror.health import register as register_mirror_health
    from quaymirror.mirror.history_api import register as register_history
    from quaymirror.openapi import register as register_openapi
    from quaymirror.repositories.api import register as register_repositories

    register_accounts(api)
    register_repositories(api)
    register_mirror(api)
    register_mirror_health(api)
    register_history(api)
    register_openapi(api)  # GET /api/v1/discovery: the OpenAPI document of every route above

    app.register_error_handler(Exception, render_error)

    @app.before_request
    def _screen_request():
        redirect = request.routing_exception
        if isinstance(redirect, RequestRedirect):
            # Werkzeug's slash redirect (/api/v1/user -> /api/v1/user/) answers with a JSON body, not HTML.
            return errors.json_response({"message": "Redirecting", "location": redirect.new_url},
                                        redirect.code, headers={"Location": redirect.new_url})
        # Refused whatever the endpoint (werkzeug alone only refuses a big body when it is read).
        if request.content_length is not None and request.content_length > settings.max_content_length:
            return errors.RequestTooLarge().response()
        # PostgreSQL cannot store or even compare strings holding NUL: refuse them up front.
        # (The raw query string, not request.args: parsing it cost every request more than this check.)
        query = request.query_string
        if "\x00" in request.path or b"%00" in query or b"\x00" in query:
            return errors.InvalidRequest("The request contains a NUL character").response()
        return None

    @app.after_request
    def _cors(response):
        if request.path.startswith("/api/"):
            response.headers.extend(CORS_HEADERS)  # no response sets them before; update() scans per key
        return response

    @app.get("/healthz")
    def healthz():
        return errors.json_response({"status": "ok"}, 200)

    @app.get("/readyz")
    def readyz():
        """Ready when the database answers ``SELECT 1`` within a couple of seconds."""
        if db.ping():
            return errors.json_response({"status": "ready"}, 200)
        return errors.json_response({"status": "unavailable", "reason": "database unreachable"}, 503)

    @app.get("/metrics")
    def prometheus_metrics():
        """Prometheus text exposition (the embedded worker's mirror metrics; see quaymirror.metrics)."""
        from quaymirror import metrics

        body, content_type = metrics.exposition()
        return Response(body, 200, content_type=content_type)

    return app
