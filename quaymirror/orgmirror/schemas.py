"""What the organization mirror API accepts and returns: Quay's CreateOrgMirrorConfig and
UpdateOrgMirrorConfig, GET's view (its 18 keys in Quay's order), the repository list's query and view, and
verify's answer.

Types follow Quay's JSON schema (real booleans and integers, nothing coerced) with bounds so that nothing
oversized reaches the database. Unknown keys are ignored, as Quay ignores them (PUT also ignores
``external_registry_type``: the source's type cannot change). Checks whose failures Quay answers with its own
texts (the date's format, the URL, the robot) are the service's, in Quay's order.
"""

from __future__ import annotations

import json
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate
from marshmallow.types import ErrorMessages

from quaymirror.mirror.schemas import (
    MAX_INT32,
    PROXY_MAX,
    REFERENCE_MAX,
    ROBOT_MAX,
    RULE_PATTERN_MAX,
    RULE_PATTERNS_MAX,
    StrictBoolean,
    StrictInteger,
    _between,
    _credential,
    architecture_list,
)
from quaymirror.orgmirror.models import SOURCE_TYPES, OrgMirrorRepoStatus
from quaymirror.schemas import INT64_MAX, INT64_MIN, IsoDate, QuayDate, Query, View

NAMESPACE_MAX = 255
MIN_SYNC_INTERVAL = 60
MIN_SKOPEO_TIMEOUT = 30
MAX_SKOPEO_TIMEOUT = 3600
DEFAULT_SKOPEO_TIMEOUT = 300
REGISTRY_CONFIG_MAX = 16 * 1024  # bytes of JSON: the object is stored and echoed as sent
VISIBILITIES = ("public", "private")
PROXY_KEYS = ("http_proxy", "https_proxy", "no_proxy")


class RegistryConfig(fields.Field):
    """``external_registry_config``: an object kept exactly as sent, so GET echoes it (Quay's Ansible module
    compares the two to decide whether anything changed). Quay's nested rules hold: ``verify_tls`` a boolean,
    ``proxy`` an object whose three keys are strings or null; other keys pass through."""

    # Typed as marshmallow declares it (mypy refuses a ClassVar over its instance attribute).
    default_error_messages: ErrorMessages = {  # noqa: RUF012
        "invalid": "Must be an object.",
        "too_large": f"Must be at most {REGISTRY_CONFIG_MAX} bytes of JSON.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        if len(json.dumps(value)) > REGISTRY_CONFIG_MAX:
            raise self.make_error("too_large")
        errors: dict[str, Any] = {}
        if "verify_tls" in value and not isinstance(value["verify_tls"], bool):
            errors["verify_tls"] = ["Not a valid boolean."]
        proxy = value.get("proxy")
        if "proxy" in value and not isinstance(proxy, dict):
            errors["proxy"] = ["Must be an object."]
        elif isinstance(proxy, dict):
            for key in PROXY_KEYS:
                item = proxy.get(key)
                if item is not None and (not isinstance(item, str) or len(item) > PROXY_MAX):
                    errors.setdefault("proxy", {})[key] = [
                        f"Must be null or a string of at most {PROXY_MAX} characters."]
        if errors:
            raise ValidationError(errors)
        return value


def _filters(**kwargs: Any) -> fields.List:
    """``repository_filters``: fnmatch globs; empty means every repository."""
    return fields.List(fields.String(validate=validate.Length(max=RULE_PATTERN_MAX)),
                       validate=validate.Length(max=RULE_PATTERNS_MAX), **kwargs)


# Quay keeps the column and never uses it; here it is the repository mirror's platform filter for every
# repository of the organization.
ARCHITECTURE_FILTER = ("quaymirror's own: the platforms to mirror of every repository (the repository mirror's "
                       "architecture_filter); GET shows it when set.")


class UpdateOrgMirrorConfig(Schema):
    """PUT: every key optional; only the keys present are loaded (and applied)."""

    class Meta:
        unknown = EXCLUDE

    is_enabled = StrictBoolean()
    external_registry_url = fields.String(validate=validate.Length(max=REFERENCE_MAX))
    external_namespace = fields.String(validate=validate.Length(max=NAMESPACE_MAX))
    robot_username = fields.String(validate=validate.Length(max=ROBOT_MAX))
    visibility = fields.String(validate=validate.OneOf(VISIBILITIES))
    sync_interval = StrictInteger(validate=_between(MIN_SYNC_INTERVAL, MAX_INT32))
    sync_start_date = fields.String()  # the format is the service's check, with Quay's answer
    external_registry_username = _credential()
    external_registry_password = _credential()
    external_registry_config = RegistryConfig()
    repository_filters = _filters()
    skopeo_timeout = StrictInteger(validate=_between(MIN_SKOPEO_TIMEOUT, MAX_SKOPEO_TIMEOUT))
    architecture_filter = architecture_list(metadata={"description": ARCHITECTURE_FILTER})


class CreateOrgMirrorConfig(UpdateOrgMirrorConfig):
    """POST: Quay's seven required keys, Quay's defaults for the others. ``registry`` (any OCI distribution
    registry, discovered through ``/v2/_catalog``) is our extension of ``external_registry_type``."""

    external_registry_type = fields.String(
        required=True, validate=validate.OneOf(SOURCE_TYPES),
        metadata={"description": "harbor or quay as in Quay; registry (a /v2/_catalog) is quaymirror's own."})
    external_registry_url = fields.String(required=True, validate=validate.Length(max=REFERENCE_MAX))
    external_namespace = fields.String(required=True, validate=validate.Length(max=NAMESPACE_MAX))
    robot_username = fields.String(required=True, validate=validate.Length(max=ROBOT_MAX))
    visibility = fields.String(required=True, validate=validate.OneOf(VISIBILITIES))
    sync_interval = StrictInteger(required=True, validate=_between(MIN_SYNC_INTERVAL, MAX_INT32))
    sync_start_date = fields.String(required=True)
    is_enabled = StrictBoolean(load_default=True)
    external_registry_username = _credential(load_default=None)
    external_registry_password = _credential(load_default=None)
    external_registry_config = RegistryConfig(load_default=dict)
    repository_filters = _filters(load_default=list)
    skopeo_timeout = StrictInteger(load_default=DEFAULT_SKOPEO_TIMEOUT,
                                   validate=_between(MIN_SKOPEO_TIMEOUT, MAX_SKOPEO_TIMEOUT))
    architecture_filter = architecture_list(load_default=None, metadata={"description": ARCHITECTURE_FILTER})


# How many discovered repositories are in each status: every status of the enumeration, in its (Quay's)
# order, zeros included.
RepoSyncStatusCountsView = View.from_dict(
    {status.name: fields.Integer(required=True) for status in OrgMirrorRepoStatus}, name="RepoSyncStatusCountsView")


class OrgMirrorConfigView(View):
    """GET's body, Quay's keys in Quay's order; never the password. The two sync dates are written as POST and
    PUT accept them (Quay adds microseconds that it then refuses)."""

    is_enabled = fields.Boolean(required=True)
    external_registry_type = fields.String(required=True)
    external_registry_url = fields.String(required=True)
    external_namespace = fields.String(required=True)
    external_registry_username = fields.String(required=True, allow_none=True)
    has_external_registry_password = fields.Boolean(required=True)
    external_registry_config = fields.Dict(required=True)
    repository_filters = fields.List(fields.String(), required=True)
    robot_username = fields.String(required=True, allow_none=True)
    visibility = fields.String(required=True)
    sync_interval = fields.Integer(required=True)
    sync_start_date = QuayDate(required=True, allow_none=True)
    sync_expiration_date = QuayDate(required=True, allow_none=True)
    sync_status = fields.String(required=True)
    sync_retries_remaining = fields.Integer(required=True)
    repo_sync_status_counts = fields.Nested(RepoSyncStatusCountsView, required=True)
    skopeo_timeout = fields.Integer(required=True)
    creation_date = IsoDate(required=True)
    architecture_filter = fields.List(fields.String(), metadata={"description": ARCHITECTURE_FILTER})


# ------------------------------------------------------------------ the discovered repositories
REPOSITORIES_DEFAULT_LIMIT = 100
REPOSITORIES_MAX_LIMIT = 500
REPOSITORIES_MAX_PAGE = 1_000_000
STATUS_NAMES = ", ".join(status.name for status in OrgMirrorRepoStatus)


# Documented as any integer: a value out of range is clamped, never refused.
_ANY_INTEGER = {"type": "integer", "format": "int64", "minimum": INT64_MIN, "maximum": INT64_MAX}


class LenientInt(fields.Field):
    """Quay's ``page``/``limit``: a value that is not an integer means the default."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | None:
        try:
            return int(str(value).strip())
        except ValueError:
            return None


class RepositoriesQuery(Query):
    """``?page=&limit=&status=`` as Quay reads them: ``page`` below 1 is 1; ``limit`` is capped at 500 and
    below 1 means 100; ``status`` is a status name in any case."""

    page = LenientInt(load_default=None, metadata={"description": "Page (from 1) of repositories by name.",
                                                   **_ANY_INTEGER})
    limit = LenientInt(load_default=None, metadata={"description": f"Per page, at most {REPOSITORIES_MAX_LIMIT}.",
                                                    **_ANY_INTEGER})
    status = fields.String(load_default=None,
                           metadata={"description": f"Only the repositories in this status: {STATUS_NAMES}."})

    @post_load
    def _clamp(self, data: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        page = data["page"] if data["page"] is not None else 1
        limit = data["limit"] if data["limit"] is not None else REPOSITORIES_DEFAULT_LIMIT
        limit = min(limit, REPOSITORIES_MAX_LIMIT)
        return {**data, "page": min(max(page, 1), REPOSITORIES_MAX_PAGE),
                "limit": limit if limit >= 1 else REPOSITORIES_DEFAULT_LIMIT}


class DiscoveredRepositoryView(View):
    name = fields.String(required=True)
    sync_status = fields.String(required=True)
    discovery_date = IsoDate(required=True)
    last_sync_date = IsoDate(required=True, allow_none=True)
    status_message = fields.String(required=True, allow_none=True)
    quay_repository = fields.String(required=True, allow_none=True)


class DiscoveredRepositoriesView(View):
    """A page of the discovered repositories, by name (``service.RepositoryPage``)."""

    repositories = fields.List(fields.Nested(DiscoveredRepositoryView), required=True)
    page = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    total = fields.Integer(required=True)
    has_next = fields.Boolean(required=True)


class VerifyView(View):
    """verify's answer: always 200, whether the upstream answered as a source should."""

    success = fields.Boolean(required=True)
    message = fields.String(required=True)
