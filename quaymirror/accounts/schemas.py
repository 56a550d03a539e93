"""What the account endpoints accept."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate


class CreateOrganization(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True, validate=validate.Length(min=1, max=255))
    email = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=255))


class CreateRobot(Schema):
    class Meta:
        unknown = EXCLUDE

    description = fields.String(load_default="", allow_none=True, validate=validate.Length(max=1024))
    unstructured_metadata = fields.Dict(load_default=None, allow_none=True)
