"""Wake-ups for sync-now: PostgreSQL NOTIFY across processes, direct callbacks inside one process.

The API calls :func:`sync_requested` inside the transaction that sets SYNC_NOW;
the notification leaves only when that transaction commits (NOTIFY is
transactional, and local listeners run from the session's after-commit hook),
so a worker never wakes up before the row says SYNC_NOW.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import event, text
from sqlalchemy.orm import Session

from quaymirror.db import PgListener

log = logging.getLogger(__name__)

CHANNEL = "quaymirror_mirror"

Listener = Callable[[int], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def subscribe(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _call_listeners(config_ids: list[int]) -> None:
    with _lock:
        listeners = list(_listeners)
    for config_id in config_ids:
        for listener in listeners:
            try:
                listener(config_id)
            except Exception:  # a broken listener must not fail the API request
                log.exception("sync-now listener failed")


def sync_requested(session: Session, config_id: int) -> None:
    """Announce that ``config_id`` wants a sync, once the current transaction commits."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": str(config_id)})
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


def listen(url: str, callback: Callable[[int | None], None]) -> PgListener:
    """A started listener of :data:`CHANNEL`: ``callback(config_id)`` per sync-now, ``callback(None)`` when
    notifications may have been missed (the connection came back), after which the worker polls."""

    def delivered(payload: str | None) -> None:
        try:
            config_id = int(payload) if payload is not None else None
        except ValueError:
            config_id = None
        callback(config_id)

    return PgListener(url, CHANNEL, delivered).start()
