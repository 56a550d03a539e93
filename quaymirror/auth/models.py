"""OAuth access tokens: only a hash of the secret is stored."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from quaymirror.accounts.models import User
from quaymirror.db import Base, owned_by, utcnow


class _TokenFields(Protocol):
    @property
    def scope(self) -> str: ...

    @property
    def expires_at(self) -> datetime | None: ...


class BearerChecks:
    """The interface authlib's BearerTokenValidator checks, from a token's scope and expiry: one copy for
    the stored token and for a token a hot read selected itself. A token with an expiry is refused from
    that instant on; one without never expires."""

    __slots__ = ()

    def get_scope(self: _TokenFields) -> str:
        return self.scope

    def is_expired(self: _TokenFields) -> bool:
        return self.expires_at is not None and self.expires_at <= utcnow()

    def is_revoked(self) -> bool:
        return False


class AccessToken(BearerChecks, Base):
    __tablename__ = "oauthaccesstoken"

    user_id: Mapped[int] = owned_by("user")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(2048))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)

    user: Mapped[User] = relationship()
