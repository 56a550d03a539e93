"""Rules for users, organizations and robots."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.orm import Session

from quaymirror.accounts.models import OrganizationMember, User
from quaymirror.auth import scopes
from quaymirror.auth.permissions import is_namespace_admin, is_namespace_member, may_create_repository
from quaymirror.auth.tokens import Caller
from quaymirror.errors import InvalidRequest, NotFound, model_error
from quaymirror.mirror.models import RepoMirrorConfig
from quaymirror.orgmirror import guard
from quaymirror.security.secrets import DecryptionFailed, SecretBox

log = logging.getLogger(__name__)

# Quay's namespace rule: lowercase words joined by . _ or -, 2 to 255 characters.
NAMESPACE_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
ROBOT_SHORT_RE = re.compile(r"^[a-z][a-z0-9_]{1,254}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
# The ``user.username`` column; a robot's full name ``ns+short`` must fit in it too.
USERNAME_MAX = 255
ENTITY_LIMIT = 10


def validate_namespace_name(name: str) -> None:
    if not (2 <= len(name) <= 255) or not NAMESPACE_RE.match(name):
        raise InvalidRequest(
            "Invalid namespace name: use 2 to 255 lowercase letters, digits, and . _ - between them"
        )


def validate_email(email: str | None) -> None:
    if email is not None and (len(email) > 255 or not EMAIL_RE.match(email)):
        raise InvalidRequest("Invalid email address")


def get_by_name(session: Session, name: str) -> User | None:
    return session.scalars(select(User).where(User.username == name)).first()


def _require_free(session: Session, name: str) -> None:
    if get_by_name(session, name) is not None:
        raise InvalidRequest("A user or organization with this name already exists")


def create_user(session: Session, username: str, email: str | None = None, superuser: bool = False) -> User:
    validate_namespace_name(username)
    validate_email(email)
    _require_free(session, username)
    user = User(username=username, email=email, is_superuser=superuser)
    session.add(user)
    session.flush()
    return user


def create_organization(session: Session, name: str, owner: User, email: str | None = None) -> User:
    validate_namespace_name(name)
    validate_email(email)
    if owner.is_robot or owner.is_organization:
        raise InvalidRequest("An organization must be owned by a user")
    _require_free(session, name)
    org = User(username=name, email=email, is_organization=True)
    session.add(org)
    session.flush()
    session.add(OrganizationMember(organization_id=org.id, user_id=owner.id, role="admin"))
    session.flush()
    return org


def organization(session: Session, name: str) -> User:
    org = session.scalars(select(User).where(User.username == name, User.is_organization.is_(True))).first()
    if org is None:
        raise NotFound()
    return org


def update_organization(session: Session, org: User, data: dict[str, Any]) -> None:
    """Quay's organization PUT: the keys sent; only the e-mail is kept (see ``schemas.UpdateOrganization``)."""
    if "email" in data:
        validate_email(data["email"])
        org.email = data["email"]
        session.flush()


def delete_organization(session: Session, org: User) -> None:
    """Delete the organization now (Quay marks it and collects it later). The database's cascades take
    everything it owns with it: memberships, robots, tokens, repositories with their mirrors, and (as Quay
    3.18 does first) its organization mirror and the repositories that mirror discovered."""
    session.execute(sql_delete(User).where(User.id == org.id, User.is_organization.is_(True)))
    session.expunge(org)


def organization_member_names(session: Session, org: User) -> list[str]:
    return list(
        session.scalars(
            select(User.username)
            .join(OrganizationMember, OrganizationMember.user_id == User.id)
            .where(OrganizationMember.organization_id == org.id)
            .order_by(User.username)
        )
    )


def organizations_of(session: Session, user: User) -> list[User]:
    return list(
        session.scalars(
            select(User)
            .join(OrganizationMember, OrganizationMember.organization_id == User.id)
            .where(OrganizationMember.user_id == user.id)
            .order_by(User.username)
        )
    )


def robot_name(namespace: User, shortname: str) -> str:
    return f"{namespace.username}+{shortname}"


def get_robot(session: Session, full_name: str) -> User | None:
    return session.scalars(select(User).where(User.username == full_name, User.is_robot.is_(True))).first()


def robot_of(session: Session, namespace: User, shortname: str) -> User:
    """The robot ``ns+short``, or Quay's 400 ``{"message": ...}`` when there is none."""
    robot = get_robot(session, robot_name(namespace, shortname))
    if robot is None:
        raise model_error("Could not find robot with specified username")
    return robot


def create_robot(session: Session, box: SecretBox, namespace: User, shortname: str,
                 description: str = "") -> tuple[User, str]:
    """Create ``ns+short`` and return it with its token (the token is also kept, encrypted)."""
    if namespace.is_robot:
        raise InvalidRequest("Robots belong to a user or an organization")
    if not ROBOT_SHORT_RE.match(shortname):
        raise InvalidRequest(
            "Invalid robot account shortname: start with a lowercase letter, then 1 to 254 of a-z 0-9 _"
        )
    if len(description) > 1024:
        raise InvalidRequest("description: Longer than maximum length 1024.")
    full = robot_name(namespace, shortname)
    if len(full) > USERNAME_MAX:
        raise InvalidRequest(f"Invalid robot account shortname: namespace+shortname is longer than {USERNAME_MAX} "
                             "characters")
    if get_by_name(session, full) is not None:
        raise model_error(f"Existing robot with name: {full}")
    token = secrets.token_urlsafe(48)
    robot = User(username=full, is_robot=True, robot_namespace_id=namespace.id, description=description,
                 robot_token=box.encrypt(token))
    session.add(robot)
    session.flush()
    return robot, token


def delete_robot(session: Session, robot: User) -> None:
    """Refused while a mirror runs as the robot: a repository's, or (unlike Quay, which forgets to ask and then
    loses the configuration or swallows the failure) an organization's."""
    in_use = session.scalars(select(RepoMirrorConfig.id).where(RepoMirrorConfig.internal_robot_id == robot.id)).first()
    if in_use is not None or guard.robot_in_use(session, robot.id):
        raise InvalidRequest("Robot is being used by a mirror")
    session.delete(robot)
    session.flush()


@dataclass(frozen=True)
class RobotAccount:
    """A robot as Quay shows it to its namespace's admins: with its token, or None when the instance's key
    cannot open the stored one."""

    name: str
    created: datetime
    description: str
    token: str | None


def robot_account(box: SecretBox, robot: User) -> RobotAccount:
    try:
        token = box.decrypt(robot.robot_token)
    except DecryptionFailed:
        log.warning("the token of robot %s cannot be decrypted with this instance's secret key", robot.username)
        token = None
    return RobotAccount(robot.username, robot.created, robot.description, token)


def _starts_with(prefix: str) -> ColumnElement[bool]:
    """``username LIKE 'prefix%'`` with LIKE's wildcards in ``prefix`` taken literally."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return User.username.like(f"{escaped}%", escape="\\")


def search_entities(session: Session, prefix: str, robot_namespace: User | None = None,
                    limit: int = ENTITY_LIMIT) -> list[User]:
    """Quay's user search: users whose name starts with ``prefix`` (never organizations), plus the
    robots ``<robot_namespace>+<prefix>...`` when the caller may see that namespace's robots.

    An exact match always comes first, so a long list of longer names cannot hide it.
    """
    plain_user = User.is_organization.is_(False) & User.is_robot.is_(False)
    condition = _starts_with(prefix) & plain_user
    if robot_namespace is not None:
        condition = condition | (
            _starts_with(robot_name(robot_namespace, prefix))
            & User.is_robot.is_(True)
            & (User.robot_namespace_id == robot_namespace.id)
        )
    found = list(session.scalars(select(User).where(condition).order_by(User.username).limit(limit)))
    exact = [u for u in found if u.username == prefix]
    if not exact:
        exact = list(session.scalars(select(User).where(User.username == prefix, plain_user)))
    return (exact + [u for u in found if u.username != prefix])[:limit]


@dataclass(frozen=True)
class Profile:
    """The token's owner and the organizations they belong to (GET /user/)."""

    user: User
    organizations: list[User]


def profile(session: Session, user: User) -> Profile:
    return Profile(user, organizations_of(session, user))


@dataclass(frozen=True)
class OrganizationAccess:
    """An organization as one caller sees it: its e-mail only for its admins."""

    name: str
    email: str
    is_admin: bool
    is_member: bool
    can_create_repo: bool

    @property
    def is_org_admin(self) -> bool:
        """Quay answers the same right under both names."""
        return self.is_admin


def _sees_as_admin(session: Session, caller: Caller, org: User) -> bool:
    """Quay's AdministerOrganizationPermission: an org admin whose token carries org:admin."""
    return caller.has_scope(scopes.ORG_ADMIN) and is_namespace_admin(session, caller.user, org)


def describe_organization(session: Session, caller: Caller, org: User) -> OrganizationAccess:
    is_admin = _sees_as_admin(session, caller, org)
    return OrganizationAccess(
        name=org.username,
        email=(org.email or "") if is_admin else "",
        is_admin=is_admin,
        is_member=is_namespace_member(session, caller.user, org),
        # The rule POST /api/v1/repository applies (a superuser's full access aside, which is not the org's).
        can_create_repo=may_create_repository(session, caller, org, superuser_full_access=False),
    )


class Avatar(NamedTuple):
    """Quay's avatar of an entity: its name and kind (``user``, ``robot`` or ``org``)."""

    name: str
    kind: str


@dataclass(frozen=True)
class Entity:
    """One match of the entity search; None means the key is left out of Quay's answer."""

    name: str
    kind: str
    avatar: Avatar
    is_robot: bool | None = None
    is_org_member: bool | None = None


def robot_namespace(session: Session, caller: Caller, namespace: User | None) -> User | None:
    """The namespace whose robots the caller may see in a search: an organization they belong to, or their
    own user namespace with a user:admin token."""
    if namespace is None or namespace.is_robot:
        return None
    if namespace.is_organization:
        return namespace if is_namespace_member(session, caller.user, namespace) else None
    return namespace if namespace.id == caller.user.id and caller.has_scope(scopes.USER_ADMIN) else None


def entities(session: Session, caller: Caller, prefix: str, namespace_name: str, *,
             include_orgs: bool) -> list[Entity]:
    """Quay's entity search: users matching ``prefix``, plus ``namespace_name``'s robots for those who may see
    them and (``include_orgs``) the organization itself for its admins (with an org:admin token)."""
    prefix = "".join(prefix.split()).lower()
    namespace = robot_namespace(session, caller, get_by_name(session, namespace_name))
    org = namespace if namespace is not None and namespace.is_organization else None
    found: list[Entity] = []
    if org is not None and include_orgs and _sees_as_admin(session, caller, org) and org.username.startswith(prefix):
        found.append(Entity(org.username, "org", Avatar(org.username, "org"), is_org_member=True))
    members = set(organization_member_names(session, org)) if org is not None else None
    return found + [_user_entity(user, members) for user in search_entities(session, prefix, namespace)]


def _user_entity(user: User, org_members: set[str] | None) -> Entity:
    return Entity(user.username, "user", Avatar(user.username, "robot" if user.is_robot else "user"),
                  is_robot=user.is_robot, is_org_member=org_member(user, org_members))


def org_member(user: User, org_members: set[str] | None) -> bool | None:
    """Quay's ``is_org_member`` of a user or robot: None outside an organization (``org_members`` None);
    inside, whether it is a member, robots always."""
    return None if org_members is None else (user.is_robot or user.username in org_members)
