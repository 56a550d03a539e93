"""Process entry points: the production API server (gunicorn) and the worker."""

from __future__ import annotations

import functools
import logging
import logging.config
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from quaymirror.settings import Settings

log = logging.getLogger(__name__)

BOOTSTRAP_USER = "admin"


def bootstrap_admin(settings: Settings) -> str | None:
    """On an empty embedded instance, create an ``admin`` superuser and return a full-scope token.

    The token is also written to ``<instance>/admin-token`` (mode 0600) so it can be read again.
    """
    from sqlalchemy import func, select

    from quaymirror.accounts import service as accounts
    from quaymirror.accounts.models import User
    from quaymirror.auth import scopes
    from quaymirror.auth.tokens import issue
    from quaymirror.db import Database

    database = Database(settings.database_url)
    try:
        with database.transaction() as session:
            if session.scalar(select(func.count(User.id))):
                return None
            admin = accounts.create_user(session, BOOTSTRAP_USER, superuser=True)
            token = issue(session, admin, frozenset(scopes.ALL_SCOPES))
    finally:
        database.dispose()
    path = settings.instance_path / "admin-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


class _Gunicorn(BaseApplication):
    """gunicorn with options from a dict and the WSGI app from ``load`` (called in each worker)."""

    def __init__(self, load: Callable[[], Any], options: dict) -> None:
        self._load = load
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self):
        return self._load()


def run_gunicorn(load: Callable[[], Any], options: dict) -> None:
    _Gunicorn(load, options).run()


def _load_app(settings: Settings, with_worker: bool):
    from quaymirror.app import create_app

    app = create_app(settings)
    if with_worker:
        from quaymirror.mirror.worker.runner import start_in_process

        start_in_process(app, settings)
    return app


def logging_config(level: str) -> dict:
    """The one logging set-up of ``serve`` and ``worker``, also given to gunicorn (``logconfig_dict``).

    Everything goes to stderr in one format, gunicorn's own messages included (its access log stays
    on stdout). alembic says at INFO which plugins and database dialect it uses and each migration it
    runs on every start: shown only at DEBUG.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"quaymirror": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "quaymirror",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "alembic": {"level": "DEBUG" if level == "DEBUG" else "WARNING"},
        },
    }


def configure_logging(level: str) -> None:
    logging.config.dictConfig(logging_config(level))


def address(host: str, port: int) -> str:
    """``host:port`` as written in a URL (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host: str, port: int) -> socket.socket:
    """A socket bound and listening on ``host:port`` (port 0: any free port), for :func:`serve`.

    Bound here rather than by gunicorn, which retries a busy port for five seconds and would only
    then give up: a busy port fails at once, before anything else starts.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def gunicorn_options(host: str, port: int, workers: int, threads: int, log_level: str = "INFO") -> dict:
    """The production server's gunicorn configuration (also the baseline's in benchmarks/api)."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 60,
        "graceful_timeout": 4,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": log_level.lower(),
        "logconfig_dict": logging_config(log_level),
        # gunicorn's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl, creating
        # $HOME), shared by every gunicorn of that user: stopping one server deletes another's.
        "control_socket_disable": True,
        "preload_app": False,
    }


def serve(settings: Settings, listener: socket.socket, with_worker: bool = True) -> None:
    """Run gunicorn on ``listener`` (from :func:`listen`), after bringing an embedded instance up to date."""
    from quaymirror import db

    if db.ensure_embedded_schema(settings):
        token = bootstrap_admin(settings)
        token_file = settings.instance_path / "admin-token"
        if token:
            print(f"Created user '{BOOTSTRAP_USER}'. Admin token (also in {token_file}):")
            print(token, flush=True)
        elif token_file.exists():
            log.info("the admin token of the first start is kept in %s", token_file)
    host, port = listener.getsockname()[:2]
    url = f"http://{address(host, port)}"
    options = gunicorn_options(host, port, 1 if with_worker else settings.api_workers, settings.api_threads,
                               settings.log_level)
    options["bind"] = f"fd://{listener.detach()}"  # gunicorn takes the socket over (and closes it)

    def when_ready(_arbiter) -> None:
        print(f"quaymirror listening on {url}", file=sys.stderr, flush=True)

    options["when_ready"] = when_ready
    if with_worker:
        options["worker_exit"] = _worker_exit
    run_gunicorn(functools.partial(_load_app, settings, with_worker), options)


def _worker_exit(_server, _worker) -> None:
    """gunicorn hook, in the exiting worker process: stop the embedded mirror worker and give its claims back.

    (gunicorn workers do not run atexit handlers, so without this a SIGTERM would
    leave skopeo running and the claim held until its lease expires.)
    """
    from quaymirror.mirror.worker.runner import shutdown_in_process

    shutdown_in_process()


def run_worker(settings: Settings) -> None:
    from quaymirror.mirror.worker.runner import run_forever

    run_forever(settings)
