"""The organization mirror's tables, and the enumerations their columns hold (Quay's integers).

``orgmirrorconfig`` (:class:`OrgMirrorConfig`): one per organization, where to discover repositories and how
to mirror them. ``orgmirrorrepository`` (:class:`OrgMirrorRepository`): one row per upstream repository the
discovery found, linked to the local repository once the worker created it. Every change of either
``sync_status`` goes through :mod:`quaymirror.orgmirror.status`.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from quaymirror.accounts.models import User
from quaymirror.db import Base, utcnow
from quaymirror.mirror.models import RepoMirrorStatus, RepoMirrorType, UpstreamAccess, decode_list, new_uuid
from quaymirror.mirror.worker.policy import MAX_SYNC_RETRIES

# A configuration's status (its discovery's): Quay's OrgMirrorStatus has the repository mirror's values and
# transitions (never run, sync now, syncing, success, fail, cancel), so it is that enumeration.
OrgMirrorStatus = RepoMirrorStatus


class OrgMirrorRepoStatus(enum.IntEnum):
    """A discovered repository's status; SKIP: filtered out or gone upstream (kept, never deleted)."""

    CANCEL = -2
    FAIL = -1
    NEVER_RUN = 0
    SUCCESS = 1
    SYNCING = 2
    SYNC_NOW = 3
    SKIP = 4


class SourceRegistryType(enum.IntEnum):
    """Where the discovery lists repositories: Quay's two, and ours, ``registry`` (any OCI distribution
    registry's ``/v2/_catalog``)."""

    HARBOR = 1
    QUAY = 2
    REGISTRY = 3


# Quay's names on the wire: the enum names lower-cased.
SOURCE_TYPES = tuple(kind.name.lower() for kind in SourceRegistryType)


class OrgMirrorConfig(UpstreamAccess, Base):
    __tablename__ = "orgmirrorconfig"

    organization_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), unique=True)
    creation_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    mirror_type: Mapped[int] = mapped_column(Integer, default=RepoMirrorType.PULL)
    external_registry_type: Mapped[int] = mapped_column(Integer)
    external_registry_url: Mapped[str] = mapped_column(String(2048))
    external_namespace: Mapped[str] = mapped_column(String(255))
    internal_robot_id: Mapped[int] = mapped_column(ForeignKey("user.id"), index=True)
    repository_filters_json: Mapped[str] = mapped_column("repository_filters", Text, default="[]")
    architecture_filter_json: Mapped[str] = mapped_column("architecture_filter", Text, default="[]")
    # Quay keeps a visibility table; ours is the repository's own word, "public" or "private".
    visibility: Mapped[str] = mapped_column(String(16))
    delete_stale_repos: Mapped[bool] = mapped_column(Boolean, default=False)
    sync_interval: Mapped[int] = mapped_column(Integer)
    sync_start_date: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    sync_expiration_date: Mapped[datetime | None] = mapped_column(DateTime)
    sync_retries_remaining: Mapped[int] = mapped_column(Integer, default=MAX_SYNC_RETRIES)
    sync_status: Mapped[int] = mapped_column(Integer, default=OrgMirrorStatus.NEVER_RUN, index=True)
    # Optimistic lock of the configuration: renewed by every status change.
    sync_transaction_id: Mapped[str | None] = mapped_column(String(36), default=new_uuid)
    skopeo_timeout: Mapped[int] = mapped_column(BigInteger, default=300)

    organization: Mapped[User] = relationship(foreign_keys=[organization_id])
    internal_robot: Mapped[User] = relationship(foreign_keys=[internal_robot_id])

    @property
    def architecture_filter(self) -> list[str]:
        return decode_list(self.architecture_filter_json)

    @architecture_filter.setter
    def architecture_filter(self, value: list[str]) -> None:
        self.architecture_filter_json = json.dumps(list(value))

    @property
    def repository_filters(self) -> list[str]:
        return decode_list(self.repository_filters_json)

    @repository_filters.setter
    def repository_filters(self, value: list[str]) -> None:
        self.repository_filters_json = json.dumps(list(value))

    @property
    def external_reference(self) -> str:
        """Quay's ``url/namespace``, as its audit entries name the source."""
        return f"{self.external_registry_url}/{self.external_namespace}"


class OrgMirrorRepository(Base):
    __tablename__ = "orgmirrorrepository"
    __table_args__ = (
        UniqueConstraint("org_mirror_config_id", "repository_name"),
        Index("ix_orgmirrorrepository_config_status", "org_mirror_config_id", "sync_status"),
    )

    org_mirror_config_id: Mapped[int] = mapped_column(ForeignKey("orgmirrorconfig.id", ondelete="CASCADE"),
                                                      index=True)
    # The upstream name without its namespace (a Harbor name may hold "/").
    repository_name: Mapped[str] = mapped_column(String(255))
    # The local repository once created or linked; a purged repository leaves the row unlinked.
    repository_id: Mapped[int | None] = mapped_column(ForeignKey("repository.id", ondelete="SET NULL"), index=True)
    discovery_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    sync_status: Mapped[int] = mapped_column(Integer, default=OrgMirrorRepoStatus.NEVER_RUN, index=True)
    sync_start_date: Mapped[datetime | None] = mapped_column(DateTime)
    sync_expiration_date: Mapped[datetime | None] = mapped_column(DateTime)
    last_sync_date: Mapped[datetime | None] = mapped_column(DateTime)
    status_message: Mapped[str | None] = mapped_column(Text)
    creation_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    sync_retries_remaining: Mapped[int] = mapped_column(Integer, default=MAX_SYNC_RETRIES)
    sync_transaction_id: Mapped[str | None] = mapped_column(String(36), default=new_uuid)
