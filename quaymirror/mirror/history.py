"""Sync history (which Quay lacks) and the destination tags each mirror owns: every write of them.

The tables are in :mod:`quaymirror.mirror.models` (:class:`MirrorSyncRun`,
:class:`MirrorSyncTag`, :class:`MirrorOwnedTag`); a sync run writes them
through its recorder (``quaymirror.mirror.worker.recorder``), which calls
these functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from quaymirror.db import rows_changed, utcnow
from quaymirror.mirror.models import (
    MirrorOwnedTag,
    MirrorSyncRun,
    MirrorSyncTag,
    RunStatus,
    RunTrigger,
    TagOutcome,
)

_COUNTER = {TagOutcome.COPIED: "tags_copied", TagOutcome.SKIPPED: "tags_skipped", TagOutcome.FAILED: "tags_failed",
            TagOutcome.DELETED: "tags_deleted", TagOutcome.FILTERED: "tags_filtered"}
OUTPUT_EXCERPT = 2000


def start_run(session: Session, *, repository_id: int, config_id: int, trigger: RunTrigger, worker: str,
              lease_token: str) -> MirrorSyncRun:
    """Open a run; any run of the mirror still open belonged to a worker that died (its lease expired)."""
    session.execute(
        update(MirrorSyncRun)
        .where(MirrorSyncRun.config_id == config_id, MirrorSyncRun.finished.is_(None))
        .values(status=RunStatus.INTERRUPTED, reason="worker_lost", finished=utcnow(),
                message="the worker stopped without finishing; its lease expired and the mirror was reclaimed")
        .execution_options(synchronize_session=False)
    )
    run = MirrorSyncRun(repository_id=repository_id, config_id=config_id, trigger=trigger, worker=worker,
                        lease_token=lease_token, started=utcnow(), status=RunStatus.SYNCING)
    session.add(run)
    session.flush()
    return run


def open_run_trigger(session: Session, config_id: int) -> RunTrigger | None:
    """The trigger of the mirror's newest run still open (its worker died): a reclaim continues it."""
    trigger = session.scalar(
        select(MirrorSyncRun.trigger)
        .where(MirrorSyncRun.config_id == config_id, MirrorSyncRun.finished.is_(None))
        .order_by(MirrorSyncRun.id.desc()).limit(1)
    )
    return RunTrigger(trigger) if trigger else None


def set_matched(session: Session, run_id: int, matched: int) -> None:
    session.execute(update(MirrorSyncRun).where(MirrorSyncRun.id == run_id).values(tags_matched=matched)
                    .execution_options(synchronize_session=False))


def record_tag(session: Session, run_id: int, tag: str, outcome: TagOutcome, *, digest: str | None = None,
               reason: str | None = None, output: str | None = None, size: int | None = None,
               duration_ms: int | None = None, counts_as_done: bool = True,
               platforms: Sequence[str] | None = None, upstream_digest: str | None = None) -> None:
    """Add one tag's result and bump the run's counters in the same statement (several threads write).

    ``platforms``: what the architecture filter chose to copy (None: no filter chose, the image was copied
    as it is); ``upstream_digest``: upstream's, when the tag was stored under another digest."""
    session.add(MirrorSyncTag(run_id=run_id, tag=tag, digest=digest, outcome=outcome, reason=reason,
                              output=excerpt(output), bytes=size, duration_ms=duration_ms, finished=utcnow(),
                              platforms_json=None if platforms is None else json.dumps(list(platforms)),
                              upstream_digest=upstream_digest))
    values: dict[str, object] = {}
    if counts_as_done:
        values["tags_done"] = MirrorSyncRun.tags_done + 1
    column = _COUNTER.get(outcome)
    if column is not None:
        values[column] = getattr(MirrorSyncRun, column) + 1
    if size:
        values["bytes"] = func.coalesce(MirrorSyncRun.bytes, 0) + size
    if values:
        session.execute(update(MirrorSyncRun).where(MirrorSyncRun.id == run_id).values(**values)
                        .execution_options(synchronize_session=False))


def finish_run(session: Session, run_id: int, status: RunStatus, *, reason: str | None = None,
               message: str | None = None) -> None:
    session.execute(
        update(MirrorSyncRun).where(MirrorSyncRun.id == run_id)
        .values(status=status, reason=reason, message=excerpt(message), finished=utcnow())
        .execution_options(synchronize_session=False)
    )


def trim(session: Session, repository_id: int, keep: int) -> int:
    """Delete the repository's finished runs beyond the newest ``keep`` (their tags cascade)."""
    ids = list(session.scalars(
        select(MirrorSyncRun.id)
        .where(MirrorSyncRun.repository_id == repository_id, MirrorSyncRun.finished.is_not(None))
        .order_by(MirrorSyncRun.id.desc()).offset(keep).limit(1000)
    ))
    if not ids:
        return 0
    session.execute(delete(MirrorSyncTag).where(MirrorSyncTag.run_id.in_(ids))
                    .execution_options(synchronize_session=False))
    return rows_changed(session, delete(MirrorSyncRun).where(MirrorSyncRun.id.in_(ids))
                        .execution_options(synchronize_session=False))


def excerpt(text: str | None, limit: int = OUTPUT_EXCERPT) -> str | None:
    """The tail of an (already redacted) output: the fatal line comes last."""
    if not text:
        return text or None
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def owned_tags(session: Session, config_id: int) -> dict[str, str]:
    """The destination tags the mirror created, and the digest it last wrote to each."""
    rows = session.execute(select(MirrorOwnedTag.tag, MirrorOwnedTag.digest)
                           .where(MirrorOwnedTag.config_id == config_id))
    return {tag: digest for tag, digest in rows}


@dataclass(frozen=True)
class StoredTag:
    """How an owned tag was stored: its digest, the architecture filter its index was stored with (None:
    whole) and upstream's digest when the stored one differs (None: the same)."""

    digest: str
    architectures: tuple[str, ...] | None = None
    upstream_digest: str | None = None


def stored_tags(session: Session, config_id: int) -> dict[str, StoredTag]:
    """How each tag the mirror owns was stored (for the next check)."""
    rows = session.execute(select(MirrorOwnedTag.tag, MirrorOwnedTag.digest, MirrorOwnedTag.architectures_json,
                                  MirrorOwnedTag.upstream_digest).where(MirrorOwnedTag.config_id == config_id))
    return {tag: StoredTag(digest, None if text is None else tuple(json.loads(text)), upstream)
            for tag, digest, text, upstream in rows}


def own(session: Session, config_id: int, tag: str, stored: StoredTag) -> None:
    """Record that the mirror wrote ``tag`` as ``stored`` (insert or update; one mirror run per config at a
    time)."""
    architectures = None if stored.architectures is None else json.dumps(list(stored.architectures))
    row = session.scalars(select(MirrorOwnedTag)
                          .where(MirrorOwnedTag.config_id == config_id, MirrorOwnedTag.tag == tag)).first()
    if row is None:
        row = MirrorOwnedTag(config_id=config_id, tag=tag)
        session.add(row)
    else:
        row.updated = utcnow()
    row.digest, row.architectures_json, row.upstream_digest = stored.digest, architectures, stored.upstream_digest


def disown(session: Session, config_id: int, tag: str) -> None:
    """The tag is no longer the mirror's (deleted, or changed by someone else): pruning leaves it alone."""
    session.execute(delete(MirrorOwnedTag).where(MirrorOwnedTag.config_id == config_id, MirrorOwnedTag.tag == tag)
                    .execution_options(synchronize_session=False))
