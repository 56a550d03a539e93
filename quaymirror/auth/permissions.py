"""Quay's permission rules: a caller's role on a repository, capped by the token's scopes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, bindparam, false, select
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value

from quaymirror.accounts.models import OrganizationMember, User
from quaymirror.auth import scopes, tokens
from quaymirror.auth.tokens import Caller
from quaymirror.errors import AuthenticationRequired, Forbidden
from quaymirror.repositories.models import ROLE_RANK, Repository, RepositoryPermission


def namespace_by_name(session: Session, name: str) -> User | None:
    """A user or organization namespace (robots are not namespaces)."""
    return session.scalars(select(User).where(User.username == name, User.is_robot.is_(False))).first()


def is_namespace_admin(session: Session, user: User, namespace: User) -> bool:
    """Owners of a user namespace and admins of an organization administer all of it."""
    if user.is_robot:
        return False
    if user.id == namespace.id and not namespace.is_organization:
        return True
    if namespace.is_organization:
        member = session.scalars(
            select(OrganizationMember).where(
                OrganizationMember.organization_id == namespace.id,
                OrganizationMember.user_id == user.id,
            )
        ).first()
        return member is not None and member.role == "admin"
    return False


def is_namespace_member(session: Session, user: User, namespace: User) -> bool:
    if user.id == namespace.id or is_namespace_admin(session, user, namespace):
        return True
    if user.is_robot:
        return user.robot_namespace_id == namespace.id
    return session.scalars(
        select(OrganizationMember.id).where(
            OrganizationMember.organization_id == namespace.id, OrganizationMember.user_id == user.id
        )
    ).first() is not None


def _cap(role: str | None, caller: Caller) -> str | None:
    """Cap a role by the highest repository role the token's scopes allow."""
    allowed = [scopes.SCOPE_ROLE[s] for s in caller.scopes if s in scopes.SCOPE_ROLE]
    if role is None or not allowed:
        return None
    cap = max(allowed, key=ROLE_RANK.__getitem__)
    return role if ROLE_RANK[role] <= ROLE_RANK[cap] else cap


def uncapped_role(session: Session, user: User, namespace: User, repository: Repository | None) -> str | None:
    if is_namespace_admin(session, user, namespace):
        return "admin"
    if repository is None:
        return None
    permission = session.scalars(
        select(RepositoryPermission).where(
            RepositoryPermission.repository_id == repository.id, RepositoryPermission.user_id == user.id
        )
    ).first()
    return permission.role if permission else None


def repository_role(session: Session, caller: Caller, namespace: User, repository: Repository | None) -> str | None:
    return _cap(uncapped_role(session, caller.user, namespace, repository), caller)


def superuser_passes(caller: Caller, full_access: bool) -> bool:
    """Superusers act as admins only with full access switched on and a ``super:user`` token."""
    return full_access and caller.user.is_superuser and caller.has_scope(scopes.SUPERUSER)


def find_repository(session: Session, namespace: User, name: str) -> Repository | None:
    return session.scalars(
        select(Repository).where(Repository.namespace_id == namespace.id, Repository.name == name)
    ).first()


_NS = aliased(User, name="ns")
NS = _NS  # the namespace alias of access_query(), for callers selecting its columns

# The namespace, the repository and the caller's own org role and direct permission, in one query
# (namespace and repository may each be missing; the unique constraints give at most one row).
ACCESS_ENTITIES = (_NS, Repository, OrganizationMember.role, RepositoryPermission.role)


def access_query(*extra: Any, columns: tuple = ACCESS_ENTITIES, authenticate: bool = False):
    """``SELECT ns, repository, org role, permission role [, extra]`` for one ns/repo and one caller.

    Bind parameters: ``ns`` (namespace name), ``repo`` (repository name), ``uid`` (caller id, -1
    when anonymous). ``extra`` entities must be outer-joined by the caller of this function;
    ``columns`` replaces the first four (e.g. plain columns of ``NS``, ``Repository`` and the roles).
    ``authenticate``: the caller is the bearer token whose hash is bind parameter ``digest`` instead
    of ``uid``, its token and user selected too (``tokens.caller_columns``, read by ``tokens.token_in``).
    """
    uid = tokens.CALLER_ID if authenticate else bindparam("uid")
    query = select(*columns, *(tokens.caller_columns() if authenticate else ()), *extra).select_from(_NS)
    if authenticate:
        query = tokens.join_caller(query)
    return (
        query
        .outerjoin(Repository, and_(Repository.namespace_id == _NS.id, Repository.name == bindparam("repo")))
        .outerjoin(OrganizationMember, and_(OrganizationMember.organization_id == _NS.id,
                                            OrganizationMember.user_id == uid))
        .outerjoin(RepositoryPermission, and_(RepositoryPermission.repository_id == Repository.id,
                                              RepositoryPermission.user_id == uid))
        .where(_NS.username == bindparam("ns"), _NS.is_robot == false())
        .limit(1)
    )


_ACCESS = access_query()


def access_params(caller: Caller | None, namespace_name: str, repo_name: str) -> dict[str, Any]:
    return {"ns": namespace_name, "repo": repo_name, "uid": caller.user.id if caller is not None else -1}


def decide_repo_role(
    caller: Caller | None,
    namespace: User | None,
    repository: Repository | None,
    org_role: str | None,
    permission_role: str | None,
    role: str,
    *,
    superuser_full_access: bool,
    public_read: bool,
) -> None:
    """The rules of :func:`require_repo_role` on already loaded rows (raise 401/403, else pass).

    ``org_role`` is the caller's membership role in ``namespace``, ``permission_role`` the caller's
    direct permission on ``repository`` (None when absent).
    """
    if role == "read" and public_read and repository is not None and repository.visibility == "public":
        return
    if caller is None:
        raise AuthenticationRequired()
    if superuser_passes(caller, superuser_full_access):
        return
    if namespace is None:
        raise Forbidden()
    user = caller.user
    if not user.is_robot and (
        (user.id == namespace.id and not namespace.is_organization)
        or (namespace.is_organization and org_role == "admin")
    ):
        uncapped = "admin"  # is_namespace_admin
    elif repository is None:
        uncapped = None
    else:
        uncapped = permission_role
    granted = _cap(uncapped, caller)
    if granted is None or ROLE_RANK[granted] < ROLE_RANK[role]:
        raise Forbidden()


def require_repo_role(
    session: Session,
    caller: Caller | None,
    namespace_name: str,
    repo_name: str,
    role: str,
    *,
    superuser_full_access: bool = False,
    public_read: bool = True,
) -> tuple[User | None, Repository | None]:
    """Check ``role`` on ns/repo the way Quay does; return the namespace and repository (either may be None).

    Anonymous → 401; authenticated without the role → 403; a missing namespace
    is indistinguishable from a forbidden one (403); a missing repository in a
    namespace the caller administers passes, so the handler answers 404.
    """
    row = session.execute(_ACCESS, access_params(caller, namespace_name, repo_name)).first()
    namespace, repository, org_role, permission_role = row if row is not None else (None, None, None, None)
    if repository is not None:
        set_committed_value(repository, "namespace", namespace)
    decide_repo_role(caller, namespace, repository, org_role, permission_role, role,
                     superuser_full_access=superuser_full_access, public_read=public_read)
    return namespace, repository


def require_namespace_admin(
    session: Session, caller: Caller | None, namespace_name: str, scope: str, *, superuser_full_access: bool = False
) -> User | None:
    """Admin of a namespace with a given scope (robots, org creation of repos, permissions)."""
    if caller is None:
        raise AuthenticationRequired()
    namespace = namespace_by_name(session, namespace_name)
    if superuser_passes(caller, superuser_full_access):
        return namespace
    if namespace is None or not caller.has_scope(scope) or not is_namespace_admin(session, caller.user, namespace):
        raise Forbidden()
    return namespace
