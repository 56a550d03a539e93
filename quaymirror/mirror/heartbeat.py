"""Worker heartbeats: every write of a ``repomirrorworker`` row happens here, and the one rule for "alive".

A worker is active while it is alive, whether it syncs or idles: its row is
inserted at start (:func:`register`), renewed by one UPDATE every
``QUAYMIRROR_HEARTBEAT_SECONDS`` (:func:`renew`), and deleted on a clean stop
(:func:`remove`). A row stops counting :data:`STALE_BEATS` intervals after its
last beat (its ``expires``), so a worker killed outright drops out within that
bound; any worker's beat deletes such rows. A worker whose row was deleted that
way (it paused longer than the bound) inserts it again at its next beat.

Times are the writing process's ``utcnow()``, compared with the reading
process's ``utcnow()``, exactly as leases (``sync_expiration_date``) are: one
clock assumption (hosts kept in time) for every liveness decision, so a worker
cannot look alive by its heartbeat while its leases are judged expired, or the
reverse; and the stored values stay the naive UTC datetimes every other column
holds, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from quaymirror.db import rows_changed, utcnow
from quaymirror.mirror.models import RepoMirrorWorker

# A row is stale (not counted, and deleted by any beat) after this many heartbeat intervals without a beat.
STALE_BEATS = 3


def _expires(now: datetime, interval: float) -> datetime:
    return now + timedelta(seconds=interval * STALE_BEATS)


def register(session: Session, owner: str, started: datetime, interval: float) -> None:
    """Insert this process's row (at start, or again after a peer deleted it as stale)."""
    now = utcnow()
    session.execute(insert(RepoMirrorWorker).values(
        owner=owner, hostname=socket.gethostname()[:255], pid=os.getpid(), started=started, heartbeat=now,
        expires=_expires(now, interval)))


def renew(session: Session, owner: str, interval: float) -> bool:
    """One beat: renew our row with one UPDATE and delete the other workers' stale rows.

    False when our row is gone (never inserted, or deleted as stale): the caller registers again.
    """
    now = utcnow()
    renewed = rows_changed(session, update(RepoMirrorWorker).where(RepoMirrorWorker.owner == owner)
                           .values(heartbeat=now, expires=_expires(now, interval))
                           .execution_options(synchronize_session=False))
    session.execute(delete(RepoMirrorWorker).where(RepoMirrorWorker.expires <= now, RepoMirrorWorker.owner != owner)
                    .execution_options(synchronize_session=False))
    return renewed == 1


def remove(session: Session, owner: str) -> None:
    """Clean stop: the worker no longer counts, at once."""
    session.execute(delete(RepoMirrorWorker).where(RepoMirrorWorker.owner == owner)
                    .execution_options(synchronize_session=False))


def count_alive(session: Session, now: datetime) -> int:
    """The workers whose last beat is fresh (their row has not expired)."""
    return int(session.scalar(select(func.count()).select_from(RepoMirrorWorker)
                              .where(RepoMirrorWorker.expires > now)) or 0)
