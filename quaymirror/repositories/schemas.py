"""What the repository endpoints accept (bodies) and answer (views)."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from quaymirror.accounts.schemas import AvatarView
from quaymirror.repositories.models import ROLES, SETTABLE_STATES, RepositoryState
from quaymirror.schemas import View


class CreateRepository(Schema):
    class Meta:
        unknown = EXCLUDE

    namespace = fields.String(required=True, validate=validate.Length(min=1, max=255))
    repository = fields.String(required=True, validate=validate.Length(min=1, max=255))
    visibility = fields.String(load_default="private", validate=validate.OneOf(["public", "private"]))
    description = fields.String(load_default="", allow_none=True, validate=validate.Length(max=4096))
    repo_kind = fields.String(load_default="image", allow_none=True, validate=validate.OneOf(["image"]))


class ChangeState(Schema):
    class Meta:
        unknown = EXCLUDE

    state = fields.String(required=True, validate=validate.OneOf([state.name for state in SETTABLE_STATES]))


class SetPermission(Schema):
    class Meta:
        unknown = EXCLUDE

    role = fields.String(required=True, validate=validate.OneOf(ROLES))


class CreatedRepositoryView(View):
    """POST /repository's answer: a ``Repository``."""

    namespace = fields.String(attribute="namespace.username", required=True)
    name = fields.String(required=True)
    kind = fields.String(required=True)


class RepositoryView(View):
    """GET /repository/<ns>/<repo> (``service.RepositoryDescription``)."""

    namespace = fields.String(required=True)
    name = fields.String(required=True)
    kind = fields.String(required=True)
    description = fields.String(required=True, allow_none=True)
    is_public = fields.Boolean(required=True)
    is_organization = fields.Boolean(required=True)
    is_starred = fields.Constant(False, required=True)
    state = fields.Enum(RepositoryState, required=True)
    can_write = fields.Boolean(required=True)
    can_admin = fields.Boolean(required=True)
    status_token = fields.Constant("", required=True)
    trust_enabled = fields.Constant(False, required=True)
    tag_expiration_s = fields.Constant(1209600, required=True)  # Quay's default: two weeks


class SuccessView(View):
    success = fields.Boolean(required=True, validate=validate.OneOf([True]))


class PermissionView(View):
    """A user's or robot's role (``service.PermissionEntry``): ``avatar`` only for people, ``is_org_member``
    only in an organization, as Quay answers."""

    omit_when_none = ("avatar", "is_org_member")

    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    name = fields.String(required=True)
    is_robot = fields.Boolean(required=True)
    avatar = fields.Nested(AvatarView)
    is_org_member = fields.Boolean()


class PermissionsView(View):
    permissions = fields.Dict(keys=fields.String(), values=fields.Nested(PermissionView), required=True)
