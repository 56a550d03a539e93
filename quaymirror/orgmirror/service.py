"""The rules of an organization's mirror: create, update, delete, sync-now, cancel, verify, the list of the
discovered repositories, and what other domains ask (is a namespace org-mirrored?).

Every function runs inside the caller's transaction (``web.atomic``) and checks everything, in Quay's order,
before it writes anything, so a refused request leaves the database as it was. Status changes go through
:mod:`quaymirror.orgmirror.status`, which the worker will share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, select
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quaymirror import audit
from quaymirror.accounts import service as accounts
from quaymirror.accounts.models import User
from quaymirror.dates import parse_date
from quaymirror.errors import InvalidRequest, NotFound
from quaymirror.mirror import events
from quaymirror.mirror import service as mirrors
from quaymirror.mirror.service import UNDECRYPTABLE, Actor
from quaymirror.orgmirror import repo_sync, status
from quaymirror.orgmirror.models import (
    OrgMirrorConfig,
    OrgMirrorRepository,
    OrgMirrorRepoStatus,
    OrgMirrorStatus,
    SourceRegistryType,
)
from quaymirror.repositories.models import Repository, RepositoryState
from quaymirror.security import ssrf
from quaymirror.security.secrets import DecryptionFailed, SecretBox
from quaymirror.settings import Settings

log = logging.getLogger(__name__)

ENABLED = "org_mirror_enabled"
DISABLED = "org_mirror_disabled"
CHANGED = "org_mirror_config_changed"
SYNC_NOW_REQUESTED = "org_mirror_sync_now_requested"
SYNC_CANCELLED = "org_mirror_sync_cancelled"

MSG_ROBOT_OTHER_ORG = "Robot account must belong to the organization"
MSG_DATE = "Invalid sync_start_date format. Use ISO 8601: YYYY-MM-DDTHH:MM:SSZ"
MSG_URL_NOT_ALLOWED = "The provided registry URL is not allowed"
MSG_URL_REQUIRED = "External registry URL is required"
MSG_URL_FORMAT = "Invalid URL format"
MSG_URL_CREDENTIALS = "URLs with embedded credentials are not allowed"
MSG_URL_HOSTNAME = "URL must include a hostname"
MSG_NOT_EMPTY = ("Cannot create organization mirror: the organization already contains repositories. "
                 "Organization mirroring requires an empty organization.")
MSG_EXISTS = "Mirror configuration already exists for this organization"
MSG_DISCOVERING = "Cannot trigger sync: discovery is currently in progress."
MSG_REPOS_ACTIVE = ("Cannot trigger sync: repositories are still syncing. Cancel the current sync and wait for "
                    "all repositories to reach a terminal state before triggering a new sync.")
MSG_CONFLICT = "Cannot trigger sync: concurrent update conflict."
MSG_ALREADY_CANCELLED = "Cannot cancel: mirror is already cancelled"


def require_organization(namespace: User | None) -> User:
    """The namespace the permission check passed, as an organization: 404 for none or a user's namespace
    (Quay checks the permission first, so a stranger's missing organization is a 403, not this)."""
    if namespace is None or not namespace.is_organization:
        raise NotFound()
    return namespace


def find(session: Session, organization_id: int, *, lock: bool = False) -> OrgMirrorConfig | None:
    query = select(OrgMirrorConfig).where(OrgMirrorConfig.organization_id == organization_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def require(session: Session, organization: User, *, lock: bool = False) -> OrgMirrorConfig:
    config = find(session, organization.id, lock=lock)
    if config is None:
        raise NotFound()
    return config


# ------------------------------------------------------------------ what GET answers
def _live_rows(config_id: int) -> Any:
    """The config's discovered rows Quay counts: all but those whose repository is marked for deletion."""
    return (
        select(OrgMirrorRepository)
        .outerjoin(Repository, Repository.id == OrgMirrorRepository.repository_id)
        .where(OrgMirrorRepository.org_mirror_config_id == config_id,
               (Repository.id.is_(None)) | (Repository.state != RepositoryState.MARKED_FOR_DELETION))
    )


def status_counts(session: Session, config: OrgMirrorConfig) -> dict[str, int]:
    """The discovered repositories per status: every status, in the enum's order, zeros included."""
    rows = _live_rows(config.id).subquery()
    counted: dict[int, int] = {
        status_value: count for status_value, count in
        session.execute(select(rows.c.sync_status, func.count()).group_by(rows.c.sync_status))}
    return {each.name: counted.get(int(each), 0) for each in OrgMirrorRepoStatus}


def describe(session: Session, config: OrgMirrorConfig, box: SecretBox) -> dict[str, Any]:
    """GET's values in Quay's order (dates still datetimes: the view formats them)."""
    try:
        username = box.decrypt(config.external_registry_username)
    except DecryptionFailed:
        log.warning("the stored upstream username of organization mirror %s cannot be decrypted", config.id)
        username = UNDECRYPTABLE
    robot = config.internal_robot
    return {
        "is_enabled": config.is_enabled,
        "external_registry_type": SourceRegistryType(config.external_registry_type).name.lower(),
        "external_registry_url": config.external_registry_url,
        "external_namespace": config.external_namespace,
        "external_registry_username": username,
        "has_external_registry_password": config.external_registry_password is not None,
        "external_registry_config": config.external_registry_config,
        "repository_filters": config.repository_filters,
        "robot_username": robot.username if robot is not None else None,
        "visibility": config.visibility,
        "sync_interval": config.sync_interval,
        "sync_start_date": config.sync_start_date,
        "sync_expiration_date": config.sync_expiration_date,
        "sync_status": OrgMirrorStatus(config.sync_status).name,
        "sync_retries_remaining": config.sync_retries_remaining,
        "repo_sync_status_counts": status_counts(session, config),
        "skopeo_timeout": config.skopeo_timeout,
        "creation_date": config.creation_date,
        # Ours, after Quay's keys and only when set, so that Quay's clients read exactly Quay's body.
        **({"architecture_filter": config.architecture_filter} if config.architecture_filter else {}),
    }


# ------------------------------------------------------------------ checks, in Quay's words
def check_robot(session: Session, name: str, organization: User) -> User:
    """The robot must exist (a user's name is no robot) and be one of this organization's."""
    robot = accounts.get_robot(session, name)
    if robot is None:
        raise InvalidRequest(f"Invalid robot account: {name}")
    if robot.robot_namespace_id != organization.id:
        raise InvalidRequest(MSG_ROBOT_OTHER_ORG)
    return robot


def check_date(text: str) -> datetime:
    try:
        return parse_date(text)
    except ValueError:
        raise InvalidRequest(MSG_DATE) from None


@dataclass(frozen=True)
class SourceUrl:
    """An upstream URL that passed the checks, and the addresses its host resolved to (the ones to connect to)."""

    scheme: str
    host: str
    port: int | None
    addresses: list[str]


def check_url(url: str, settings: Settings) -> SourceUrl:
    """Quay's URL rules: http or https, no credentials, a host, and the SSRF rules with DNS. A blocked host
    gets one generic text (no oracle for the client; the server log says which host and how to allow it)."""
    if not url:
        raise InvalidRequest(MSG_URL_REQUIRED)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest(MSG_URL_FORMAT) from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"Invalid URL scheme '{parts.scheme}': only HTTP and HTTPS are allowed")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(MSG_URL_CREDENTIALS)
    host = parts.hostname
    if not host:
        raise InvalidRequest(MSG_URL_HOSTNAME)
    try:
        addresses = ssrf.check_host(host, settings.ssrf_allowed_hosts)
    except ssrf.ReferenceBlocked as error:
        log.info("organization mirror URL refused: %s", error.explain())
        raise InvalidRequest(MSG_URL_NOT_ALLOWED) from None
    except ssrf.ReferenceUnresolvable as error:
        raise InvalidRequest(str(error)) from None
    except ssrf.ReferenceRejected:
        raise InvalidRequest(MSG_URL_FORMAT) from None
    return SourceUrl(parts.scheme, host, port, addresses)


def _audit(session: Session, kind: str, organization: User, actor: Actor, **metadata: Any) -> None:
    audit.record(session, kind, performer_id=actor.user.id if actor.user else None, ip=actor.ip,
                 namespace=organization.username, **metadata)


# ------------------------------------------------------------------ create, update, delete
def create(session: Session, organization: User, data: dict[str, Any], *, box: SecretBox, settings: Settings,
           actor: Actor) -> OrgMirrorConfig:
    """Quay's POST: the robot, the date, the URL, then (the organization locked) empty and not configured."""
    robot = check_robot(session, data["robot_username"], organization)
    start = check_date(data["sync_start_date"])
    check_url(data["external_registry_url"], settings)
    mirrors.check_architectures(data["architecture_filter"], settings)
    # Concurrent POSTs (and repository creations) for one organization queue here on PostgreSQL.
    session.execute(select(User.id).where(User.id == organization.id).with_for_update())
    # Quay checks for repositories before the existing configuration: a second POST after the worker
    # created repositories says "already contains repositories".
    if session.scalars(select(Repository.id).where(
            Repository.namespace_id == organization.id,
            Repository.state != RepositoryState.MARKED_FOR_DELETION).limit(1)).first() is not None:
        raise InvalidRequest(MSG_NOT_EMPTY)
    if find(session, organization.id) is not None:
        raise InvalidRequest(MSG_EXISTS)
    kind = SourceRegistryType[data["external_registry_type"].upper()]
    config = OrgMirrorConfig(
        organization_id=organization.id,
        is_enabled=data["is_enabled"],
        external_registry_type=kind,
        external_registry_url=data["external_registry_url"],
        external_namespace=data["external_namespace"],
        internal_robot_id=robot.id,
        visibility=data["visibility"],
        sync_interval=data["sync_interval"],
        sync_start_date=start,
        skopeo_timeout=data["skopeo_timeout"],
    )  # the status, retries and claim: the columns' defaults (never run, Quay's three retries, none)
    config.store_credentials(box, data["external_registry_username"], data["external_registry_password"])
    config.external_registry_config = data["external_registry_config"]
    config.repository_filters = data["repository_filters"]
    config.architecture_filter = data["architecture_filter"] or []
    session.add(config)
    try:
        session.flush()
    except IntegrityError:
        raise InvalidRequest(MSG_EXISTS) from None
    _audit(session, ENABLED, organization, actor, external_registry_type=kind.name.lower(),
           external_registry_url=config.external_registry_url, external_namespace=config.external_namespace,
           sync_interval=config.sync_interval, robot_username=robot.username)
    log.info("organization mirror created for %s from %s", organization.username, config.external_reference)
    return config


def update(session: Session, organization: User, data: dict[str, Any], sent: list[str], *, box: SecretBox,
           settings: Settings, actor: Actor) -> None:
    """Quay's PUT: each key sent, checked in Quay's order, then all applied at once. It neither looks at nor
    changes the sync status; a new ``sync_start_date`` moves only the next discovery. ``sent``: the body's
    keys as sent (unknown ones too), which Quay's audit entry lists."""
    config = require(session, organization, lock=True)
    if "external_registry_url" in data:
        check_url(data["external_registry_url"], settings)
    robot = check_robot(session, data["robot_username"], organization) if "robot_username" in data else None
    start = check_date(data["sync_start_date"]) if "sync_start_date" in data else None
    if "architecture_filter" in data:
        mirrors.check_architectures(data["architecture_filter"], settings)
    old_reference = config.external_reference
    for key in ("is_enabled", "external_registry_url", "external_namespace", "visibility", "sync_interval",
                "skopeo_timeout"):
        if key in data:
            setattr(config, key, data[key])
    if robot is not None:
        config.internal_robot_id = robot.id
    if start is not None:
        config.sync_start_date = start
    for key in ("external_registry_username", "external_registry_password"):
        if key in data:  # "" or null clears it
            setattr(config, key, box.encrypt(data[key] or None))
    if "external_registry_config" in data:
        config.external_registry_config = data["external_registry_config"]
    if "repository_filters" in data:
        config.repository_filters = data["repository_filters"]
    if "architecture_filter" in data:
        config.architecture_filter = data["architecture_filter"] or []
    session.flush()
    repo_sync.follow_config(session, config)
    _audit(session, CHANGED, organization, actor, updated_fields=sent, old_external_reference=old_reference,
           external_reference=config.external_reference)


def delete(session: Session, organization: User, *, actor: Actor) -> None:
    """Quay's DELETE: the repositories it created go back to NORMAL (tags kept), its rows and itself go."""
    config = require(session, organization, lock=True)
    reference = config.external_reference
    _release(session, config)
    _audit(session, DISABLED, organization, actor, external_reference=reference)
    log.info("organization mirror of %s deleted", organization.username)


def _release(session: Session, config: OrgMirrorConfig) -> None:
    """Give the config's ORG_MIRROR repositories back to their users, then delete its rows and itself."""
    linked = select(OrgMirrorRepository.repository_id).where(
        OrgMirrorRepository.org_mirror_config_id == config.id, OrgMirrorRepository.repository_id.is_not(None))
    session.execute(sql_update(Repository).where(Repository.id.in_(linked),
                                             Repository.state == RepositoryState.ORG_MIRROR)
                    .values(state=RepositoryState.NORMAL).execution_options(synchronize_session=False))
    session.execute(sql_delete(OrgMirrorRepository).where(OrgMirrorRepository.org_mirror_config_id == config.id))
    session.delete(config)
    session.flush()


# ------------------------------------------------------------------ sync-now, cancel
def _active_repositories(session: Session, config: OrgMirrorConfig) -> int:
    """Discovered repositories a new sync would collide with: those syncing, and (on an enabled mirror) those
    queued. Unlike Quay, a FAIL never counts (Quay counts a repository that failed for good as active forever,
    so sync-now is refused until it succeeds), nor do queued rows of a disabled mirror (no worker takes them)."""
    active = [OrgMirrorRepoStatus.SYNCING]
    if config.is_enabled:
        active += [OrgMirrorRepoStatus.SYNC_NOW, OrgMirrorRepoStatus.NEVER_RUN]
    rows = _live_rows(config.id).where(OrgMirrorRepository.sync_status.in_(active)).subquery()
    return session.scalar(select(func.count()).select_from(rows)) or 0


def sync_now(session: Session, organization: User, *, actor: Actor) -> None:
    """A discovery as soon as possible, from every status but SYNCING, also when disabled (as Quay)."""
    config = require(session, organization)
    if config.sync_status == OrgMirrorStatus.SYNCING:
        raise InvalidRequest(MSG_DISCOVERING)
    if _active_repositories(session, config):
        raise InvalidRequest(MSG_REPOS_ACTIVE)
    if not status.request_sync_now(session, config):
        raise InvalidRequest(MSG_CONFLICT)
    events.sync_requested(session, None)  # a discovery is due: wake the workers once this commits
    _audit(session, SYNC_NOW_REQUESTED, organization, actor, external_reference=config.external_reference)


def sync_cancel(session: Session, organization: User, *, actor: Actor) -> None:
    config = require(session, organization)
    if not status.cancel(session, config):
        raise InvalidRequest(MSG_ALREADY_CANCELLED)
    # Unlike Quay, which waits for its next discovery pass and then for the end of the tag being copied, the
    # repositories are cancelled now: queued ones are not taken, running copies stop within the keeper's tick.
    repo_sync.cancel(session, config.id)
    events.sync_requested(session, None)  # the discovery that completes the cancel is due
    _audit(session, SYNC_CANCELLED, organization, actor, external_reference=config.external_reference)


# ------------------------------------------------------------------ the discovered repositories
@dataclass(frozen=True)
class DiscoveredRepository:
    name: str
    sync_status: str
    discovery_date: datetime
    last_sync_date: datetime | None
    status_message: str | None
    quay_repository: str | None


@dataclass(frozen=True)
class RepositoryPage:
    repositories: list[DiscoveredRepository]
    page: int
    limit: int
    total: int

    @property
    def has_next(self) -> bool:
        return self.page * self.limit < self.total


def parse_status(text: str | None) -> OrgMirrorRepoStatus | None:
    """``?status=`` in any case; an unknown (or empty) name is Quay's 400 listing the valid ones."""
    if text is None:
        return None
    try:
        return OrgMirrorRepoStatus[text.upper()]
    except KeyError:
        valid = ", ".join(each.name for each in OrgMirrorRepoStatus)
        raise InvalidRequest(f"Invalid status filter '{text}'. Valid values: {valid}") from None


def list_repositories(session: Session, organization: User, *, page: int, limit: int,
                      status_name: str | None) -> RepositoryPage:
    """A page of the discovered repositories by name, read from the database only (as Quay)."""
    config = require(session, organization)
    wanted = parse_status(status_name)
    query = _live_rows(config.id)
    if wanted is not None:
        query = query.where(OrgMirrorRepository.sync_status == wanted)
    rows = query.subquery()
    total = session.scalar(select(func.count()).select_from(rows)) or 0
    found = session.execute(
        query.add_columns(Repository.name).order_by(OrgMirrorRepository.repository_name)
        .offset((page - 1) * limit).limit(limit)
    ).all()
    return RepositoryPage([
        DiscoveredRepository(
            name=row.repository_name, sync_status=OrgMirrorRepoStatus(row.sync_status).name,
            discovery_date=row.discovery_date, last_sync_date=row.last_sync_date,
            status_message=row.status_message,
            quay_repository=f"{organization.username}/{name}" if name is not None else None,
        )
        for row, name in found
    ], page, limit, total)
