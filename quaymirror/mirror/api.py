"""Quay's mirror endpoints: each resource checks the caller, parses the body, calls the service, answers.

Quay's order holds everywhere: the caller's admin right first (401/403, even
for a malformed body), then the body (400), then the repository (404).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from flask import Response, current_app
from flask_restful import Api, Resource
from marshmallow import Schema
from sqlalchemy.orm import aliased

from quaymirror import web
from quaymirror.accounts.models import OrganizationMember, User
from quaymirror.auth import scopes, tokens
from quaymirror.auth.permissions import NS, access_query, decide_repo_role
from quaymirror.db import Plain, Prepared
from quaymirror.errors import NotFound, dumps
from quaymirror.mirror import service
from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorRule
from quaymirror.mirror.schemas import CreateMirrorConfig, UpdateMirrorConfig, ViewMirrorConfig, dump_view
from quaymirror.openapi import PLAIN_STRING, Operation
from quaymirror.repositories import service as repositories
from quaymirror.repositories.models import Repository, RepositoryPermission
from quaymirror.security.secrets import SecretBox


def _box() -> SecretBox:
    return current_app.extensions["quaymirror.secrets"]


def _authorize(namespace: str, repository: str) -> web.RepoAccess:
    """Admin on ns/repo (or superuser with full access), never public, as Quay's ``require_repo_admin``."""
    return web.authorize_repo(namespace, repository, "admin", public_read=False)


_ROBOT = aliased(User, name="robot")
_CONFIG_COLUMNS = (
    "is_enabled", "mirror_type", "external_reference", "external_registry_username",
    "external_registry_config_json", "architecture_filter_json", "sync_interval", "sync_start_date",
    "sync_expiration_date", "sync_retries_remaining", "sync_status", "skopeo_timeout",
)
# GET's whole read in one statement and as plain rows (no ORM identity work): the namespace, the
# repository, the caller's roles, the configuration, its rule and its robot.
_VIEW = (
    access_query(
        RepoMirrorConfig.id.label("config_id"),
        *(getattr(RepoMirrorConfig, name).label(name) for name in _CONFIG_COLUMNS),
        RepoMirrorRule.rule_value_json.label("rule_value_json"),
        _ROBOT.username.label("robot_username"),
        authenticate=True,
        columns=(
            NS.id.label("ns_id"), NS.username.label("ns_username"), NS.is_organization.label("ns_is_org"),
            Repository.id.label("repo_id"), Repository.name.label("repo_name"),
            Repository.visibility.label("repo_visibility"), Repository.state.label("repo_state"),
            OrganizationMember.role.label("org_role"), RepositoryPermission.role.label("permission_role"),
        ),
    )
    .outerjoin(RepoMirrorConfig, RepoMirrorConfig.repository_id == Repository.id)
    .outerjoin(RepoMirrorRule, RepoMirrorRule.id == RepoMirrorConfig.root_rule_id)
    .outerjoin(_ROBOT, _ROBOT.id == RepoMirrorConfig.internal_robot_id)
)
_VIEW_PREPARED = Prepared("quaymirror_mirror_view", _VIEW)


class _ConfigRow(Plain):
    # The model's own JSON decoding, so the answer is the same as from an ORM instance.
    external_registry_config = RepoMirrorConfig.external_registry_config
    architecture_filter = RepoMirrorConfig.architecture_filter
    rule_value = RepoMirrorRule.rule_value


class _RepositoryRow(Plain):
    full_name = Repository.full_name


def _view(namespace: str, repository: str) -> str:
    """GET /mirror's body with one query: the same checks and answers as ``_authorize`` +
    ``service.describe_config``.

    The statement authenticates the bearer token too; only when the namespace does not exist (no row)
    is the token looked up on its own, to tell 401 from 403.
    """
    row = web.read_first(_VIEW_PREPARED, {"ns": namespace, "repo": repository, "digest": tokens.request_digest()})
    caller = web.caller(required=False, found=tokens.token_in(row) if row is not None else False)
    ns = repo = None
    if row is not None:
        ns = Plain(id=row.ns_id, username=row.ns_username, is_organization=row.ns_is_org)
        if row.repo_id is not None:
            repo = _RepositoryRow(id=row.repo_id, name=row.repo_name, visibility=row.repo_visibility,
                                  state=row.repo_state, namespace=ns)
    decide_repo_role(caller, ns, repo, row.org_role if row else None, row.permission_role if row else None,
                     "admin", superuser_full_access=web.settings().superusers_full_access, public_read=False)
    repo = repositories.require(repo)
    if row.config_id is None:
        raise NotFound()
    kept = _BODIES.get(id(row))
    if kept is not None and kept[0] is row:
        return kept[1]
    config = _ConfigRow(**{name: getattr(row, name) for name in _CONFIG_COLUMNS})
    config.root_rule = _ConfigRow(rule_value_json=row.rule_value_json)
    config.internal_robot = Plain(username=row.robot_username) if row.robot_username is not None else None
    body = dumps(dump_view(service.describe_config(config, repo, _box())))
    if len(_BODIES) >= _MAX_BODIES:
        _BODIES.clear()
    _BODIES[id(row)] = (row, body)
    return body


# The body of each row the read cache answers again (the very same object, kept here so that its id is not
# reused): it is derived from the row alone, so it is the same too. The token, its expiry and the caller's
# roles above are still checked on every request.
_BODIES: dict[int, tuple[tuple, str]] = {}
_MAX_BODIES = 4096


def _actor(access: web.RepoAccess) -> service.Actor:
    return service.Actor(access.performer, web.client_ip())


def _save(namespace: str, repository: str, schema: Schema, save: Callable[..., object]) -> tuple[str, int]:
    """POST and PUT: the caller, the body, the repository, then the service's write (Quay answers 201 to
    both)."""
    access = _authorize(namespace, repository)
    data = web.load(schema)
    repo = access.require()
    session = web.session()
    with web.atomic(session):
        save(session, repo, data, box=web.secrets(), settings=web.settings(), actor=_actor(access))
    return "", 201


def _act(namespace: str, repository: str, action: Callable[..., None]) -> tuple[str, int]:
    """A change without a body (delete, sync-now, cancel): the caller, the repository, then the action."""
    access = _authorize(namespace, repository)
    repo = access.require()
    session = web.session()
    with web.atomic(session):
        action(session, repo, actor=_actor(access))
    return "", 204


_MIRROR = ("mirror",)


class RepositoryMirror(Resource):
    openapi: ClassVar[Mapping[str, Operation]] = {
        "get": Operation("getRepoMirrorConfig", "The repository's mirror configuration.", scopes.REPO_ADMIN,
                         {200: ViewMirrorConfig}, tags=_MIRROR),
        "post": Operation("createRepoMirrorConfig", "Create the mirror configuration.", scopes.REPO_ADMIN,
                          {201: PLAIN_STRING}, body=CreateMirrorConfig, tags=_MIRROR, errors=(409,)),
        "put": Operation("changeRepoMirrorConfig", "Change the mirror configuration.", scopes.REPO_ADMIN,
                         {201: PLAIN_STRING}, body=UpdateMirrorConfig, tags=_MIRROR),
        "delete": Operation("deleteRepoMirrorConfig", "Delete the mirror configuration.", scopes.REPO_ADMIN,
                            {204: None}, tags=_MIRROR),
    }

    def get(self, namespace: str, repository: str):
        # A ready response: flask-restful's representation layer would only produce the same bytes, slower.
        return Response(_view(namespace, repository), 200, mimetype="application/json")

    def post(self, namespace: str, repository: str) -> tuple[str, int]:
        return _save(namespace, repository, CreateMirrorConfig(), service.create)

    def put(self, namespace: str, repository: str) -> tuple[str, int]:
        return _save(namespace, repository, UpdateMirrorConfig(), service.update)

    def delete(self, namespace: str, repository: str) -> tuple[str, int]:
        return _act(namespace, repository, service.delete)


class _StatusChange(Resource):
    """A POST that changes the sync status (``action``, a service function), without a body."""

    action: ClassVar[Callable[..., None]]

    def post(self, namespace: str, repository: str) -> tuple[str, int]:
        return _act(namespace, repository, type(self).action)


class RepositoryMirrorSyncNow(_StatusChange):
    action = staticmethod(service.sync_now)
    openapi: ClassVar[Mapping[str, Operation]] = {
        "post": Operation("syncNow", "Sync the mirror as soon as possible.", scopes.REPO_ADMIN, {204: None},
                          tags=_MIRROR),
    }


class RepositoryMirrorSyncCancel(_StatusChange):
    action = staticmethod(service.sync_cancel)
    openapi: ClassVar[Mapping[str, Operation]] = {
        "post": Operation("syncCancel", "Cancel the running or pending sync.", scopes.REPO_ADMIN, {204: None},
                          tags=_MIRROR),
    }


def register(api: Api) -> None:
    base = "/repository/<string:namespace>/<string:repository>/mirror"
    api.add_resource(RepositoryMirror, base)
    api.add_resource(RepositoryMirrorSyncNow, f"{base}/sync-now")
    api.add_resource(RepositoryMirrorSyncCancel, f"{base}/sync-cancel")
