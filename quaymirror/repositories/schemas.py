"""What the repository endpoints accept."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate


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

    state = fields.String(required=True, validate=validate.OneOf(["NORMAL", "READ_ONLY", "MIRROR"]))


class SetPermission(Schema):
    class Meta:
        unknown = EXCLUDE

    role = fields.String(required=True, validate=validate.OneOf(["read", "write", "admin"]))
