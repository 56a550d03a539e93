"""Repositories and per-repository permissions."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import DateTime, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from quaymirror.accounts.models import User
from quaymirror.db import Base, owned_by, utcnow


class RepositoryState(enum.IntEnum):
    """Quay's integer enum; the API speaks the names."""

    NORMAL = 0
    READ_ONLY = 1
    MIRROR = 2
    MARKED_FOR_DELETION = 3
    ORG_MIRROR = 4


def answers_missing(state: int) -> bool:
    """A repository marked for deletion answers as if it did not exist (a 404)."""
    return state == RepositoryState.MARKED_FOR_DELETION


# The states a client or the CLI may set; the others are the system's own (deletion, organization mirroring).
SETTABLE_STATES = (RepositoryState.NORMAL, RepositoryState.READ_ONLY, RepositoryState.MIRROR)

ROLES = ("read", "write", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}


class Repository(Base):
    __tablename__ = "repository"
    __table_args__ = (UniqueConstraint("namespace_id", "name"),)

    namespace_id: Mapped[int] = owned_by("user")
    name: Mapped[str] = mapped_column(String(255))
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    description: Mapped[str] = mapped_column(String(4096), default="")
    kind: Mapped[str] = mapped_column(String(16), default="image")
    state: Mapped[int] = mapped_column(Integer, default=RepositoryState.NORMAL, server_default="0", index=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    namespace: Mapped[User] = relationship()

    @property
    def full_name(self) -> str:
        return f"{self.namespace.username}/{self.name}"


class RepositoryPermission(Base):
    """A direct role of a user or robot on a repository."""

    __tablename__ = "repositorypermission"
    __table_args__ = (UniqueConstraint("repository_id", "user_id"),)

    repository_id: Mapped[int] = owned_by("repository")
    user_id: Mapped[int] = owned_by("user")
    role: Mapped[str] = mapped_column(String(16))

    user: Mapped[User] = relationship()
