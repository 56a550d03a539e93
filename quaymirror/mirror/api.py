"""Quay's mirror endpoints: each resource checks the caller, parses the body, calls the service, answers.

Quay's order holds everywhere: the caller's admin right first (401/403, even
for a malformed body), then the body (400), then the repository (404).
"""

from __future__ import annotations

from flask import Response
from flask_restful import Api, Resource

from quaymirror import web
from quaymirror.auth.permissions import require_repo_role
from quaymirror.mirror import service, view_read
from quaymirror.mirror.schemas import CreateMirrorConfig, UpdateMirrorConfig
from quaymirror.repositories import service as repositories
from quaymirror.repositories.models import Repository
from quaymirror.security.secrets import SecretBox


def _box() -> SecretBox:
    return web.secret_box()


def _authorize(namespace: str, repository: str) -> Repository | None:
    """Admin on ns/repo (or superuser with full access), as Quay's ``require_repo_admin``."""
    _ns, repo = require_repo_role(
        web.session(), web.caller(required=False), namespace, repository, "admin",
        superuser_full_access=web.settings().superusers_full_access, public_read=False,
    )
    return repo


def _actor() -> service.Actor:
    return service.Actor(web.caller().user, web.client_ip())


class RepositoryMirror(Resource):
    def get(self, namespace: str, repository: str):
        # A ready response: flask-restful's representation layer would only produce the same bytes, slower.
        return Response(view_read.read_view(namespace, repository), 200, mimetype="application/json")

    def post(self, namespace: str, repository: str):
        repo = _authorize(namespace, repository)
        data = web.load(CreateMirrorConfig())
        repo = repositories.require(repo)
        session = web.session()
        with web.atomic(session):
            service.create(session, repo, data, box=_box(), settings=web.settings(), actor=_actor())
        return "", 201

    def put(self, namespace: str, repository: str):
        repo = _authorize(namespace, repository)
        data = web.load(UpdateMirrorConfig())
        repo = repositories.require(repo)
        session = web.session()
        with web.atomic(session):
            service.update(session, repo, data, box=_box(), settings=web.settings(), actor=_actor())
        return "", 201

    def delete(self, namespace: str, repository: str):
        repo = repositories.require(_authorize(namespace, repository))
        session = web.session()
        with web.atomic(session):
            service.delete(session, repo, actor=_actor())
        return "", 204


class RepositoryMirrorSyncNow(Resource):
    def post(self, namespace: str, repository: str):
        repo = repositories.require(_authorize(namespace, repository))
        session = web.session()
        with web.atomic(session):
            service.sync_now(session, repo, actor=_actor())
        return "", 204


class RepositoryMirrorSyncCancel(Resource):
    def post(self, namespace: str, repository: str):
        repo = repositories.require(_authorize(namespace, repository))
        session = web.session()
        with web.atomic(session):
            service.sync_cancel(session, repo, actor=_actor())
        return "", 204


def register(api: Api) -> None:
    base = "/repository/<string:namespace>/<string:repository>/mirror"
    api.add_resource(RepositoryMirror, base)
    api.add_resource(RepositoryMirrorSyncNow, f"{base}/sync-now")
    api.add_resource(RepositoryMirrorSyncCancel, f"{base}/sync-cancel")
