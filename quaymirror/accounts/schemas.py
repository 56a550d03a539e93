"""What the account endpoints accept (bodies, the entities query) and answer (the views)."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, post_dump, validate

from quaymirror.mirror.schemas import MAX_INT32, StrictBoolean, StrictInteger
from quaymirror.schemas import Query, QueryBool, Rfc2822Date, View


class CreateOrganization(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True, validate=validate.Length(min=1, max=255))
    email = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=255))


class UpdateOrganization(Schema):
    """Quay's UpdateOrg keys, each optional. Only ``email`` is stored: quaymirror sends no invoices and expires no
    tags, so the others are checked for their type and otherwise ignored."""

    class Meta:
        unknown = EXCLUDE

    email = fields.String(validate=validate.Length(max=255))
    invoice_email = StrictBoolean()
    invoice_email_address = fields.String(allow_none=True, validate=validate.Length(max=255))
    tag_expiration_s = StrictInteger(validate=validate.Range(min=0, max=MAX_INT32))


class CreateRobot(Schema):
    class Meta:
        unknown = EXCLUDE

    description = fields.String(load_default="", allow_none=True, validate=validate.Length(max=1024))
    unstructured_metadata = fields.Dict(load_default=None, allow_none=True)


_FLAG_TRUE = {"true", "1", "yes", "on"}


class EntitiesQuery(Query):
    """Quay's lenient flags (``includeOrgs=False`` is what Ansible sends): absent or any other word is false.
    ``includeTeams`` is accepted and has no effect (there are no teams)."""

    namespace = fields.String(load_default="", metadata={"description": "Also this namespace's robots."})
    include_orgs = QueryBool(truthy=_FLAG_TRUE, falsy=None, load_default=False, data_key="includeOrgs",
                             metadata={"description": "Also the organization itself (its admins)."})
    include_teams = QueryBool(truthy=_FLAG_TRUE, falsy=None, load_default=False, data_key="includeTeams",
                              metadata={"description": "Accepted; there are no teams."})


class NamespaceView(View):
    """A namespace by name and kind (``user``, ``org`` or ``robot``), as in a user's ``organizations``."""

    name = fields.String(attribute="username", required=True)
    kind = fields.String(required=True)


class UserView(View):
    """GET /user/: the token's owner (``service.Profile``)."""

    anonymous = fields.Constant(False, required=True)
    username = fields.String(attribute="user.username", required=True)
    email = fields.String(attribute="user.email", required=True, allow_none=True)
    verified = fields.Constant(True, required=True)
    kind = fields.String(attribute="user.kind", required=True)
    super_user = fields.Boolean(attribute="user.is_superuser", required=True)
    is_me = fields.Constant(True, required=True)
    organizations = fields.List(fields.Nested(NamespaceView), required=True)


class OrganizationView(View):
    """An organization as the caller sees it (``service.OrganizationAccess``)."""

    name = fields.String(required=True)
    email = fields.String(required=True)
    is_admin = fields.Boolean(required=True)
    is_member = fields.Boolean(required=True)
    is_org_admin = fields.Boolean(required=True)
    can_create_repo = fields.Boolean(required=True)


class RobotView(View):
    """Quay's robot view, token included (``service.RobotAccount``); a token the instance key cannot open is
    null."""

    name = fields.String(required=True)
    created = Rfc2822Date(required=True)
    last_accessed = fields.Constant(None, required=True, allow_none=True, metadata={"type": "string"})
    description = fields.String(required=True, allow_none=True)
    token = fields.String(required=True, allow_none=True)
    unstructured_metadata: fields.Constant[dict[str, str]] = fields.Constant({}, required=True)


class AvatarView(View):
    name = fields.String(required=True)
    kind = fields.String(required=True)


class EntityView(View):
    """A user, robot or organization matching the prefix; ``is_robot`` is left out for the organization,
    ``is_org_member`` outside an organization (``service.Entity``)."""

    omit_when_none = ("is_robot", "is_org_member")

    name = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["user", "org"]))
    is_robot = fields.Boolean()
    avatar = fields.Nested(AvatarView)
    is_org_member = fields.Boolean()

    @post_dump
    def _quay_order(self, body: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        """Quay writes the organization's own entry with ``is_org_member`` before ``avatar``."""
        if body["kind"] == "org":
            body["avatar"] = body.pop("avatar")
        return body


class EntitiesView(View):
    results = fields.List(fields.Nested(EntityView), required=True)
