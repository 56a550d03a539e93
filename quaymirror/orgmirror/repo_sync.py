"""A discovered repository is synced by the repository mirror's sync run, plugged in, not copied.

Quay syncs an organization's repositories with a loop of its own (every tag re-copied on every run, nothing
pruned, cancel seen between tags only). Here each discovered repository gets, when the discovery first finds
it, a local repository (state ORG_MIRROR, the mirror's robot its admin, as Quay) and a repository mirror
configuration of its own, marked with its ``orgmirrorrepository`` row (:func:`create_mirrors`). That
configuration is claimed, leased, cancelled and recorded like any repository mirror (digest skip, pruning of
the tags it created, the platform filter, cancel within the keeper's tick, the history API); what differs is
plugged into :class:`~quaymirror.mirror.worker.run.MirrorRun`:

* its **source** (:func:`load_mirror`): the upstream, credentials and filters are the organization mirror's,
  read at each run's start, so a PUT of the organization's mirror applies to the next run of every
  repository and no credential is copied;
* its **listener** (:class:`OrgRepositoryLog`): Quay's organization-mirror audit entries instead of the
  repository mirror's, and the discovered row follows the run's status, so the organization's repository
  list and counts say what the worker does; and the repository's notifications, as a repository mirror's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from quaymirror import audit
from quaymirror.db import Database, utcnow
from quaymirror.errors import InvalidRequest
from quaymirror.mirror import status as mirror_status
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorRule, RepoMirrorStatus, RunStatus, TagOutcome
from quaymirror.mirror.worker import reasons
from quaymirror.mirror.worker.reasons import RunFailed
from quaymirror.mirror.worker.recorder import RecordedRun, RunListener, RunOutcome
from quaymirror.mirror.worker.run_audit import write_entry
from quaymirror.mirror.worker.run_config import Mirror, upstream_access
from quaymirror.notifications.run_events import MirrorNotifications
from quaymirror.orgmirror import status
from quaymirror.orgmirror.models import OrgMirrorConfig, OrgMirrorRepository, OrgMirrorRepoStatus
from quaymirror.repositories.models import Repository, RepositoryPermission, RepositoryState
from quaymirror.repositories.service import validate_repository_name
from quaymirror.settings import Settings

REPO_CREATED = "org_mirror_repo_created"
REPO_CREATION_FAILED = "org_mirror_repo_creation_failed"
SYNC_STARTED = "org_mirror_sync_started"
SYNC_SUCCESS = "org_mirror_sync_success"
SYNC_FAILED = "org_mirror_sync_failed"
SYNC_CANCELLED = "org_mirror_sync_cancelled"
# Every tag of an organization's repository is mirrored (Quay has no tag filter there).
ALL_TAGS = ["*"]


def upstream_prefix(config: OrgMirrorConfig) -> str:
    """Quay's reference of the namespace: the URL without its scheme and trailing slash, then the namespace."""
    url = config.external_registry_url.rstrip("/")
    host = url.split("://", 1)[1] if "://" in url else url
    return f"{host}/{config.external_namespace}"


def managed(config_id: int, *rows: ColumnElement[bool]) -> ColumnElement[bool]:
    """The repository mirror configurations the organization mirror ``config_id`` keeps (of its discovered rows
    matching ``rows``, when given)."""
    found = select(OrgMirrorRepository.id).where(OrgMirrorRepository.org_mirror_config_id == config_id, *rows)
    return RepoMirrorConfig.org_mirror_repository_id.in_(found.scalar_subquery())


# ------------------------------------------------------------------ creation, at discovery
def create_mirrors(session: Session, config: OrgMirrorConfig) -> int:
    """A local repository and its repository mirror configuration for every discovered repository that is new
    (NEVER_RUN) and has none yet; how many were created. A name Quay's repository rule refuses fails that row
    with Quay's message (tried again when the row is found again after a SKIP); a repository of that name
    that exists already is linked, its state and permissions unchanged (as Quay)."""
    pending = session.scalars(
        select(OrgMirrorRepository)
        .where(OrgMirrorRepository.org_mirror_config_id == config.id,
               OrgMirrorRepository.sync_status == OrgMirrorRepoStatus.NEVER_RUN,
               ~select(RepoMirrorConfig.id).where(RepoMirrorConfig.org_mirror_repository_id == OrgMirrorRepository.id)
               .exists())
        .order_by(OrgMirrorRepository.id)).all()
    if not pending:
        return 0
    organization = config.organization
    prefix = upstream_prefix(config)
    existing = {repository.name: repository for repository in session.scalars(
        select(Repository).where(Repository.namespace_id == config.organization_id,
                                 Repository.name.in_([row.repository_name for row in pending])))}
    mirrored = set(session.scalars(select(RepoMirrorConfig.repository_id).where(
        RepoMirrorConfig.repository_id.in_([r.id for r in existing.values()])))) if existing else set()
    # In three batches (one flush each, whatever the number of repositories): the repositories, then their
    # permissions and tag rules, then their configurations; each batch needs the ids of the one before.
    linked: list[tuple[OrgMirrorRepository, Repository]] = []
    created: list[tuple[OrgMirrorRepository, Repository]] = []
    for row in pending:
        repository = existing.get(row.repository_name)
        if repository is not None:
            if repository.id not in mirrored:  # else a repository mirror of its own: left alone
                linked.append((row, repository))
            continue
        try:
            validate_repository_name(row.repository_name)
        except InvalidRequest as refused:
            status.creation_failed(session, row.id, f"Failed to create local repository for '{row.repository_name}'")
            audit.record(session, REPO_CREATION_FAILED, performer_id=config.internal_robot_id,
                         namespace=organization.username, external_reference=f"{prefix}/{row.repository_name}",
                         error=refused.detail)
            continue
        created.append((row, Repository(namespace_id=config.organization_id, name=row.repository_name,
                                        visibility=config.visibility, state=int(RepositoryState.ORG_MIRROR))))
    session.add_all([repository for _, repository in created])
    session.flush()
    for row, repository in created:
        session.add(RepositoryPermission(repository_id=repository.id, user_id=config.internal_robot_id, role="admin"))
        audit.record(session, REPO_CREATED, repository_id=repository.id, performer_id=config.internal_robot_id,
                     namespace=organization.username, repo=row.repository_name,
                     external_reference=f"{prefix}/{row.repository_name}", visibility=config.visibility,
                     via_org_mirror=True)
    rules = [(row, repository, RepoMirrorRule(repository_id=repository.id, rule_value=ALL_TAGS))
             for row, repository in linked + created]
    session.add_all([rule for _, _, rule in rules])
    session.flush()
    for row, repository, rule in rules:
        row.repository_id = repository.id
        session.add(RepoMirrorConfig(
            repository_id=repository.id, org_mirror_repository_id=row.id, is_enabled=config.is_enabled,
            internal_robot_id=config.internal_robot_id, external_reference=f"{prefix}/{row.repository_name}",
            architecture_filter_json=config.architecture_filter_json, sync_interval=config.sync_interval,
            sync_start_date=None, sync_status=RepoMirrorStatus.NEVER_RUN, root_rule_id=rule.id,
            skopeo_timeout=config.skopeo_timeout,
        ))
    session.flush()
    return len(created)


def set_aside(session: Session, config_id: int, names: Sequence[str], message: str) -> None:
    """Rows set aside (SKIP) stop syncing: their configurations are disabled, a queued sync is dropped."""
    if not status.skip(session, config_id, names, message):
        return
    aside = managed(config_id, OrgMirrorRepository.sync_status == OrgMirrorRepoStatus.SKIP)
    session.execute(update(RepoMirrorConfig).where(aside).values(is_enabled=False)
                    .execution_options(synchronize_session=False))
    mirror_status.cancel_many(session, aside & (RepoMirrorConfig.sync_status == RepoMirrorStatus.SYNC_NOW))


def take_back(session: Session, config: OrgMirrorConfig, names: Sequence[str]) -> None:
    """Rows found again: never run (the schedule step then queues them), their configurations enabled."""
    if not status.unskip(session, config.id, names):
        return
    back = managed(config.id, OrgMirrorRepository.sync_status == OrgMirrorRepoStatus.NEVER_RUN)
    session.execute(update(RepoMirrorConfig).where(back).values(is_enabled=config.is_enabled)
                    .execution_options(synchronize_session=False))
    mirror_status.reset_many(session, back)


def schedule(session: Session, config_id: int, *, sync_now: bool) -> int:
    """Quay's last discovery step: after a sync-now every repository not set aside nor running is queued;
    otherwise those never run or cancelled. The rows and their configurations alike; how many were queued."""
    now = utcnow()
    rows = None if sync_now else [OrgMirrorRepoStatus.NEVER_RUN, OrgMirrorRepoStatus.CANCEL]
    queued = status.schedule(session, config_id, rows, now)
    mirror_status.schedule_many(
        session, managed(config_id, OrgMirrorRepository.sync_status == OrgMirrorRepoStatus.SYNC_NOW),
        None if sync_now else [RepoMirrorStatus.NEVER_RUN, RepoMirrorStatus.CANCEL], now)
    return queued


def cancel(session: Session, config_id: int) -> int:
    """Every repository of the mirror cancelled at once: queued ones are not taken, running ones stop within
    the keeper's tick (Quay waits for its next discovery pass and the end of the current tag)."""
    rows = status.cancel_repositories(session, config_id)
    mirror_status.cancel_many(session, managed(config_id))
    return rows


def follow_config(session: Session, config: OrgMirrorConfig) -> None:
    """A PUT of the organization mirror reaches its repositories' configurations (what a run reads of its own
    row: enabled, interval, timeout, robot, platforms, reference); the upstream and credentials are read from
    the organization's row at each run's start anyway."""
    session.execute(update(RepoMirrorConfig).where(managed(config.id)).values(
        sync_interval=config.sync_interval, skopeo_timeout=config.skopeo_timeout,
        internal_robot_id=config.internal_robot_id, architecture_filter_json=config.architecture_filter_json,
        external_reference=upstream_prefix(config) + "/" + select(OrgMirrorRepository.repository_name).where(
            OrgMirrorRepository.id == RepoMirrorConfig.org_mirror_repository_id).scalar_subquery(),
    ).execution_options(synchronize_session=False))
    # The organization's switch, but rows set aside stay disabled.
    session.execute(update(RepoMirrorConfig).where(
        managed(config.id, OrgMirrorRepository.sync_status != OrgMirrorRepoStatus.SKIP)
    ).values(is_enabled=config.is_enabled).execution_options(synchronize_session=False))


# ------------------------------------------------------------------ the run's source and listener
def load_mirror(database: Database, settings: Settings, config_id: int) -> Mirror:
    """The Mirror of a discovered repository's configuration: the organization mirror's upstream and
    credentials, every tag, the organization's platform filter."""
    with database.transaction() as session:
        found = session.execute(
            select(RepoMirrorConfig, OrgMirrorRepository, OrgMirrorConfig)
            .join(OrgMirrorRepository, OrgMirrorRepository.id == RepoMirrorConfig.org_mirror_repository_id)
            .join(OrgMirrorConfig, OrgMirrorConfig.id == OrgMirrorRepository.org_mirror_config_id)
            .where(RepoMirrorConfig.id == config_id)).first()
        if found is None:
            raise RunFailed(reasons.UNKNOWN_ERROR, "the organization mirror configuration was deleted")
        mirror_config, row, config = found
        repository = mirror_config.repository
        access = upstream_access(settings, config, config.skopeo_timeout)
        if config.external_registry_url.lower().startswith("http://"):
            access["verify_tls"] = False  # a plain HTTP upstream: skopeo speaks HTTP only without TLS checks
        return Mirror(
            config_id=mirror_config.id,
            repository_id=repository.id,
            namespace=repository.namespace.username,
            name=repository.name,
            reference=f"{upstream_prefix(config)}/{row.repository_name}",
            rules=list(ALL_TAGS),
            architecture_filter=tuple(a for a in config.architecture_filter if isinstance(a, str)),
            **access,
        )


class OrgRepositoryLog(RunListener):
    """Quay's audit entries of an organization-mirrored repository's sync, and its discovered row's status."""

    def __init__(self, row_id: int) -> None:
        self.row_id = row_id

    def run_started(self, session: Session, run: RecordedRun) -> None:
        write_entry(session, run, SYNC_STARTED, verb="start",
                    message=f"Starting sync for '{run.mirror.reference}'")
        status.running(session, self.row_id)

    def run_finished(self, session: Session, run: RecordedRun, outcome: RunOutcome) -> None:
        reference = run.mirror.reference
        names = list(outcome.matched or [])
        message: str | None = None
        if outcome.status == RunStatus.SUCCESS:
            write_entry(session, run, SYNC_SUCCESS, verb="end", tags=", ".join(names),
                        message=(f"Successfully synced '{reference}': {len(names)} tags" if names
                                 else f"No tags found for '{reference}'"))
        elif outcome.status == RunStatus.CANCEL:
            write_entry(session, run, SYNC_CANCELLED, verb="end", message=f"Sync cancelled for '{reference}'")
        elif outcome.status == RunStatus.FAIL:
            failed = [r.tag for r in outcome.results if r.outcome == TagOutcome.FAILED]
            if failed:
                message = f"Sync failed: {len(failed)}/{len(outcome.results)} tags failed"
                entry = f"Sync failed for '{reference}': {len(failed)}/{len(outcome.results)} tags failed"
            else:
                message = entry = f"Sync failed for '{reference}': {outcome.message}"
            write_entry(session, run, SYNC_FAILED, verb="end", message=entry, tags=", ".join(failed),
                        stdout=outcome.stdout, stderr=outcome.stderr, reason=outcome.reason)
        # The row takes what the release wrote to the configuration (interrupted runs included: back to
        # SYNC_NOW at a shutdown).
        written = session.execute(select(RepoMirrorConfig.sync_status, RepoMirrorConfig.sync_start_date,
                                         RepoMirrorConfig.sync_retries_remaining)
                                  .where(RepoMirrorConfig.id == run.claimed.config_id)).first()
        if written is not None:
            status.follow_run(session, self.row_id, written.sync_status, written.sync_start_date,
                              written.sync_retries_remaining, message,
                              finished=outcome.status != RunStatus.INTERRUPTED)


def run_parts(database: Database, settings: Settings, config_id: int, row_id: int) -> dict[str, Any]:
    """What :class:`~quaymirror.mirror.worker.run.MirrorRun` takes for a discovered repository's run."""
    return {"source": functools.partial(load_mirror, database, settings, config_id),
            "listeners": (OrgRepositoryLog(row_id), MirrorNotifications(settings))}
