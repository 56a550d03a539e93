"""The organization mirror's discovery in the worker: due configurations claimed, upstream listed, rows recorded.

A pass (:func:`discover_due`, run by the mirror worker beside its own pass) reads the configurations due for a
discovery and takes them one by one, each with one guarded UPDATE (:func:`status.claim`), so that any number
of workers discover each configuration once. A discovery, in Quay's steps:

1. a pending cancel: every repository cancelled (running syncs stop), the configuration released; done;
2. the upstream's repositories listed (:mod:`.discovery`: Quay's or Harbor's API, or a registry's catalog),
   outside any transaction; a failure is Quay's ``org_mirror_sync_failed`` entry and a FAIL release;
3. ``repository_filters`` applied (globs, case-sensitive, ``*`` matching ``/`` as in Quay);
4. in one transaction: new names recorded (NEVER_RUN); rows gone upstream or filtered out set aside (SKIP,
   Quay's messages, never deleted locally), rows found again taken back, unless upstream answered nothing at
   all (a transient empty answer changes nothing); a local repository and a repository mirror configuration
   for each new row (:mod:`.repo_sync`); the repositories queued (all after a sync-now, else the new and the
   cancelled ones); Quay's ``Discovery completed`` entry; the release.

The repositories' syncs are then ordinary repository mirror runs, taken by the worker's own pass.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from quaymirror import audit, metrics
from quaymirror.db import Database, utcnow
from quaymirror.mirror import events
from quaymirror.mirror.models import new_uuid
from quaymirror.mirror.worker.policy import MAX_SYNC_RETRIES
from quaymirror.orgmirror import discovery, repo_sync, status
from quaymirror.orgmirror.models import (
    OrgMirrorConfig,
    OrgMirrorRepository,
    OrgMirrorRepoStatus,
    OrgMirrorStatus,
)
from quaymirror.security.secrets import DecryptionFailed, SecretBox
from quaymirror.settings import Settings

log = logging.getLogger(__name__)

# At most this many configurations are read per pass (the others are due at the next one).
MAX_BATCH = 20
# Quay cuts an upstream error quoted in an audit entry at this length.
ERROR_EXCERPT = 512
INSERT_CHUNK = 100

MSG_GONE = "Repository no longer in source registry"
MSG_FILTERED = "Repository excluded by filters"


@dataclass(frozen=True)
class Discovered:
    """How one claimed discovery ended (``quay_org_mirror_discovery_total``'s status: success, fail or cancel)
    and what it found: the upstream's names, those the filters keep, how many rows are new, how many queued."""

    outcome: str
    upstream: int = 0
    kept: int = 0
    new: int = 0
    queued: int = 0


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Quay's filter: any glob matches (case-sensitive; ``*`` also matches ``/``); no pattern keeps all."""
    return not patterns or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def discover_due(database: Database, settings: Settings) -> int:
    """Discover every configuration due now; how many this worker claimed (discovered, failed or cancelled).
    One configuration's internal error does not stop the others (logged, as Quay)."""
    with database.transaction() as session:
        due = status.due(session, utcnow(), MAX_BATCH)
    metrics.ORG_CONFIGS_PENDING.set(len(due))
    done = 0
    for candidate in due:
        try:
            if discover(database, settings, candidate) is not None:
                done += 1
        except Exception:
            log.exception("organization mirror %d: discovery failed", candidate.config_id)
    return done


def _config_audit(session: Session, config: OrgMirrorConfig, kind: str, message: str) -> None:
    """Quay's configuration-level entry: the robot as performer, no address, the source named."""
    audit.record(session, kind, performer_id=config.internal_robot_id, ip=None,
                 namespace=config.organization.username, message=message, org_mirror_config_id=config.id,
                 external_registry_url=config.external_registry_url, external_namespace=config.external_namespace)


def discover(database: Database, settings: Settings, candidate: status.DueConfig) -> Discovered | None:
    """One discovery of a due configuration; None when another worker (or a user) changed it first."""
    began = time.monotonic()
    with database.transaction() as session:
        token = status.claim(session, candidate)
        if token is None:
            return None
        config = session.get(OrgMirrorConfig, candidate.config_id, populate_existing=True)
        assert config is not None  # just claimed
        if candidate.sync_status == OrgMirrorStatus.CANCEL:
            cancelled = repo_sync.cancel(session, config.id)
            _config_audit(session, config, repo_sync.SYNC_FAILED, f"Sync cancelled: {cancelled} repos set to cancelled")
            status.release(session, config.id, token, OrgMirrorStatus.SUCCESS)
            _counted("cancel", began)
            log.info("organization mirror of %s: cancelled %d repositories", config.organization.username, cancelled)
            return Discovered("cancel")
        organization = config.organization.username
        _config_audit(session, config, repo_sync.SYNC_STARTED,
                      f"Starting repository discovery for organization '{organization}'")
        try:
            box = SecretBox(settings.secret_key)
            source = discovery.Source.of(config, box.decrypt(config.external_registry_username),
                                         box.decrypt(config.external_registry_password))
        except DecryptionFailed as error:
            return _failed(session, config, token,
                           f"Failed to decrypt source registry credentials: {str(error)[:ERROR_EXCERPT]}", began)
        patterns = list(config.repository_filters)
    log.info("organization mirror of %s: discovering %s", organization, source.base)
    try:
        names = discovery.list_repositories(source, settings)
    except discovery.DiscoveryFailed as error:
        with database.transaction() as session:
            config = session.get(OrgMirrorConfig, candidate.config_id)
            if config is None:  # deleted during the listing
                return None
            return _failed(session, config, token,
                           f"Failed to fetch repositories from source: {error.message[:ERROR_EXCERPT]}", began)
    kept = [name for name in names if matches(name, patterns)]
    with database.transaction() as session:
        config = session.get(OrgMirrorConfig, candidate.config_id)
        if config is None:  # deleted during the listing
            return None
        new = record(session, config, kept)
        if names:
            _set_aside(session, config, names, kept)
        repo_sync.create_mirrors(session, config)
        queued = repo_sync.schedule(session, config.id, sync_now=candidate.sync_status == OrgMirrorStatus.SYNC_NOW)
        _config_audit(session, config, repo_sync.SYNC_SUCCESS,
                      f"Discovery completed: {len(kept)} repos discovered, {new} new")
        if not status.release(session, config.id, token, OrgMirrorStatus.SUCCESS):
            log.info("organization mirror of %s: changed during its discovery; released by the next pass",
                     organization)
        if queued:
            events.sync_requested(session, None)  # the repositories are due: wake the workers
    _counted("success", began)
    metrics.ORG_REPOS_DISCOVERED.set(len(kept))
    metrics.ORG_REPOS_CREATED.inc(new)
    log.info("organization mirror of %s: %d upstream repositories, %d kept by the filters, %d new, %d queued",
             organization, len(names), len(kept), new, queued)
    return Discovered("success", len(names), len(kept), new, queued)


def _failed(session: Session, config: OrgMirrorConfig, token: str, message: str, began: float) -> Discovered:
    _config_audit(session, config, repo_sync.SYNC_FAILED, message)
    status.release(session, config.id, token, OrgMirrorStatus.FAIL)
    _counted("fail", began)
    log.warning("organization mirror of %s: %s", config.organization.username, message)
    return Discovered("fail")


def _counted(outcome: str, began: float) -> None:
    metrics.ORG_DISCOVERIES.labels(outcome).inc()
    metrics.ORG_DISCOVERY_SECONDS.observe(time.monotonic() - began)


def record(session: Session, config: OrgMirrorConfig, names: Iterable[str]) -> int:
    """Insert the names not tracked yet (NEVER_RUN, unscheduled) in chunks; how many were new. Existing rows
    are left as they are."""
    unique = list(dict.fromkeys(names))
    known: set[str] = set()
    for chunk in status.chunks(unique):
        known.update(session.scalars(select(OrgMirrorRepository.repository_name).where(
            OrgMirrorRepository.org_mirror_config_id == config.id, OrgMirrorRepository.repository_name.in_(chunk))))
    fresh = [name for name in unique if name not in known]
    now = utcnow()
    rows: list[dict[str, Any]] = [{
        "org_mirror_config_id": config.id, "repository_name": name, "discovery_date": now, "creation_date": now,
        "sync_status": OrgMirrorRepoStatus.NEVER_RUN, "sync_retries_remaining": MAX_SYNC_RETRIES,
        "sync_transaction_id": new_uuid(),
    } for name in fresh]
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(OrgMirrorRepository), rows[start:start + INSERT_CHUNK])
    return len(fresh)


def _set_aside(session: Session, config: OrgMirrorConfig, upstream: Sequence[str], kept: Sequence[str]) -> None:
    """Rows not kept this time become SKIP (gone upstream, or filtered out); SKIP rows kept again come back."""
    upstream_set, kept_set = set(upstream), set(kept)
    tracked = session.execute(select(OrgMirrorRepository.repository_name, OrgMirrorRepository.sync_status).where(
        OrgMirrorRepository.org_mirror_config_id == config.id)).all()
    gone = [name for name, _ in tracked if name not in upstream_set]
    filtered = [name for name, _ in tracked if name in upstream_set and name not in kept_set]
    back = [name for name, row_status in tracked if name in kept_set and row_status == OrgMirrorRepoStatus.SKIP]
    repo_sync.set_aside(session, config.id, gone, MSG_GONE)
    repo_sync.set_aside(session, config.id, filtered, MSG_FILTERED)
    repo_sync.take_back(session, config, back)
