"""The rules of a repository's mirror configuration: create, update, delete, sync-now, cancel.

Every function runs inside the caller's transaction (``web.atomic``) and
validates everything before it writes anything, so an error leaves the
database exactly as it was: no orphan rule row, no granted permission, no
half-applied PUT. The checks run in Quay's order so the first error a client
sees is the one Quay would answer. Status changes go through
:mod:`quaymirror.mirror.status`, which the worker shares.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quaymirror import audit
from quaymirror.accounts import service as accounts
from quaymirror.accounts.models import User
from quaymirror.dates import parse_date
from quaymirror.errors import InvalidRequest, NotFound, PlainError, detail_error, model_error
from quaymirror.mirror import events, status
from quaymirror.mirror.models import (
    RULE_KIND,
    VALID_ARCHITECTURES,
    MirrorSyncRun,
    MirrorSyncTag,
    RepoMirrorConfig,
    RepoMirrorRule,
    RepoMirrorRuleType,
    RepoMirrorStatus,
    RepoMirrorType,
    decode_list,
    decode_registry_config,
    decode_rule_value,
    new_uuid,
)
from quaymirror.mirror.worker.policy import MAX_SYNC_RETRIES
from quaymirror.orgmirror import guard
from quaymirror.repositories import service as repositories
from quaymirror.repositories.models import Repository, RepositoryState
from quaymirror.security import ssrf
from quaymirror.security.secrets import DecryptionFailed, SecretBox
from quaymirror.settings import Settings

log = logging.getLogger(__name__)

CHANGED = "repo_mirror_config_changed"
# Quay has no way to delete a configuration, hence no log kind for it; this one is ours.
DELETED = "repo_mirror_config_deleted"
PASSWORD_MASK = "********"
UNDECRYPTABLE = "(invalid. please re-enter)"

MSG_NOT_ALLOWED = "The provided registry location is not allowed"
MSG_DATE = "Incorrect DateTime format for sync_start_date."
MSG_SPARSE = "Architecture filtering requires FEATURE_SPARSE_INDEX to be enabled."
MSG_EMPTY_RULE = "validation failed: rule_value for TAG_GLOB_CSV must be a list with at least one rule"
MSG_NO_ROBOT = "Could not find robot with specified username"
MSG_INVALID_ROBOT = "Invalid robot"
MSG_PASSWORD_ALONE = "Unable to set a new password without also specifying a username."
MSG_PASSWORD_NO_USER = "Unable to delete username while setting a password."

PROXY_KEYS = ("http_proxy", "https_proxy", "no_proxy")
_MISSING = object()


@dataclass(frozen=True)
class Actor:
    """Who made the change, for the audit log."""

    user: User | None
    ip: str | None = None


def find(session: Session, repository: Repository, *, lock: bool = False,
         managed: bool = False) -> RepoMirrorConfig | None:
    """The repository's configuration; ``lock`` takes a row lock (PostgreSQL) for a read-modify-write.

    The configuration an organization mirror keeps for one of its repositories is found only with
    ``managed`` (its history): for the repository mirror API such a repository has no mirror, as in Quay.
    """
    query = select(RepoMirrorConfig).where(RepoMirrorConfig.repository_id == repository.id)
    if not managed:
        query = query.where(RepoMirrorConfig.org_mirror_repository_id.is_(None))
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def require(session: Session, repository: Repository, *, lock: bool = False,
            managed: bool = False) -> RepoMirrorConfig:
    config = find(session, repository, lock=lock, managed=managed)
    if config is None:
        raise NotFound()
    return config


def _decrypt(box: SecretBox, token: str | None) -> tuple[bool, str | None]:
    """(readable, value): a stored credential that no longer decrypts is reported, never raised."""
    try:
        return True, box.decrypt(token)
    except DecryptionFailed:
        return False, None


def describe_config(config: RepoMirrorConfig, repository: Repository, box: SecretBox) -> dict[str, Any]:
    """:func:`describe_values` of a loaded configuration."""
    robot = config.internal_robot
    return describe_values(
        full_name=repository.full_name, box=box, is_enabled=config.is_enabled, mirror_type=config.mirror_type,
        external_reference=config.external_reference, username_token=config.external_registry_username,
        registry_config_json=config.external_registry_config_json,
        architecture_filter_json=config.architecture_filter_json, sync_interval=config.sync_interval,
        sync_start_date=config.sync_start_date, sync_expiration_date=config.sync_expiration_date,
        sync_retries_remaining=config.sync_retries_remaining, sync_status=config.sync_status,
        rule_value_json=config.root_rule.rule_value_json,
        robot_username=robot.username if robot is not None else None, skopeo_timeout=config.skopeo_timeout,
    )


def describe_values(*, full_name: str, box: SecretBox, is_enabled: bool, mirror_type: int, external_reference: str,
                    username_token: str | None, registry_config_json: str | None,
                    architecture_filter_json: str | None, sync_interval: int, sync_start_date: datetime | None,
                    sync_expiration_date: datetime | None, sync_retries_remaining: int, sync_status: int,
                    rule_value_json: str, robot_username: str | None, skopeo_timeout: int) -> dict[str, Any]:
    """The values of Quay's ViewMirrorConfig, in its order, from the columns as stored (JSON text, the
    encrypted username, enum integers): so a plain read of the columns answers exactly what the loaded
    configuration does. Dates are still datetimes: ``schemas.dump_view`` formats them."""
    readable, username = _decrypt(box, username_token)
    if not readable:
        # Quay intends this answer but crashes with a NameError; we answer it.
        log.warning("the stored upstream username of %s cannot be decrypted", full_name)
        username = UNDECRYPTABLE
    return {
        "is_enabled": is_enabled,
        "mirror_type": RepoMirrorType(mirror_type).name,
        "external_reference": external_reference,
        "external_registry_username": username,
        "external_registry_config": decode_registry_config(registry_config_json),
        "sync_interval": sync_interval,
        "sync_start_date": sync_start_date,
        "sync_expiration_date": sync_expiration_date,
        "sync_retries_remaining": sync_retries_remaining,
        "sync_status": RepoMirrorStatus(sync_status).name,
        "root_rule": {"rule_kind": RULE_KIND, "rule_value": decode_rule_value(rule_value_json)},
        "robot_username": robot_username,
        "skopeo_timeout_interval": skopeo_timeout,
        "architecture_filter": decode_list(architecture_filter_json),
    }


def check_reference(reference: str, settings: Settings) -> None:
    """Format and SSRF checks with DNS; a blocked target gets Quay's generic text (no oracle for the client),
    and the server log says which host was refused and how the allow list would let it through."""
    try:
        ssrf.check_external_reference(reference, settings.ssrf_allowed_hosts, resolve=True)
    except ssrf.ReferenceBlocked as error:
        log.info("mirror reference refused: %s", error.explain())
        raise InvalidRequest(MSG_NOT_ALLOWED) from None
    except ssrf.ReferenceRejected as error:
        raise InvalidRequest(str(error)) from None


def check_architectures(values: Sequence[str] | None, settings: Settings) -> None:
    if not values:
        return
    if not settings.feature_sparse_index:
        raise detail_error(400, MSG_SPARSE)
    invalid = sorted(set(values) - VALID_ARCHITECTURES)
    if invalid:
        raise detail_error(400, f"Invalid architectures: {', '.join(invalid)}")


def check_date(text: str) -> datetime:
    try:
        return parse_date(text)
    except ValueError:
        raise detail_error(400, MSG_DATE) from None


def check_rule(patterns: Sequence[str]) -> None:
    if not patterns:
        raise InvalidRequest(MSG_EMPTY_RULE)


def check_robot(session: Session, name: str, repository: Repository) -> User:
    """The robot must exist and belong to the repository's namespace (Quay's two DME answers)."""
    robot = accounts.get_robot(session, name)
    if robot is None:
        raise model_error(MSG_NO_ROBOT)
    namespace, plus, _short = name.partition("+")
    if not plus or namespace != repository.namespace.username or robot.robot_namespace_id != repository.namespace_id:
        raise model_error(MSG_INVALID_ROBOT)
    return robot


def refuse_if_org_mirrored(session: Session, repository: Repository) -> None:
    """Quay refuses a repository's own mirror in a namespace an organization mirror manages (whether that mirror
    is enabled or the feature on): the organization mirror owns every repository there."""
    if guard.is_org_mirrored(session, repository.namespace_id):
        raise InvalidRequest(guard.MSG_REPO_MIRROR)


def _changed(session: Session, repository: Repository, actor: Actor, field: str, value: Any) -> None:
    """Quay's audit entry for one changed field."""
    audit.record(session, CHANGED, repository_id=repository.id,
                 performer_id=actor.user.id if actor.user else None, ip=actor.ip,
                 repo=repository.name, namespace=repository.namespace.username, changed=field, to=value)


def create(session: Session, repository: Repository, data: dict[str, Any], *, box: SecretBox,
           settings: Settings, actor: Actor) -> RepoMirrorConfig:
    """Quay's POST: validate all (Quay's order), then rule, robot grant, config and MIRROR state at once."""
    # Concurrent POSTs for one repository queue here (PostgreSQL), so the later ones see the first's
    # configuration and answer 409 instead of colliding on the permission or config inserts.
    refuse_if_org_mirrored(session, repository)  # before the 409, as Quay
    session.execute(select(Repository.id).where(Repository.id == repository.id).with_for_update())
    duplicate = _already_exists(repository)  # built now: after a failed flush nothing can be loaded
    if find(session, repository) is not None:
        raise duplicate
    check_reference(data["external_reference"], settings)
    check_architectures(data["architecture_filter"], settings)
    start = check_date(data["sync_start_date"])
    check_rule(data["root_rule"])
    robot = check_robot(session, data["robot_username"], repository)

    rule = RepoMirrorRule(repository_id=repository.id, rule_type=RepoMirrorRuleType.TAG_GLOB_CSV)
    rule.rule_value = data["root_rule"]
    session.add(rule)
    session.flush()
    repositories.ensure_at_least(session, repository, robot, "write")
    config = RepoMirrorConfig(
        repository_id=repository.id,
        is_enabled=data["is_enabled"],
        mirror_type=RepoMirrorType.PULL,
        internal_robot_id=robot.id,
        external_reference=data["external_reference"],
        sync_interval=data["sync_interval"],
        sync_start_date=start,
        sync_expiration_date=None,
        sync_retries_remaining=MAX_SYNC_RETRIES,
        sync_status=RepoMirrorStatus.NEVER_RUN,
        sync_transaction_id=new_uuid(),
        root_rule_id=rule.id,
        skopeo_timeout=data["skopeo_timeout_interval"],
    )
    config.store_credentials(box, data["external_registry_username"], data["external_registry_password"])
    config.external_registry_config = data["external_registry_config"]
    config.architecture_filter = data["architecture_filter"]
    session.add(config)
    try:
        session.flush()
    except IntegrityError:
        # A concurrent POST for the same repository won the unique index; the transaction rolls back.
        raise duplicate from None
    if repository.state != RepositoryState.MIRROR:
        repositories.change_state(session, repository, RepositoryState.MIRROR.name,
                                  performer=actor.user, ip=actor.ip)
    _changed(session, repository, actor, "external_reference", config.external_reference)
    log.info("mirror configuration created for %s from %s", repository.full_name, config.external_reference)
    return config


def _already_exists(repository: Repository) -> PlainError:
    # Quay's text, typo included: clients may match on it.
    return detail_error(409, f"Mirror configuration already exits for repository {repository.full_name}")


def update(session: Session, repository: Repository, data: dict[str, Any], *, box: SecretBox,
           settings: Settings, actor: Actor) -> list[str]:
    """Quay's PUT: only the keys sent; all checks first, then every change in this one transaction.

    Unlike Quay, a value equal to the stored one is not rewritten nor logged,
    so a client that PUTs back what it read (Ansible) changes nothing. Returns
    the names of the changed fields, as logged.
    """
    refuse_if_org_mirrored(session, repository)
    config = require(session, repository, lock=True)
    put = _check_update(session, repository, config, data, settings, box)
    changes = [change for step in _UPDATE_STEPS for change in step(put)]
    if changes:
        # A new version: a worker holding an older read of this row can no longer claim it. The
        # running sync (if any) is unaffected: its release matches on the lease, not on this id.
        config.sync_transaction_id = new_uuid()
        session.flush()
        for field, value in changes:
            _changed(session, repository, actor, field, value)
        log.info("mirror configuration of %s changed: %s", repository.full_name,
                 ", ".join(field for field, _ in changes))
    return [field for field, _ in changes]


Change = tuple[str, Any]  # (field, new value): one of Quay's audit entries


@dataclass(frozen=True)
class _Put:
    """A PUT whose checks passed: the keys sent (the start date parsed) and the robot they name."""

    session: Session
    repository: Repository
    config: RepoMirrorConfig
    values: dict[str, Any]
    robot: User | None
    box: SecretBox


def _check_update(session: Session, repository: Repository, config: RepoMirrorConfig, data: dict[str, Any],
                  settings: Settings, box: SecretBox) -> _Put:
    """Every check of a PUT, in Quay's order, before anything is written."""
    values = dict(data)
    if "external_reference" in data:
        check_reference(data["external_reference"], settings)
    if "sync_start_date" in data:
        values["sync_start_date"] = check_date(data["sync_start_date"])
    if "architecture_filter" in data:
        check_architectures(data["architecture_filter"], settings)
    if "external_registry_password" in data:
        if "external_registry_username" not in data:
            raise detail_error(400, MSG_PASSWORD_ALONE)
        if data["external_registry_username"] is None and data["external_registry_password"] is not None:
            raise detail_error(400, MSG_PASSWORD_NO_USER)
    if "root_rule" in data:
        check_rule(data["root_rule"])
    robot = check_robot(session, data["robot_username"], repository) if "robot_username" in data else None
    return _Put(session, repository, config, values, robot, box)


def _same(value: Any) -> Any:
    return value


def _to_second(value: datetime | None) -> datetime | None:
    """Dates compare at the API's resolution: a worker-computed date with microseconds reads back truncated,
    and PUTting back what was read must not count as a change."""
    return value.replace(microsecond=0) if value is not None else None


def _as_list(value: list[str] | None) -> list[str]:
    """No architecture filter is stored as an empty list."""
    return list(value or [])


@dataclass(frozen=True)
class _Assign:
    """A key stored as sent in one column, when it differs from the stored value (compared normalised)."""

    field: str
    attribute: str
    normalise: Callable[[Any], Any] = _same

    def __call__(self, put: _Put) -> list[Change]:
        if self.field not in put.values:
            return []
        value = put.values[self.field]
        if self.normalise(getattr(put.config, self.attribute)) == self.normalise(value):
            return []
        setattr(put.config, self.attribute, value)
        return [(self.field, value)]


def _robot(put: _Put) -> list[Change]:
    """The robot gets write access (even when it is already the mirror's); Quay never logs a new robot, we
    do."""
    if put.robot is None:
        return []
    repositories.ensure_at_least(put.session, put.repository, put.robot, "write")
    if put.config.internal_robot_id == put.robot.id:
        return []
    put.config.internal_robot_id = put.robot.id
    return [("robot_username", put.robot.username)]


def _credentials(put: _Put) -> list[Change]:
    if "external_registry_username" not in put.values:
        return []
    return _update_credentials(put.config, put.values, put.box, "external_registry_password" in put.values)


def _registry_config(put: _Put) -> list[Change]:
    if "external_registry_config" not in put.values:
        return []
    return _merge_registry_config(put.config, put.values["external_registry_config"])


def _root_rule(put: _Put) -> list[Change]:
    """The configuration's own rule: Quay updates whichever rule of the repository it finds first."""
    if "root_rule" not in put.values or put.config.root_rule.rule_value == put.values["root_rule"]:
        return []
    put.config.root_rule.rule_value = put.values["root_rule"]
    return [("mirror_rule", put.values["root_rule"])]


# Each step applies one key of a PUT, in the order Quay applies (and logs) them.
_UPDATE_STEPS: tuple[Callable[[_Put], list[Change]], ...] = (
    _Assign("is_enabled", "is_enabled"),
    _Assign("external_reference", "external_reference"),
    _robot,
    _Assign("sync_start_date", "sync_start_date", _to_second),
    _Assign("sync_interval", "sync_interval"),
    _Assign("skopeo_timeout_interval", "skopeo_timeout"),
    _Assign("architecture_filter", "architecture_filter", _as_list),
    _credentials,
    _registry_config,
    _root_rule,
)


def _update_credentials(config: RepoMirrorConfig, data: dict[str, Any], box: SecretBox,
                        has_password: bool) -> list[Change]:
    """Username alone, or username and password together, as Quay takes them; the password is logged masked."""
    changes: list[Change] = []
    username = data["external_registry_username"]
    readable, current = _decrypt(box, config.external_registry_username)
    if not readable or current != username:
        config.external_registry_username = box.encrypt(username)
        changes.append(("external_registry_username", username))
    if has_password:
        password = data["external_registry_password"]
        readable, current = _decrypt(box, config.external_registry_password)
        if not readable or current != password:
            config.external_registry_password = box.encrypt(password)
            changes.append(("external_registry_password", PASSWORD_MASK if password is not None else None))
    return changes


def _merge_registry_config(config: RepoMirrorConfig, incoming: dict[str, Any]) -> list[Change]:
    """Merge Quay's known keys into the stored object; a proxy key lands even when no proxy was stored."""
    stored = dict(config.external_registry_config)
    changes: list[Change] = []
    for key in ("verify_tls", "unsigned_images"):
        if key in incoming and stored.get(key, _MISSING) != incoming[key]:
            stored[key] = incoming[key]
            changes.append((key, incoming[key]))
    if "proxy" in incoming:
        proxy = dict(stored["proxy"]) if isinstance(stored.get("proxy"), dict) else {}
        proxy_changes = []
        for key in PROXY_KEYS:
            if key in incoming["proxy"] and proxy.get(key, _MISSING) != incoming["proxy"][key]:
                proxy[key] = incoming["proxy"][key]
                proxy_changes.append((key, incoming["proxy"][key]))
        if proxy_changes:
            stored["proxy"] = proxy
            changes.extend(proxy_changes)
    if changes:
        config.external_registry_config = stored
    return changes


def delete(session: Session, repository: Repository, *, actor: Actor) -> None:
    """Remove the configuration and its rules (Quay cannot); tags stay, a MIRROR repository becomes NORMAL.

    The robot keeps the write permission it was given, as in Quay when a
    mirror is disabled. A repository an admin set READ_ONLY stays READ_ONLY.
    """
    config = require(session, repository, lock=True)
    reference = config.external_reference
    session.delete(config)
    session.flush()
    session.execute(sql_delete(RepoMirrorRule).where(RepoMirrorRule.repository_id == repository.id))
    audit.record(session, DELETED, repository_id=repository.id,
                 performer_id=actor.user.id if actor.user else None, ip=actor.ip,
                 repo=repository.name, namespace=repository.namespace.username, external_reference=reference)
    if repository.state == RepositoryState.MIRROR:
        repositories.change_state(session, repository, RepositoryState.NORMAL.name,
                                  performer=actor.user, ip=actor.ip)
    log.info("mirror configuration of %s deleted", repository.full_name)


def sync_now(session: Session, repository: Repository, *, actor: Actor) -> None:
    """Queue an immediate sync from any state but a live SYNCING (also when disabled); else 404 as Quay."""
    config = require(session, repository)
    if not status.request_sync_now(session, config):
        raise NotFound()
    events.sync_requested(session, config.id)
    _changed(session, repository, actor, "sync_status", RepoMirrorStatus.SYNC_NOW.name)


def sync_cancel(session: Session, repository: Repository, *, actor: Actor) -> None:
    """Cancel a queued or running sync; from any other state 404 as Quay. Logged as Quay's ``SYNC_CANCEL``."""
    config = require(session, repository)
    if not status.cancel(session, config):
        raise NotFound()
    _changed(session, repository, actor, "sync_status", "SYNC_CANCEL")


@dataclass(frozen=True)
class RunPage:
    """A page of a mirror's sync runs, newest first."""

    syncs: list[MirrorSyncRun]
    page: int
    has_additional: bool


def list_runs(session: Session, config: RepoMirrorConfig, page: int, limit: int) -> RunPage:
    """The current configuration's runs: those of a deleted configuration stay in the table for the audit
    trail, but they are not this mirror's history."""
    rows = list(session.scalars(
        select(MirrorSyncRun)
        .where(MirrorSyncRun.repository_id == config.repository_id, MirrorSyncRun.config_id == config.id)
        .order_by(MirrorSyncRun.id.desc()).offset((page - 1) * limit).limit(limit + 1)
    ))
    return RunPage(rows[:limit], page, len(rows) > limit)


def get_run(session: Session, config: RepoMirrorConfig, run_id: int) -> tuple[MirrorSyncRun, list[MirrorSyncTag]]:
    """One run of the current configuration with its per-tag results, in the order recorded; else 404."""
    run = session.get(MirrorSyncRun, run_id)
    if run is None or run.config_id != config.id:
        raise NotFound()
    return run, list(session.scalars(select(MirrorSyncTag).where(MirrorSyncTag.run_id == run.id).order_by(MirrorSyncTag.id)))
