"""Namespaces (users and organizations) and robot accounts, in one table as in Quay."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from quaymirror.db import Base, owned_by, utcnow


class User(Base):
    """A user, an organization (``is_organization``) or a robot (``is_robot``, named ``ns+short``)."""

    __tablename__ = "user"

    username: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str | None] = mapped_column(String(255))
    is_organization: Mapped[bool] = mapped_column(Boolean, default=False)
    is_robot: Mapped[bool] = mapped_column(Boolean, default=False)
    is_superuser: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(String(1024), default="")
    # Robots only: the secret, encrypted with the instance key (Quay returns it on GET).
    robot_token: Mapped[str | None] = mapped_column(String(1024))
    # Robots only: the namespace that owns the robot.
    robot_namespace_id: Mapped[int | None] = owned_by("user")
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    robot_namespace: Mapped[User | None] = relationship(remote_side="User.id")

    @property
    def kind(self) -> str:
        if self.is_robot:
            return "robot"
        return "org" if self.is_organization else "user"

    @property
    def robot_shortname(self) -> str:
        return self.username.split("+", 1)[1] if self.is_robot else self.username


class OrganizationMember(Base):
    """Membership of a user in an organization; ``admin`` members administer every repository."""

    __tablename__ = "organizationmember"
    __table_args__ = (UniqueConstraint("organization_id", "user_id"),)

    organization_id: Mapped[int] = owned_by("user")
    user_id: Mapped[int] = owned_by("user")
    role: Mapped[str] = mapped_column(String(16), default="member")
