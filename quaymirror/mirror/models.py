"""Every mirror table, and the enumerations their columns hold.

Quay's: ``repomirrorconfig`` and ``repomirrorrule`` (enums stored as Quay's integers). Ours:
``repomirrorworker``, the live worker processes (which Quay reads from its workers' metrics instead),
and the sync history Quay lacks:

* ``repomirrorsyncrun`` (:class:`MirrorSyncRun`): one row per sync run, with live counters so a run
  in progress shows how far it got;
* ``repomirrorsynctag`` (:class:`MirrorSyncTag`): one row per tag handled by a run (copied, skipped,
  failed, deleted, ...), with the digest and a redacted output excerpt;
* ``repomirrortag`` (:class:`MirrorOwnedTag`): the destination tags a mirror created. Pruning deletes
  only these, never a tag someone else put there, and they survive the trimming of old runs
  (``QUAYMIRROR_HISTORY_KEEP``).

Writes of the history and ownership tables go through :mod:`quaymirror.mirror.history`; every change
of ``sync_status`` goes through :mod:`quaymirror.mirror.status`.
"""

from __future__ import annotations

import enum
import json
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

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
    and_,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from quaymirror.accounts.models import User
from quaymirror.db import Base, owned_by, utcnow
from quaymirror.mirror.worker.policy import MAX_SYNC_RETRIES
from quaymirror.repositories.models import Repository

if TYPE_CHECKING:
    from quaymirror.security.secrets import SecretBox

VALID_ARCHITECTURES = frozenset({"amd64", "arm64", "ppc64le", "s390x"})


class RepoMirrorStatus(enum.IntEnum):
    CANCEL = -2
    FAIL = -1
    NEVER_RUN = 0
    SUCCESS = 1
    SYNCING = 2
    SYNC_NOW = 3


class RunStatus(enum.StrEnum):
    """A sync run's ``status`` in its history row.

    The :class:`RepoMirrorStatus` names a run can end with, plus SYNCING while it runs and
    INTERRUPTED when its worker stopped it unfinished (shutdown, crash, lost lease).
    """

    SYNCING = "SYNCING"
    SUCCESS = "SUCCESS"
    FAIL = "FAIL"
    CANCEL = "CANCEL"
    INTERRUPTED = "INTERRUPTED"


class RunTrigger(enum.StrEnum):
    """Why a run started: its schedule came due, or a user asked (sync-now)."""

    SCHEDULE = "schedule"
    SYNC_NOW = "sync_now"


class TagOutcome(enum.StrEnum):
    """What a run did with one tag (``repomirrorsynctag.outcome``, and the metrics' ``outcome`` label)."""

    COPIED = "copied"
    SKIPPED = "skipped"
    FAILED = "failed"
    DELETED = "deleted"
    KEPT = "kept"  # a prune candidate left in place (changed by someone else, see the reason)
    FILTERED = "filtered"  # a single image of a platform the architecture filter leaves out: nothing copied
    CANCELLED = "cancelled"


class RepoMirrorType(enum.IntEnum):
    PULL = 1


class RepoMirrorRuleType(enum.IntEnum):
    TAG_GLOB_CSV = 1


# The one rule type's name in Quay's bodies: ``{"rule_kind": "tag_glob_csv", "rule_value": [...]}``.
RULE_KIND = RepoMirrorRuleType.TAG_GLOB_CSV.name.lower()


def new_uuid() -> str:
    return str(uuid.uuid4())


# The JSON columns as the models read them; plain reads of the columns decode them with the same functions.
def decode_rule_value(text: str) -> list[str]:
    return json.loads(text)


def decode_registry_config(text: str | None) -> dict[str, Any]:
    value = json.loads(text or "{}")
    return value if isinstance(value, dict) else {}


def decode_list(text: str | None) -> list[str]:
    value = json.loads(text or "[]")
    return value if isinstance(value, list) else []


class UpstreamAccess:
    """What every mirror configuration keeps of its upstream's access: the credentials, encrypted at rest
    (:mod:`quaymirror.security.secrets`), and Quay's ``external_registry_config`` (proxy, TLS verification)
    as JSON text. A mixin of the repository's and the organization's configuration tables."""

    external_registry_username: Mapped[str | None] = mapped_column(String(4096))
    external_registry_password: Mapped[str | None] = mapped_column(String(9000))
    external_registry_config_json: Mapped[str] = mapped_column("external_registry_config", Text, default="{}")

    @property
    def external_registry_config(self) -> dict[str, Any]:
        return decode_registry_config(self.external_registry_config_json)

    @external_registry_config.setter
    def external_registry_config(self, value: dict[str, Any]) -> None:
        self.external_registry_config_json = json.dumps(value)

    def store_credentials(self, box: SecretBox, username: str | None, password: str | None) -> None:
        """The credentials of a new configuration, encrypted; an empty one is stored as NULL, as Quay does."""
        self.external_registry_username = box.encrypt(username or None)
        self.external_registry_password = box.encrypt(password or None)


class RepoMirrorRule(Base):
    __tablename__ = "repomirrorrule"

    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, unique=True)
    repository_id: Mapped[int] = owned_by("repository")
    creation_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    rule_type: Mapped[int] = mapped_column(Integer, default=RepoMirrorRuleType.TAG_GLOB_CSV, index=True)
    rule_value_json: Mapped[str] = mapped_column("rule_value", Text)
    left_child_id: Mapped[int | None] = mapped_column(ForeignKey("repomirrorrule.id", ondelete="SET NULL"))
    right_child_id: Mapped[int | None] = mapped_column(ForeignKey("repomirrorrule.id", ondelete="SET NULL"))

    @property
    def rule_value(self) -> list[str]:
        return decode_rule_value(self.rule_value_json)

    @rule_value.setter
    def rule_value(self, value: list[str]) -> None:
        self.rule_value_json = json.dumps(list(value))


class RepoMirrorConfig(UpstreamAccess, Base):
    __tablename__ = "repomirrorconfig"
    __table_args__ = (
        Index("ix_repomirrorconfig_expiration", "sync_expiration_date"),
    )

    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"), unique=True)
    creation_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    mirror_type: Mapped[int] = mapped_column(Integer, default=RepoMirrorType.PULL, index=True)
    internal_robot_id: Mapped[int] = mapped_column(ForeignKey("user.id"), index=True)
    external_reference: Mapped[str] = mapped_column(Text)
    architecture_filter_json: Mapped[str | None] = mapped_column("architecture_filter", Text, default="[]")
    sync_interval: Mapped[int] = mapped_column(Integer, server_default="60")
    sync_start_date: Mapped[datetime | None] = mapped_column(DateTime)
    sync_expiration_date: Mapped[datetime | None] = mapped_column(DateTime)
    sync_retries_remaining: Mapped[int] = mapped_column(Integer, default=MAX_SYNC_RETRIES,
                                                        server_default=str(MAX_SYNC_RETRIES))
    sync_status: Mapped[int] = mapped_column(Integer, default=RepoMirrorStatus.NEVER_RUN, index=True)
    # Optimistic lock of the configuration: renewed by every write (API and worker).
    sync_transaction_id: Mapped[str | None] = mapped_column(String(36), default=new_uuid, index=True)
    # The claim, kept apart from the config's version so a PUT during a sync cannot strand it.
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    root_rule_id: Mapped[int] = mapped_column(ForeignKey("repomirrorrule.id"), index=True)
    skopeo_timeout: Mapped[int] = mapped_column(BigInteger, server_default="300")
    # Set on the configuration an organization mirror keeps for one discovered repository: its upstream and
    # credentials are the organization mirror's (read at each run's start), the repository mirror API does not
    # show it, and it goes with the discovered row.
    org_mirror_repository_id: Mapped[int | None] = mapped_column(
        ForeignKey("orgmirrorrepository.id", ondelete="CASCADE"), unique=True)

    repository: Mapped[Repository] = relationship()
    internal_robot: Mapped[User] = relationship()
    root_rule: Mapped[RepoMirrorRule] = relationship()

    @property
    def architecture_filter(self) -> list[str]:
        return decode_list(self.architecture_filter_json)

    @architecture_filter.setter
    def architecture_filter(self, value: list[str] | None) -> None:
        self.architecture_filter_json = json.dumps(list(value or []))

    @property
    def status(self) -> RepoMirrorStatus:
        return RepoMirrorStatus(self.sync_status)


# The worker's scan of Quay's "ready" filter (``status.ready_filters``): only the mirrors that can fall
# due on their schedule, by status then start (then id, the due order's tie-break). One index range per
# status, read in order, finds the first due ones and the next start without touching the others, so a
# worker pass costs the same at 100k mirrors as at 1k. Partial: SQLite uses it only because the query
# repeats these terms (see ``status.ready_filters``).
_READY = and_(
    RepoMirrorConfig.sync_retries_remaining > 0,
    RepoMirrorConfig.sync_expiration_date.is_(None),
    RepoMirrorConfig.is_enabled.is_(True),
)
Index("ix_repomirrorconfig_ready", RepoMirrorConfig.sync_status, RepoMirrorConfig.sync_start_date, RepoMirrorConfig.id,
      sqlite_where=_READY, postgresql_where=_READY)


class RepoMirrorWorker(Base):
    """One row per live worker process, written only by ``quaymirror.mirror.heartbeat``.

    Quay counts its mirror workers from their Prometheus gauges; here every API replica must see
    every worker, so each worker says it is alive in the database: inserted at start, ``heartbeat``
    and ``expires`` renewed every ``QUAYMIRROR_HEARTBEAT_SECONDS``, deleted on a clean stop. A
    worker killed outright leaves its row behind, which stops counting at ``expires``. The writer
    sets ``expires`` (rather than readers deriving it from their own setting) so an API process
    configured with another heartbeat interval still judges every worker by that worker's own beat.
    """

    __tablename__ = "repomirrorworker"

    owner: Mapped[str] = mapped_column(String(255), unique=True)  # the worker's lease_owner, "host:pid:hex"
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started: Mapped[datetime] = mapped_column(DateTime)
    heartbeat: Mapped[datetime] = mapped_column(DateTime)
    expires: Mapped[datetime] = mapped_column(DateTime, index=True)


class MirrorSyncRun(Base):
    """One sync run of a mirror (``repomirrorsyncrun``): opened at the claim, counters bumped per tag."""

    __tablename__ = "repomirrorsyncrun"
    __table_args__ = (Index("ix_repomirrorsyncrun_repository_id_id", "repository_id", "id"),)

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
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.SYNCING)
    reason: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    tags_matched: Mapped[int | None] = mapped_column(Integer)
    tags_done: Mapped[int] = mapped_column(Integer, default=0)
    tags_copied: Mapped[int] = mapped_column(Integer, default=0)
    tags_skipped: Mapped[int] = mapped_column(Integer, default=0)
    tags_deleted: Mapped[int] = mapped_column(Integer, default=0)
    tags_failed: Mapped[int] = mapped_column(Integer, default=0)
    tags_filtered: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    bytes: Mapped[int | None] = mapped_column(BigInteger)


class MirrorSyncTag(Base):
    """One tag's result in a run (``repomirrorsynctag``)."""

    __tablename__ = "repomirrorsynctag"

    run_id: Mapped[int] = owned_by("repomirrorsyncrun")
    tag: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str | None] = mapped_column(String(80))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    output: Mapped[str | None] = mapped_column(Text)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    # The platforms copied ("os/arch[/variant]", a JSON list) when the architecture filter chose them.
    platforms_json: Mapped[str | None] = mapped_column("platforms", Text)
    # The upstream's digest when the tag was stored under another one (a registry that refused the sparse index
    # got an index of the copied platforms only); NULL: ``digest`` is upstream's.
    upstream_digest: Mapped[str | None] = mapped_column(String(80))

    @property
    def platforms(self) -> list[str] | None:
        return None if self.platforms_json is None else decode_list(self.platforms_json)
    finished: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class MirrorOwnedTag(Base):
    """A destination tag created by a mirror, and the digest it last wrote there (``repomirrortag``)."""

    __tablename__ = "repomirrortag"
    __table_args__ = (UniqueConstraint("config_id", "tag"),)

    config_id: Mapped[int] = owned_by("repomirrorconfig")
    tag: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(String(80))
    # The architecture filter the tag's index was stored with (a JSON list); NULL: stored whole. A re-sync
    # with another filter copies what the new one adds (or rewrites the tag whole once the filter is cleared).
    architectures_json: Mapped[str | None] = mapped_column("architectures", Text)
    # The upstream digest the tag was stored from, when ``digest`` differs (see MirrorSyncTag.upstream_digest):
    # the next run's check compares it, so an unchanged upstream is still skipped.
    upstream_digest: Mapped[str | None] = mapped_column(String(80))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
