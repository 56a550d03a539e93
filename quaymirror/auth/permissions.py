"""Quay's permission rules: a caller's role on a repository, capped by the token's scopes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, bindparam, false, select
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value

from quaymirror.accounts.models import OrganizationMember, User
from quaymirror.auth import scopes, tokens
from quaymirror.auth.tokens import Caller, Principal
from quaymirror.errors import AuthenticationRequired, Forbidden, NotFound
from quaymirror.repositories.models import ROLE_RANK, ROLES, Repository, RepositoryPermission, answers_missing


def namespace_by_name(session: Session, name: str) -> User | None:
    """A user or organization namespace (robots are not namespaces)."""
    return session.scalars(select(User).where(User.username == name, User.is_robot.is_(False))).first()


def administers(user_id: int, user_is_robot: bool, namespace_id: int, namespace_is_org: bool,
                org_role: str | None) -> bool:
    """The rule of namespace administration, from values: the owner of a user namespace and the admins of
    an organization (``org_role``: the user's membership role in it) administer all of it; robots never do."""
    if user_is_robot:
        return False
    if namespace_is_org:
        return org_role == "admin"
    return user_id == namespace_id


def _org_role(session: Session, user: User, namespace: User) -> str | None:
    """The user's membership role in an organization namespace; None where :func:`administers` ignores it."""
    if not namespace.is_organization or user.is_robot:
        return None
    return session.scalars(
        select(OrganizationMember.role).where(
            OrganizationMember.organization_id == namespace.id, OrganizationMember.user_id == user.id
        )
    ).first()


def is_namespace_admin(session: Session, user: User, namespace: User) -> bool:
    """:func:`administers` on loaded rows."""
    return administers(user.id, user.is_robot, namespace.id, namespace.is_organization,
                       _org_role(session, user, namespace))


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


def _cap(role: str | None, caller: Principal) -> str | None:
    """Cap a role by the highest repository role the token's scopes allow."""
    allowed = [scopes.SCOPE_ROLE[s] for s in caller.scopes if s in scopes.SCOPE_ROLE]
    if role is None or not allowed:
        return None
    cap = max(allowed, key=ROLE_RANK.__getitem__)
    return role if ROLE_RANK[role] <= ROLE_RANK[cap] else cap


def role_from_values(caller: Principal, *, namespace_id: int, namespace_is_org: bool, org_role: str | None,
                     has_repository: bool, permission_role: str | None) -> str | None:
    """The caller's role on a repository, from values: admin for whoever administers the namespace, else
    the caller's direct permission (``permission_role``) on the repository when it exists, capped by the
    token's scopes. ``org_role``: the caller's membership role in the namespace."""
    if administers(caller.user_id, caller.is_robot, namespace_id, namespace_is_org, org_role):
        uncapped: str | None = "admin"
    elif not has_repository:
        uncapped = None
    else:
        uncapped = permission_role
    return _cap(uncapped, caller)


def repository_role(session: Session, caller: Caller, namespace: User, repository: Repository | None) -> str | None:
    """:func:`role_from_values` on loaded rows, each role read only when it can matter."""
    org_role = _org_role(session, caller.user, namespace)
    permission_role = None
    if repository is not None and not administers(caller.user_id, caller.is_robot, namespace.id,
                                                  namespace.is_organization, org_role):
        permission_role = session.scalars(
            select(RepositoryPermission.role).where(
                RepositoryPermission.repository_id == repository.id, RepositoryPermission.user_id == caller.user_id
            )
        ).first()
    return role_from_values(caller, namespace_id=namespace.id, namespace_is_org=namespace.is_organization,
                            org_role=org_role, has_repository=repository is not None, permission_role=permission_role)


def superuser_passes(caller: Principal, full_access: bool) -> bool:
    """Superusers act as admins only with full access switched on and a ``super:user`` token."""
    return full_access and caller.is_superuser and caller.has_scope(scopes.SUPERUSER)


def find_repository(session: Session, namespace: User, name: str) -> Repository | None:
    return session.scalars(
        select(Repository).where(Repository.namespace_id == namespace.id, Repository.name == name)
    ).first()


_NS = aliased(User, name="ns")
NS = _NS  # the namespace alias of access_query(), for callers selecting its columns

# The namespace, the repository and the caller's own org role and direct permission, in one query
# (namespace and repository may each be missing; the unique constraints give at most one row).
ACCESS_ENTITIES = (_NS, Repository, OrganizationMember.role, RepositoryPermission.role)


def access_query(*extra: Any, columns: tuple = ACCESS_ENTITIES, authenticate: bool = False) -> Select:
    """``SELECT ns, repository, org role, permission role [, extra]`` for one ns/repo and one caller.

    Bind parameters: ``ns`` (namespace name), ``repo`` (repository name), ``uid`` (caller id, -1
    when anonymous). ``extra`` entities must be outer-joined by the caller of this function;
    ``columns`` replaces the first four (e.g. plain columns of ``NS``, ``Repository`` and the roles).
    ``authenticate``: the caller is the bearer token whose hash is bind parameter ``digest`` instead
    of ``uid``, its token and user selected too (``tokens.caller_columns``, read by ``tokens.caller_from_values``).
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
    caller: Principal | None,
    role: str,
    *,
    namespace_id: int | None,
    namespace_is_org: bool,
    repository_visibility: str | None,
    org_role: str | None,
    permission_role: str | None,
    superuser_full_access: bool,
    public_read: bool,
) -> None:
    """Quay's rule for a role on a repository, from values (raise 401/403, else pass): the one decision of
    the ORM path and of hot reads that select these values themselves.

    ``namespace_id`` None: no such namespace; ``repository_visibility`` None: no such repository;
    ``org_role`` is the caller's membership role in the namespace, ``permission_role`` the caller's direct
    permission on the repository (None when absent).
    """
    if role == "read" and public_read and repository_visibility == "public":
        return
    if caller is None:
        raise AuthenticationRequired()
    if superuser_passes(caller, superuser_full_access):
        return
    if namespace_id is None:
        raise Forbidden()
    granted = role_from_values(caller, namespace_id=namespace_id, namespace_is_org=namespace_is_org,
                               org_role=org_role, has_repository=repository_visibility is not None,
                               permission_role=permission_role)
    if granted is None or ROLE_RANK[granted] < ROLE_RANK[role]:
        raise Forbidden()


@dataclass(frozen=True)
class RepoAccess:
    """What one query says about the caller and one repository: the namespace and the repository (either may
    be missing), the caller's role in the namespace's organization and their direct permission."""

    caller: Caller | None
    namespace: User | None
    repository: Repository | None
    org_role: str | None
    permission_role: str | None
    superuser_full_access: bool

    def check(self, role: str, *, public_read: bool) -> None:
        """Quay's rule (:func:`decide_repo_role`): 401 anonymous, 403 without ``role`` (a missing namespace
        looks forbidden too); a missing repository in a namespace the caller administers passes, so the
        resource answers 404."""
        namespace, repository = self.namespace, self.repository
        decide_repo_role(self.caller, role, namespace_id=namespace.id if namespace is not None else None,
                         namespace_is_org=namespace is not None and namespace.is_organization,
                         repository_visibility=repository.visibility if repository is not None else None,
                         org_role=self.org_role, permission_role=self.permission_role,
                         superuser_full_access=self.superuser_full_access, public_read=public_read)

    def holds(self, role: str) -> bool:
        """Whether the caller has ``role`` themselves (a public repository's visibility gives no role)."""
        try:
            self.check(role, public_read=False)
        except (AuthenticationRequired, Forbidden):
            return False
        return True

    @property
    def role(self) -> str | None:
        """The caller's highest role on the repository, by the same rule as the check."""
        return next((role for role in reversed(ROLES) if self.holds(role)), None)

    @property
    def performer(self) -> User | None:
        """Who acts, for the audit log."""
        return self.caller.user if self.caller is not None else None

    def require(self) -> Repository:
        """The repository, or 404 (also for one marked for deletion): asked after the body was read, so
        Quay's order holds (auth, body, 404)."""
        if self.repository is None or answers_missing(self.repository.state):
            raise NotFound()
        return self.repository


def repo_access(session: Session, caller: Caller | None, namespace_name: str, repo_name: str, *,
                superuser_full_access: bool) -> RepoAccess:
    """The caller's access to ``namespace_name/repo_name``, in one query (checked with ``.check``)."""
    row = session.execute(_ACCESS, access_params(caller, namespace_name, repo_name)).first()
    namespace, repository, org_role, permission_role = row if row is not None else (None, None, None, None)
    if repository is not None:
        set_committed_value(repository, "namespace", namespace)  # the row has it: no lazy load later
    return RepoAccess(caller, namespace, repository, org_role, permission_role, superuser_full_access)


def may_create_repository(session: Session, caller: Caller, namespace: User | None, *,
                          superuser_full_access: bool) -> bool:
    """Quay's CreateRepositoryPermission under its token rules, which cap a token's roles per kind of resource
    rather than by scope name alone: ``repo:create`` lets an administrator of the namespace create there, and an
    ``org:admin`` token carries its owner's role in the organization, whose admins may create repositories."""
    if superuser_passes(caller, superuser_full_access):
        return True
    if namespace is None or not is_namespace_admin(session, caller.user, namespace):
        return False
    return caller.has_scope(scopes.REPO_CREATE) or (namespace.is_organization and caller.has_scope(scopes.ORG_ADMIN))


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
