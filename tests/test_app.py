"""/healthz (process up) and /readyz (database reachable), on both backends and with a dead database."""

from __future__ import annotations

import socket

from quaymirror import db as dbmod


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_when_the_database_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on return: nothing listens there


def _app_on(settings, url: str):
    from quaymirror.app import create_app

    database = dbmod.Database(url)
    app = create_app(settings.with_overrides(database_url=url), database)
    app.config["TESTING"] = False
    return app, database


def test_readyz_is_503_when_postgresql_is_unreachable(settings):
    app, database = _app_on(settings, f"postgresql+psycopg2://postgres@127.0.0.1:{_closed_port()}/nothing")
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["status"] == "unavailable"
        # /healthz does not look at the database.
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        database.dispose()


def test_readyz_is_503_when_sqlite_cannot_open(settings, tmp_path):
    app, database = _app_on(settings, f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    try:
        assert app.test_client().get("/readyz").status_code == 503
    finally:
        database.dispose()


def test_postgresql_engines_have_a_connect_timeout(monkeypatch):
    seen = {}

    def fake_create_engine(url, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(dbmod, "create_engine", fake_create_engine)
    dbmod.make_engine("postgresql+psycopg2://postgres@127.0.0.1:1/x")
    assert seen["connect_args"]["connect_timeout"] == dbmod.CONNECT_TIMEOUT


def test_ping_gives_up_after_its_timeout(database, monkeypatch):
    import threading

    release = threading.Event()

    def hang(*_args, **_kwargs):
        release.wait(10)
        raise OSError("never connected")

    monkeypatch.setattr(database.engine, "connect", hang)
    try:
        assert database.ping(timeout=0.1) is False
    finally:
        release.set()
