"""Rules for repositories, their state and their permissions."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import delete as sql_delete
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from quaymirror import audit
from quaymirror.accounts import service as accounts
from quaymirror.accounts.models import User
from quaymirror.db import rows_changed
from quaymirror.errors import InvalidRequest, NotFound, detail_error
from quaymirror.mirror.models import RepoMirrorConfig
from quaymirror.orgmirror import guard
from quaymirror.repositories.models import ROLE_RANK, Repository, RepositoryPermission, RepositoryState

# Quay's repository name rule: a lowercase letter or digit, then letters, digits, . _ and -.
REPOSITORY_NAME_RE = re.compile(r"^[a-z0-9][._a-z0-9-]*$")


def validate_repository_name(name: str) -> None:
    if not (1 <= len(name) <= 255) or not REPOSITORY_NAME_RE.match(name):
        raise InvalidRequest("Invalid repository name")


def get(session: Session, namespace: User, name: str) -> Repository | None:
    return session.scalars(
        select(Repository).where(Repository.namespace_id == namespace.id, Repository.name == name)
    ).first()


@dataclass(frozen=True)
class RepositoryDescription:
    """A repository as one caller sees it."""

    namespace: str
    name: str
    kind: str
    description: str
    is_public: bool
    is_organization: bool
    state: RepositoryState
    can_write: bool
    can_admin: bool


def describe(repository: Repository, role: str | None) -> RepositoryDescription:
    """The repository for a caller whose own role is ``role`` (None: none, e.g. anonymous on a public one).

    Quay lets nobody write to a repository that is not NORMAL (read-only, mirrored), admins included.
    """
    state = RepositoryState(repository.state)
    can_write = role is not None and ROLE_RANK[role] >= ROLE_RANK["write"] and state == RepositoryState.NORMAL
    return RepositoryDescription(
        namespace=repository.namespace.username,
        name=repository.name,
        kind=repository.kind,
        description=repository.description,
        is_public=repository.visibility == "public",
        is_organization=repository.namespace.is_organization,
        state=state,
        can_write=can_write,
        can_admin=role == "admin",
    )


def check_new(session: Session, namespace: User, name: str) -> None:
    """What a new repository's name and namespace must pass (Quay's texts)."""
    validate_repository_name(name)
    if namespace.is_robot:
        raise InvalidRequest("Robots cannot own repositories")
    if get(session, namespace, name) is not None:
        raise InvalidRequest("Repository already exists")


def refuse_if_org_mirrored(session: Session, namespace: User) -> None:
    """An organization mirror owns every repository of its namespace: no other may be created there. The
    namespace's row is locked first, as the mirror's creation locks it, so one waits for the other and no
    repository appears in an organization whose mirror was just created."""
    session.execute(select(User.id).where(User.id == namespace.id).with_for_update())
    if guard.is_org_mirrored(session, namespace.id):
        raise InvalidRequest(guard.MSG_CREATE_REPO)


def refuse_state_change_if_org_mirrored(session: Session, repository: Repository) -> None:
    """The organization mirror decides its repositories' states; Quay answers a bare ``{"detail": ...}``."""
    if guard.is_org_mirrored(session, repository.namespace_id):
        raise detail_error(400, guard.MSG_CHANGE_STATE)


def create(session: Session, namespace: User, name: str, *, visibility: str = "private",
           description: str = "", state: RepositoryState = RepositoryState.NORMAL,
           performer: User | None = None) -> Repository:
    check_new(session, namespace, name)
    repository = Repository(namespace_id=namespace.id, namespace=namespace, name=name, visibility=visibility,
                            description=description or "", state=int(state))
    session.add(repository)
    session.flush()
    audit.record(session, "create_repo", repository_id=repository.id,
                 performer_id=performer.id if performer else None,
                 repo=name, namespace=namespace.username)
    return repository


def delete(session: Session, repository: Repository, performer: User | None = None) -> None:
    # Lock the mirror configuration before the repository row, in the order the mirror's PUT takes
    # them: the cascade would otherwise lock them the other way round and deadlock with a PUT.
    session.execute(select(RepoMirrorConfig.id).where(RepoMirrorConfig.repository_id == repository.id)
                    .with_for_update())
    session.execute(select(Repository.id).where(Repository.id == repository.id).with_for_update())
    audit.record(session, "delete_repo", performer_id=performer.id if performer else None,
                 repo=repository.name, namespace=repository.namespace.username)
    session.delete(repository)
    session.flush()


def change_state(session: Session, repository: Repository, state_name: str,
                 performer: User | None = None, ip: str | None = None) -> None:
    try:
        state = RepositoryState[state_name]
    except KeyError:
        raise InvalidRequest(f"{state_name} is not a valid Repository state.") from None
    repository.state = int(state)
    audit.record(session, "change_repo_state", repository_id=repository.id,
                 performer_id=performer.id if performer else None, ip=ip,
                 repo=repository.name, namespace=repository.namespace.username, state_changed=state.name)
    session.flush()


def grantee(session: Session, username: str) -> User:
    """The user or robot a permission is about; an organization or an unknown name is Quay's 400."""
    user = accounts.get_by_name(session, username)
    if user is None or user.is_organization:
        raise InvalidRequest(f"Invalid username: {username}")
    return user


def permission_of(session: Session, repository: Repository, user: User) -> RepositoryPermission | None:
    return session.scalars(
        select(RepositoryPermission).where(
            RepositoryPermission.repository_id == repository.id, RepositoryPermission.user_id == user.id
        )
    ).first()


def set_permission(session: Session, repository: Repository, user: User, role: str,
                   performer: User | None = None) -> RepositoryPermission:
    if role not in ROLE_RANK:
        raise InvalidRequest(f"Invalid role: {role}")
    if user.is_organization:
        raise InvalidRequest(f"Invalid username: {user.username}")
    if user.is_robot and user.robot_namespace_id != repository.namespace_id:
        raise InvalidRequest("Cannot add robot permission for robot in a different namespace")
    # One conditional UPDATE, then an INSERT when it matched no row: a DELETE of the same permission
    # committed between a read and an ORM update would make that update fail (StaleDataError). Two
    # concurrent INSERTs still collide on the unique constraint: the app answers that as a conflict.
    changed = rows_changed(session, update(RepositoryPermission)
                           .where(RepositoryPermission.repository_id == repository.id,
                                  RepositoryPermission.user_id == user.id)
                           .values(role=role)
                           .execution_options(synchronize_session="fetch"))
    if changed == 0:
        session.add(RepositoryPermission(repository_id=repository.id, user_id=user.id, role=role))
    audit.record(session, "change_repo_permission", repository_id=repository.id,
                 performer_id=performer.id if performer else None,
                 repo=repository.name, namespace=repository.namespace.username,
                 username=user.username, role=role)
    session.flush()
    permission = permission_of(session, repository, user)
    assert permission is not None  # written just above, in this transaction
    return permission


def ensure_at_least(session: Session, repository: Repository, user: User, role: str) -> None:
    """Raise ``user``'s direct role to ``role`` when it has less; never downgrade."""
    permission = permission_of(session, repository, user)
    if permission is None or ROLE_RANK[permission.role] < ROLE_RANK[role]:
        set_permission(session, repository, user, role)


def remove_permission(session: Session, repository: Repository, user: User) -> None:
    # One conditional DELETE: a concurrent DELETE of the same permission makes this one a 404, not an
    # ORM delete of a row that is already gone (StaleDataError).
    removed = rows_changed(session, sql_delete(RepositoryPermission)
                           .where(RepositoryPermission.repository_id == repository.id,
                                  RepositoryPermission.user_id == user.id)
                           .execution_options(synchronize_session="fetch"))
    if removed == 0:
        raise NotFound()


def permissions(session: Session, repository: Repository) -> list[RepositoryPermission]:
    return list(
        session.scalars(
            select(RepositoryPermission)
            .where(RepositoryPermission.repository_id == repository.id)
            .order_by(RepositoryPermission.id)
        )
    )


@dataclass(frozen=True)
class PermissionEntry:
    """One role on a repository as Quay lists it; None means the key is left out of the answer."""

    role: str
    name: str
    is_robot: bool
    avatar: accounts.Avatar | None
    is_org_member: bool | None


def _org_members(session: Session, repository: Repository) -> set[str] | None:
    """The members of the repository's organization; None in a user's namespace (no such key there)."""
    namespace = repository.namespace
    if not namespace.is_organization:
        return None
    return set(accounts.organization_member_names(session, namespace))


def _entry(permission: RepositoryPermission, org_members: set[str] | None) -> PermissionEntry:
    """``avatar`` only for people; ``is_org_member`` only in organizations."""
    user = permission.user
    return PermissionEntry(
        role=permission.role,
        name=user.username,
        is_robot=user.is_robot,
        avatar=None if user.is_robot else accounts.Avatar(user.username, "user"),
        is_org_member=accounts.org_member(user, org_members),
    )


def describe_permission(session: Session, repository: Repository, permission: RepositoryPermission) -> PermissionEntry:
    return _entry(permission, _org_members(session, repository))


def describe_permissions(session: Session, repository: Repository) -> dict[str, PermissionEntry]:
    """Every user's and robot's role on the repository, by name, oldest grant first."""
    members = _org_members(session, repository)
    return {p.user.username: _entry(p, members) for p in permissions(session, repository)}
