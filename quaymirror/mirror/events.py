"""Wake-ups for sync-now: PostgreSQL NOTIFY across processes, direct callbacks inside one process.

The API calls :func:`sync_requested` inside the transaction that sets SYNC_NOW;
the notification leaves only when that transaction commits (NOTIFY is
transactional, and local listeners run from the session's after-commit hook),
so a worker never wakes up before the row says SYNC_NOW.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from quaymirror.mirror.worker.policy import Backoff

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

log = logging.getLogger(__name__)

CHANNEL = "quaymirror_mirror"

# Called with the configuration that wants a sync, or None: look for due work (an organization's discovery).
Listener = Callable[[int | None], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def subscribe(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _call_listeners(config_ids: list[int | None]) -> None:
    with _lock:
        listeners = list(_listeners)
    for config_id in config_ids:
        for listener in listeners:
            try:
                listener(config_id)
            except Exception:  # a broken listener must not fail the API request
                log.exception("sync-now listener failed")


def sync_requested(session: Session, config_id: int | None) -> None:
    """Announce that ``config_id`` wants a sync (None: that work is due, e.g. a discovery), once the current
    transaction commits."""
    if session.get_bind().dialect.name == "postgresql":
        payload = "" if config_id is None else str(config_id)
        session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})
    pending = session.info.setdefault("quaymirror.sync_requested", [])
    pending.append(config_id)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    pending = session.info.pop("quaymirror.sync_requested", None)
    if pending:
        _call_listeners(pending)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop("quaymirror.sync_requested", None)


class PgListener:
    """A dedicated PostgreSQL connection that LISTENs on :data:`CHANNEL` and calls ``callback(config_id)``.

    Runs in its own daemon thread; reconnects after a growing pause (``policy.Backoff``)
    when the connection drops, and then calls ``callback(None)`` once because
    notifications sent meanwhile are lost (the worker then polls).
    """

    def __init__(self, url: str, callback: Callable[[int | None], None], *, timeout: float = 1.0) -> None:
        self.url = url
        self.callback = callback
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(self) -> PgListener:
        self._thread = threading.Thread(target=self._run, name="quaymirror-listen", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _connect(self) -> PgConnection:
        # Loaded here, not at start-up: only a worker on PostgreSQL listens, and a SQLite deployment
        # never loads the driver at all.
        import psycopg2
        from psycopg2.extensions import ISOLATION_LEVEL_AUTOCOMMIT

        url = make_url(self.url)
        _args, kwargs = url.set(drivername="postgresql+psycopg2").get_dialect()().create_connect_args(url)
        kwargs.setdefault("connect_timeout", 5)
        conn = psycopg2.connect(**kwargs)
        conn.set_isolation_level(ISOLATION_LEVEL_AUTOCOMMIT)
        with conn.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        return conn

    def _run(self) -> None:
        backoff = Backoff()
        reconnecting = False
        while not self._stop.is_set():
            conn: PgConnection | None = None
            try:
                conn = self._connect()
                self.listening.set()
                backoff.reset()
                if reconnecting:
                    self.callback(None)
                while not self._stop.is_set():
                    ready, _, _ = select.select([conn], [], [], self.timeout)
                    if not ready:
                        continue
                    conn.poll()
                    while conn.notifies:
                        note = conn.notifies.pop(0)
                        try:
                            config_id: int | None = int(note.payload)
                        except ValueError:
                            config_id = None
                        self.callback(config_id)
            except Exception as error:  # noqa: BLE001 - keep listening whatever happened
                self.listening.clear()
                reconnecting = True
                pause = backoff.pause()
                log.warning("LISTEN %s: %s; reconnecting in %.1fs", CHANNEL, type(error).__name__, pause)
                self._stop.wait(pause)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        log.debug("closing the LISTEN connection failed", exc_info=True)
