"""Sync history (which Quay lacks) and the destination tags each mirror owns.

* ``repomirrorsyncrun``: one row per sync run, with live counters so a run in
  progress shows how far it got;
* ``repomirrorsynctag``: one row per tag handled by a run (copied, skipped,
  failed, deleted, ...), with the digest and a redacted output excerpt;
* ``repomirrortag``: the destination tags this mirror created. Pruning deletes
  only these, never a tag someone else put there, and it survives the
  trimming of old runs (``QUAYMIRROR_HISTORY_KEEP``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from quaymirror.db import Base, utcnow

# Run statuses: the RepoMirrorStatus names a run can end with, plus SYNCING while
# it runs and INTERRUPTED when its worker stopped (shutdown, crash, lost lease).
RUN_SYNCING = "SYNCING"
RUN_SUCCESS = "SUCCESS"
RUN_FAIL = "FAIL"
RUN_CANCEL = "CANCEL"
RUN_INTERRUPTED = "INTERRUPTED"

TRIGGER_SCHEDULE = "schedule"
TRIGGER_SYNC_NOW = "sync_now"

# Per-tag outcomes.
COPIED = "copied"
SKIPPED = "skipped"
FAILED = "failed"
DELETED = "deleted"
KEPT = "kept"  # a prune candidate left in place (changed by someone else, see the reason)
CANCELLED = "cancelled"

_COUNTER = {COPIED: "tags_copied", SKIPPED: "tags_skipped", FAILED: "tags_failed", DELETED: "tags_deleted"}
OUTPUT_EXCERPT = 2000


class SyncRun(Base):
    __tablename__ = "repomirrorsyncrun"
    __table_args__ = (Index("ix_repomirrorsyncrun_repository_id_id", "repository_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    # Kept when the configuration is deleted, so the history outlives it.
    config_id: Mapped[int | None] = mapped_column(
        ForeignKey("repomirrorconfig.id", ondelete="SET NULL"), index=True
    )
    trigger: Mapped[str] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(String(255))
    lease_token: Mapped[str | None] = mapped_column(String(36))
    started: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default=RUN_SYNCING)
    reason: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    tags_matched: Mapped[int | None] = mapped_column(Integer)
    tags_done: Mapped[int] = mapped_column(Integer, default=0)
    tags_copied: Mapped[int] = mapped_column(Integer, default=0)
    tags_skipped: Mapped[int] = mapped_column(Integer, default=0)
    tags_deleted: Mapped[int] = mapped_column(Integer, default=0)
    tags_failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int | None] = mapped_column(BigInteger)


class SyncTag(Base):
    __tablename__ = "repomirrorsynctag"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("repomirrorsyncrun.id", ondelete="CASCADE"), index=True)
    tag: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str | None] = mapped_column(String(80))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    output: Mapped[str | None] = mapped_column(Text)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    finished: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class MirrorTag(Base):
    """A destination tag created by a mirror (and the digest it last wrote there)."""

    __tablename__ = "repomirrortag"
    __table_args__ = (UniqueConstraint("config_id", "tag"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    config_id: Mapped[int] = mapped_column(ForeignKey("repomirrorconfig.id", ondelete="CASCADE"), index=True)
    tag: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(String(80))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# ---------------------------------------------------------------- runs
def start_run(session: Session, *, repository_id: int, config_id: int, trigger: str, worker: str,
              lease_token: str) -> SyncRun:
    """Open a run; any run of the mirror still open belonged to a worker that died (its lease expired)."""
    session.execute(
        update(SyncRun)
        .where(SyncRun.config_id == config_id, SyncRun.finished.is_(None))
        .values(status=RUN_INTERRUPTED, reason="worker_lost", finished=utcnow(),
                message="the worker stopped without finishing; its lease expired and the mirror was reclaimed")
        .execution_options(synchronize_session=False)
    )
    run = SyncRun(repository_id=repository_id, config_id=config_id, trigger=trigger, worker=worker,
                  lease_token=lease_token, started=utcnow(), status=RUN_SYNCING)
    session.add(run)
    session.flush()
    return run


def set_matched(session: Session, run_id: int, matched: int) -> None:
    session.execute(update(SyncRun).where(SyncRun.id == run_id).values(tags_matched=matched)
                    .execution_options(synchronize_session=False))


def record_tag(session: Session, run_id: int, tag: str, outcome: str, *, digest: str | None = None,
               reason: str | None = None, output: str | None = None, size: int | None = None,
               duration_ms: int | None = None, counts_as_done: bool = True) -> None:
    """Add one tag's result and bump the run's counters in the same statement (several threads write)."""
    session.add(SyncTag(run_id=run_id, tag=tag, digest=digest, outcome=outcome, reason=reason,
                        output=excerpt(output), bytes=size, duration_ms=duration_ms, finished=utcnow()))
    values: dict = {}
    if counts_as_done:
        values["tags_done"] = SyncRun.tags_done + 1
    column = _COUNTER.get(outcome)
    if column is not None:
        values[column] = getattr(SyncRun, column) + 1
    if size:
        values["bytes"] = func.coalesce(SyncRun.bytes, 0) + size
    if values:
        session.execute(update(SyncRun).where(SyncRun.id == run_id).values(**values)
                        .execution_options(synchronize_session=False))


def finish_run(session: Session, run_id: int, status: str, *, reason: str | None = None,
               message: str | None = None) -> None:
    session.execute(
        update(SyncRun).where(SyncRun.id == run_id)
        .values(status=status, reason=reason, message=excerpt(message), finished=utcnow())
        .execution_options(synchronize_session=False)
    )


def trim(session: Session, repository_id: int, keep: int) -> int:
    """Delete the repository's finished runs beyond the newest ``keep`` (their tags cascade)."""
    ids = list(session.scalars(
        select(SyncRun.id).where(SyncRun.repository_id == repository_id, SyncRun.finished.is_not(None))
        .order_by(SyncRun.id.desc()).offset(keep).limit(1000)
    ))
    if not ids:
        return 0
    session.execute(delete(SyncTag).where(SyncTag.run_id.in_(ids)).execution_options(synchronize_session=False))
    result = session.execute(delete(SyncRun).where(SyncRun.id.in_(ids)).execution_options(synchronize_session=False))
    return result.rowcount


def excerpt(text: str | None, limit: int = OUTPUT_EXCERPT) -> str | None:
    """The tail of an (already redacted) output: the fatal line comes last."""
    if not text:
        return text or None
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


# ------------------------------------------------------------ ownership
def owned_tags(session: Session, config_id: int) -> dict[str, str]:
    rows = session.execute(select(MirrorTag.tag, MirrorTag.digest).where(MirrorTag.config_id == config_id))
    return {tag: digest for tag, digest in rows}


def own(session: Session, config_id: int, tag: str, digest: str) -> None:
    """Record that the mirror wrote ``tag`` (insert or update; one mirror run per config at a time)."""
    row = session.scalars(select(MirrorTag).where(MirrorTag.config_id == config_id, MirrorTag.tag == tag)).first()
    if row is None:
        session.add(MirrorTag(config_id=config_id, tag=tag, digest=digest))
    else:
        row.digest = digest
        row.updated = utcnow()


def disown(session: Session, config_id: int, tag: str) -> None:
    session.execute(delete(MirrorTag).where(MirrorTag.config_id == config_id, MirrorTag.tag == tag)
                    .execution_options(synchronize_session=False))
