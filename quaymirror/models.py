"""Imports every domain's models so the metadata (and alembic) sees all tables."""

from quaymirror.accounts.models import OrganizationMember, User
from quaymirror.audit import LogEntry
from quaymirror.auth.models import AccessToken
from quaymirror.db import Base
from quaymirror.mirror.models import (  # noqa: F401
    MirrorOwnedTag,
    MirrorSyncRun,
    MirrorSyncTag,
    RepoMirrorConfig,
    RepoMirrorRule,
)
from quaymirror.notifications.models import NotificationAttempt, NotificationDelivery, RepositoryNotification
from quaymirror.orgmirror.models import OrgMirrorConfig, OrgMirrorRepository
from quaymirror.repositories.models import Repository, RepositoryPermission

__all__ = [
    "AccessToken",
    "Base",
    "LogEntry",
    "NotificationAttempt",
    "NotificationDelivery",
    "OrgMirrorConfig",
    "OrgMirrorRepository",
    "OrganizationMember",
    "RepoMirrorConfig",
    "RepoMirrorRule",
    "Repository",
    "RepositoryNotification",
    "RepositoryPermission",
    "User",
]
