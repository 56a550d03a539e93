"""create_app(settings): wires the domains together, nothing else."""

from __future__ import annotations

import logging

from flask import Flask, g, request
from flask_restful import Api
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

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


def render_error(error: BaseException):
    """Every error leaves as JSON: Quay's shapes for Quay's cases, ApiError otherwise, never a trace."""
    if isinstance(error, errors.ApiError | errors.PlainError):
        return error.response()
    if isinstance(error, HTTPException):
        code = error.code or 500
        if code == 404:
            return errors.NotFound().response()
        if code == 405:
            return errors.MethodNotAllowed().response()
        if code == 413:
            return errors.RequestTooLarge().response()
        # 400 (malformed JSON) and 415 (wrong content type) keep Quay's {"message": ...} body.
        return errors.json_response({"message": error.description}, code)
    if isinstance(error, OperationalError | DBAPIError) and getattr(error, "connection_invalidated", True):
        log.warning("database unavailable: %s", type(error.orig).__name__ if hasattr(error, "orig") else error)
        return errors.ServiceUnavailable().response()
    log.exception("unhandled error on %s %s", request.method, request.path)
    return errors.ApiError().response()


class QuayApi(Api):
    """flask-restful with our error rendering instead of its own."""

    def handle_error(self, e):
        return render_error(e)


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
    app.extensions.setdefault("quaymirror.wakeups", [])

    api = QuayApi(app, prefix="/api/v1")
    from quaymirror.accounts.api import register as register_accounts
    from quaymirror.repositories.api import register as register_repositories

    register_accounts(api)
    register_repositories(api)
    try:
        from quaymirror.mirror.api import register as register_mirror
    except ImportError:  # the mirror domain is optional while it is being built
        register_mirror = None
    if register_mirror is not None:
        register_mirror(api)

    app.register_error_handler(Exception, render_error)

    @app.after_request
    def _cors(response):
        if request.path.startswith("/api/"):
            response.headers.update(CORS_HEADERS)
        return response

    @app.teardown_appcontext
    def _close_session(_exc) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()

    @app.get("/healthz")
    def healthz():
        return errors.json_response({"status": "ok"}, 200)

    return app
