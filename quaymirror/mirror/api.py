"""Quay's mirror endpoints: each resource checks the caller, parses the body, calls the service, answers.

Quay's order holds everywhere: the caller's admin right first (401/403, even
for a malformed body), then the body (400), then the repository (404).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from flask import Response
from flask_restful import Api, Resource
from marshmallow import Schema

from quaymirror import web
from quaymirror.auth import scopes
from quaymirror.mirror import service, view_read
from quaymirror.mirror.schemas import CreateMirrorConfig, UpdateMirrorConfig, ViewMirrorConfig
from quaymirror.openapi import PLAIN_STRING, Operation


def _authorize(namespace: str, repository: str) -> web.RepoAccess:
    """Admin on ns/repo (or superuser with full access), never public, as Quay's ``require_repo_admin``."""
    return web.authorize_repo(namespace, repository, "admin", public_read=False)


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
        save(session, repo, data, box=web.secret_box(), settings=web.settings(), actor=_actor(access))
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
        return Response(view_read.read_view(namespace, repository), 200, mimetype="application/json")

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
