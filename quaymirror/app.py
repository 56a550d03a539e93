"""create_app(settings): wires the domains together, nothing else."""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from flask_restful import Api, Resource
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException

from quaymirror import errors, metrics, openapi, web
from quaymirror.accounts import api as accounts_api
from quaymirror.auth.tokens import make_protector
from quaymirror.db import Database
from quaymirror.mirror import api as mirror_api
from quaymirror.mirror import capabilities_api, health_api, history_api
from quaymirror.orgmirror import api as orgmirror_api
from quaymirror.repositories import api as repositories_api
from quaymirror.security.secrets import SecretBox
from quaymirror.settings import Settings

log = logging.getLogger(__name__)

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
    database_error = _database_error(error)
    if database_error is not None:
        return database_error
    log.exception("unhandled error on %s %s", request.method, request.path)
    return errors.ApiError().response()


class QuayApi(Api):
    """flask-restful with our error rendering instead of its own."""

    def handle_error(self, e: BaseException) -> Response:
        return render_error(e)

    def add_resource(self, resource: type[Resource], *urls: str, **kwargs: object) -> None:
        # Our resources keep no state: one instance serves every request (Flask's View option), instead
        # of a new one per request.
        resource.init_every_request = False
        super().add_resource(resource, *urls, **kwargs)


def healthz() -> Response:
    return errors.json_response({"status": "ok"}, 200)


def readyz() -> Response:
    """Ready when the database answers ``SELECT 1`` within a couple of seconds."""
    if web.database().ping():
        return errors.json_response({"status": "ready"}, 200)
    return errors.json_response({"status": "unavailable", "reason": "database unreachable"}, 503)


def prometheus_metrics() -> Response:
    """Prometheus text exposition (the embedded worker's mirror metrics; see quaymirror.metrics)."""
    body, content_type = metrics.exposition()
    return Response(body, 200, content_type=content_type)


def create_app(settings: Settings | None = None, database: Database | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.extensions["quaymirror.settings"] = settings
    app.extensions["quaymirror.db"] = database or Database(settings.database_url)
    app.extensions["quaymirror.secrets"] = SecretBox(settings.secret_key)
    app.extensions["quaymirror.protector"] = make_protector(web.session)
    web.init_app(app)  # before any route: it adds the path converters

    api = QuayApi(app, prefix="/api/v1")
    for domain in (accounts_api, repositories_api, mirror_api, health_api, history_api, capabilities_api):
        domain.register(api)
    orgmirror_api.register(api, enabled=settings.feature_org_mirror)
    openapi.register(api)  # GET /api/v1/discovery: the OpenAPI document of every route above
    app.register_error_handler(Exception, render_error)

    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    app.add_url_rule("/readyz", view_func=readyz, methods=["GET"])
    app.add_url_rule("/metrics", view_func=prometheus_metrics, methods=["GET"])
    return app
