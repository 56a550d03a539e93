"""What other domains ask about organization mirroring, and Quay's texts for their refusals: a namespace with
an organization mirror (enabled or not) is the mirror's, so its repositories are not created, re-stated or
mirrored one by one, and the mirror's robot is not deleted.

Kept apart from :mod:`quaymirror.orgmirror.service` so that the repository, mirror and account services can
ask without importing the organization mirror's rules (which import theirs).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from quaymirror.orgmirror.models import OrgMirrorConfig

MSG_REPO_MIRROR = ("Repository mirror configuration cannot be managed when organization-level mirroring is "
                   "configured")
MSG_CREATE_REPO = "Cannot create repository: organization is managed by organization-level mirroring"
MSG_CHANGE_STATE = ("Repository state changes are not allowed in an organization managed by organization-level "
                    "mirroring")


def is_org_mirrored(session: Session, namespace_id: int) -> bool:
    """Whether the namespace has an organization mirror configuration."""
    return session.scalars(select(OrgMirrorConfig.id).where(OrgMirrorConfig.organization_id == namespace_id)
                           ).first() is not None


def robot_in_use(session: Session, robot_id: int) -> bool:
    """Whether an organization mirror runs as this robot (Quay forgets to ask before deleting one)."""
    return session.scalars(select(OrgMirrorConfig.id).where(OrgMirrorConfig.internal_robot_id == robot_id)
                           ).first() is not None
