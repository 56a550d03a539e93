"""GET /mirror, the one hot read: its statement, its row, the authorisation decision and the body.

GET /mirror is the endpoint clients poll. Its answer is the ORM path's (``web.authorize_repo`` +
``RepoAccess.require`` + ``service.describe_config`` + ``ViewMirrorConfig``), which stays the
specification, at a fraction of the cost:

* one statement authenticates the bearer token (by its hash) and reads the namespace, the repository,
  the caller's roles, the configuration, its rule and its robot, as plain values (``MirrorViewRow``);
* it runs prepared on the read pool's DBAPI connection (``readcache.Prepared``) and, while the database
  is unchanged, not at all (``readcache.ReadCache``, behind ``web.read_first``);
* the body is built once per row read and kept with it (``Kept.derive``).

Both paths decide with the same pure functions, so they cannot drift: the caller's role by
``permissions.decide_repo_role``, the caller from the row's values by ``tokens.caller_from_values`` (the ORM path:
``tokens.current_caller``), the body by ``service.describe_values`` and ``schemas.dump_view``.
tests/mirror/test_view_read.py holds the two paths equal, caller kind by caller kind.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import and_
from sqlalchemy.orm import aliased

from quaymirror import web
from quaymirror.accounts.models import OrganizationMember, User
from quaymirror.auth import tokens
from quaymirror.auth.permissions import NS, access_query, decide_repo_role
from quaymirror.errors import NotFound, dumps
from quaymirror.mirror import service
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorRule
from quaymirror.mirror.schemas import dump_view
from quaymirror.readcache import Prepared
from quaymirror.repositories.models import Repository, RepositoryPermission, answers_missing


class MirrorViewRow(NamedTuple):
    """A row of ``VIEW``: the statement's labels, in its order.

    The configuration's columns (``is_enabled`` to ``rule_value_json``) come from outer joins: they are
    NULL exactly when ``config_id`` is, and are typed as their columns because nothing reads them before
    ``config_id`` was checked.
    """

    # Who may read (``permissions.access_query``): the namespace is always there (else no row).
    ns_id: int
    ns_is_org: bool
    repo_visibility: str | None  # None: no such repository
    repo_state: int | None
    org_role: str | None
    permission_role: str | None
    # The caller (``tokens.caller_columns``).
    caller_token_hash: str | None
    caller_scope: str | None
    caller_expires_at: datetime | None
    caller_id: int | None
    caller_is_robot: bool | None
    caller_is_superuser: bool | None
    # The configuration, its root rule and its robot.
    config_id: int | None  # None: the repository has no configuration
    is_enabled: bool
    mirror_type: int
    external_reference: str
    external_registry_username: str | None
    external_registry_config_json: str | None
    architecture_filter_json: str | None
    sync_interval: int
    sync_start_date: datetime | None
    sync_expiration_date: datetime | None
    sync_retries_remaining: int
    sync_status: int
    skopeo_timeout: int
    rule_value_json: str
    robot_username: str | None


_CONFIG_COLUMNS = (
    "is_enabled", "mirror_type", "external_reference", "external_registry_username",
    "external_registry_config_json", "architecture_filter_json", "sync_interval", "sync_start_date",
    "sync_expiration_date", "sync_retries_remaining", "sync_status", "skopeo_timeout",
)
_ROBOT = aliased(User, name="robot")
VIEW = Prepared(
    "quaymirror_mirror_view",
    access_query(
        RepoMirrorConfig.id.label("config_id"),
        *(getattr(RepoMirrorConfig, name).label(name) for name in _CONFIG_COLUMNS),
        RepoMirrorRule.rule_value_json.label("rule_value_json"),
        _ROBOT.username.label("robot_username"),
        authenticate=True,
        columns=(
            NS.id.label("ns_id"), NS.is_organization.label("ns_is_org"),
            Repository.visibility.label("repo_visibility"), Repository.state.label("repo_state"),
            OrganizationMember.role.label("org_role"), RepositoryPermission.role.label("permission_role"),
        ),
    )
    # An organization mirror's own configuration of the repository is not a repository mirror (service.find).
    .outerjoin(RepoMirrorConfig, and_(RepoMirrorConfig.repository_id == Repository.id,
                                      RepoMirrorConfig.org_mirror_repository_id.is_(None)))
    .outerjoin(RepoMirrorRule, RepoMirrorRule.id == RepoMirrorConfig.root_rule_id)
    .outerjoin(_ROBOT, _ROBOT.id == RepoMirrorConfig.internal_robot_id),
    MirrorViewRow,
)


def read_view(namespace: str, repository: str) -> str:
    """GET /mirror's JSON body for the request's caller; 401/403/404 raised as the ORM path raises them.

    Only when the namespace does not exist (no row, so no token read either) is the token looked up on
    its own, to tell 401 from 403 (and a superuser's 404).
    """
    full_access = web.settings().superusers_full_access
    kept = web.read_first(VIEW, {"ns": namespace, "repo": repository, "digest": tokens.request_digest()})
    if kept is None:
        decide_repo_role(web.caller(required=False), "admin", namespace_id=None, namespace_is_org=False,
                         repository_visibility=None, org_role=None, permission_role=None,
                         superuser_full_access=full_access, public_read=False)
        raise NotFound()
    row = kept.row
    # The token, its expiry and the caller's roles: checked on every request, also on a kept row.
    caller = tokens.caller_from_values(web.protector(), token_hash=row.caller_token_hash, scope=row.caller_scope,
                                    expires_at=row.caller_expires_at, user_id=row.caller_id,
                                    is_robot=row.caller_is_robot, is_superuser=row.caller_is_superuser)
    decide_repo_role(caller, "admin", namespace_id=row.ns_id, namespace_is_org=row.ns_is_org,
                     repository_visibility=row.repo_visibility, org_role=row.org_role,
                     permission_role=row.permission_role, superuser_full_access=full_access, public_read=False)
    if row.repo_state is None or answers_missing(row.repo_state) or row.config_id is None:
        raise NotFound()
    return kept.derive(lambda row: _body(row, f"{namespace}/{repository}"))


def _body(row: MirrorViewRow, full_name: str) -> str:
    """The body from the row's configuration alone (and the instance's secret key): a value ``Kept.derive``
    may keep with the row. ``full_name`` only names the repository in a log line, and equals the row's own
    (the statement matched it exactly)."""
    return dumps(dump_view(service.describe_values(
        full_name=full_name, box=web.secret_box(), is_enabled=row.is_enabled, mirror_type=row.mirror_type,
        external_reference=row.external_reference, username_token=row.external_registry_username,
        registry_config_json=row.external_registry_config_json,
        architecture_filter_json=row.architecture_filter_json, sync_interval=row.sync_interval,
        sync_start_date=row.sync_start_date, sync_expiration_date=row.sync_expiration_date,
        sync_retries_remaining=row.sync_retries_remaining, sync_status=row.sync_status,
        rule_value_json=row.rule_value_json, robot_username=row.robot_username,
        skopeo_timeout=row.skopeo_timeout,
    )))
