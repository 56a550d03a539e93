"""The audit log: one row per change, as Quay's ``logentry`` (kind, repo, performer, metadata)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from quaymirror.db import Base, utcnow


class LogEntry(Base):
    __tablename__ = "logentry"

    kind: Mapped[str] = mapped_column(String(64), index=True)
    repository_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("repository.id", ondelete="SET NULL"), index=True
    )
    performer_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("user.id", ondelete="SET NULL"))
    ip: Mapped[str | None] = mapped_column(String(64))
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    datetime: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)

    @property
    def metadata_(self) -> dict[str, Any]:
        return json.loads(self.metadata_json or "{}")


def _jsonable(value: Any) -> Any:
    # Quay logs datetimes as Unix seconds.
    if isinstance(value, datetime):
        return int(value.replace(tzinfo=UTC).timestamp())
    return value


def record(
    session: Session,
    kind: str,
    *,
    repository_id: int | None = None,
    performer_id: int | None = None,
    ip: str | None = None,
    **metadata: Any,
) -> LogEntry:
    """Add an audit entry to the caller's transaction, so it commits or rolls back with the change."""
    entry = LogEntry(
        kind=kind,
        repository_id=repository_id,
        performer_id=performer_id,
        ip=ip,
        metadata_json=json.dumps({k: _jsonable(v) for k, v in metadata.items()}, sort_keys=True),
    )
    session.add(entry)
    return entry


def entries(session: Session, kind: str | None = None, repository_id: int | None = None) -> list[LogEntry]:
    query = select(LogEntry).order_by(LogEntry.id)
    if kind is not None:
        query = query.where(LogEntry.kind == kind)
    if repository_id is not None:
        query = query.where(LogEntry.repository_id == repository_id)
    return list(session.scalars(query))
