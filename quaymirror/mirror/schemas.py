"""What the mirror API accepts and returns: Quay's CreateMirrorConfig, UpdateMirrorConfig, ViewMirrorConfig,
the query strings of the history and the health, and the views of both.

Types follow Quay's JSON schema (real JSON booleans and integers, nothing
coerced), with limits Quay lacks so that nothing oversized reaches the
database (text no database can store never gets here: ``web.json_body``
refuses it first). Unknown top-level keys are ignored, as Quay ignores
them (its Ansible collection sends ``unsigned_images`` at the top level).
Checks whose failures Quay answers with its own texts and body shapes (the
date format, architectures, the rule list being empty, the reference, the
robot) are left to the service so the answers and their order stay Quay's.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate
from marshmallow.types import ErrorMessages

from quaymirror.dates import format_date
from quaymirror.mirror.health import Health
from quaymirror.mirror.models import RULE_KIND, MirrorSyncRun, RepoMirrorRuleType, RunStatus
from quaymirror.schemas import Group, Int64, IsoDate, QuayDate, Query, QueryBool, View

RULE_TYPE = RepoMirrorRuleType.TAG_GLOB_CSV.name

MAX_INT32 = 2**31 - 1  # the columns are 32-bit on PostgreSQL; larger values would be a 500
MIN_SKOPEO_TIMEOUT = 300
REFERENCE_MAX = 2048
CREDENTIAL_MAX = 1024
CREDENTIAL_MAX_BYTES = 2048  # keeps the encrypted username inside its varchar(4096)
PROXY_MAX = 2048
ROBOT_MAX = 255
RULE_PATTERN_MAX = 1024
RULE_PATTERNS_MAX = 1000
ARCHITECTURE_MAX = 64
ARCHITECTURES_MAX = 64


def _utf8_bytes(maximum: int):
    def check(value: str | None) -> None:
        if value is not None and len(value.encode("utf-8")) > maximum:
            raise ValidationError(f"Longer than maximum length {maximum} bytes in UTF-8.")

    return check


class StrictBoolean(fields.Boolean):
    """Only ``true``/``false``: Quay's schema refuses ``"true"``, ``1`` and ``null`` too."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class StrictInteger(fields.Integer):
    """Only JSON integers: ``"60"``, ``60.5`` and ``true`` are refused (marshmallow's strict mode)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)


class RootRule(fields.Field):
    """``root_rule`` in either shape, loaded as the list of glob patterns.

    Quay's real shape is ``{"rule_kind": "tag_glob_csv", "rule_value": [...]}``;
    Quay's published API documentation shows ``{"rule_type": "TAG_GLOB_CSV",
    "rule": "a,b"}``, which real Quay refuses and we accept (``rule`` as a
    comma-separated string or a list, ``rule_type`` in any case). An empty
    list passes here: Quay answers it later with its own message.
    """

    # Typed as marshmallow declares it (mypy refuses a ClassVar over its instance attribute).
    default_error_messages: ErrorMessages = {  # noqa: RUF012
        "invalid": "Must be an object with rule_kind and rule_value."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        documented = ("rule_type" in value or "rule" in value) and not (
            "rule_kind" in value or "rule_value" in value
        )
        return self._documented(value) if documented else self._real(value)

    def _real(self, value: dict[str, Any]) -> list[str]:
        errors: dict[str, Any] = {}
        if "rule_kind" not in value:
            errors["rule_kind"] = ["Missing data for required field."]
        elif value["rule_kind"] != RULE_KIND:
            errors["rule_kind"] = [f"Must be one of: {RULE_KIND}."]
        patterns: list[str] = []
        if "rule_value" not in value:
            errors["rule_value"] = ["Missing data for required field."]
        else:
            try:
                patterns = self._patterns(value["rule_value"])
            except ValidationError as error:
                errors["rule_value"] = error.messages
        if errors:
            raise ValidationError(errors)
        return patterns

    def _documented(self, value: dict[str, Any]) -> list[str]:
        errors: dict[str, Any] = {}
        rule_type = value.get("rule_type")
        if "rule_type" not in value:
            errors["rule_type"] = ["Missing data for required field."]
        elif not isinstance(rule_type, str) or rule_type.upper() != RULE_TYPE:
            errors["rule_type"] = [f"Must be one of: {RULE_TYPE}."]
        patterns: list[str] = []
        if "rule" not in value:
            errors["rule"] = ["Missing data for required field."]
        else:
            rule = value["rule"]
            if isinstance(rule, str):
                rule = [part.strip() for part in rule.split(",") if part.strip()]
            try:
                patterns = self._patterns(rule)
            except ValidationError as error:
                errors["rule"] = error.messages
        if errors:
            raise ValidationError(errors)
        return patterns

    @staticmethod
    def _patterns(value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValidationError("Must be a list of strings.")
        if len(value) > RULE_PATTERNS_MAX:
            raise ValidationError(f"Must hold at most {RULE_PATTERNS_MAX} patterns.")
        for item in value:
            if len(item) > RULE_PATTERN_MAX:
                raise ValidationError(f"Each pattern must be at most {RULE_PATTERN_MAX} characters.")
        return list(value)


class ProxySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    http_proxy = fields.String(allow_none=True, validate=validate.Length(max=PROXY_MAX))
    https_proxy = fields.String(allow_none=True, validate=validate.Length(max=PROXY_MAX))
    no_proxy = fields.String(allow_none=True, validate=validate.Length(max=PROXY_MAX))


class ExternalRegistryConfigSchema(Schema):
    """Only Quay's keys are kept; anything else inside the object is ignored."""

    class Meta:
        unknown = EXCLUDE

    verify_tls = StrictBoolean()
    unsigned_images = StrictBoolean()
    proxy = fields.Nested(ProxySchema)


def _between(minimum: int, maximum: int) -> list[validate.Range]:
    """Two validators, so each bound has its own message (marshmallow's joint one names both)."""
    return [validate.Range(min=minimum), validate.Range(max=maximum)]


def _credential(**kwargs: Any) -> fields.String:
    return fields.String(allow_none=True, validate=[validate.Length(max=CREDENTIAL_MAX), _utf8_bytes(CREDENTIAL_MAX_BYTES)],
                **kwargs)


def architecture_list(**kwargs: Any) -> fields.List:
    return fields.List(fields.String(validate=validate.Length(max=ARCHITECTURE_MAX)), allow_none=True,
                       validate=validate.Length(max=ARCHITECTURES_MAX), **kwargs)


class UpdateMirrorConfig(Schema):
    """PUT: every key optional; only the keys present are loaded (and acted on)."""

    class Meta:
        unknown = EXCLUDE

    is_enabled = StrictBoolean()
    external_reference = fields.String(validate=validate.Length(max=REFERENCE_MAX))
    external_registry_username = _credential()
    external_registry_password = _credential()
    external_registry_config = fields.Nested(ExternalRegistryConfigSchema)
    sync_interval = StrictInteger(validate=_between(0, MAX_INT32))
    sync_start_date = fields.String()  # the format (and its length) is checked by the service, with Quay's answer
    robot_username = fields.String(validate=validate.Length(max=ROBOT_MAX))
    root_rule = RootRule()
    skopeo_timeout_interval = StrictInteger(validate=_between(MIN_SKOPEO_TIMEOUT, MAX_INT32))
    architecture_filter = architecture_list()


class CreateMirrorConfig(UpdateMirrorConfig):
    """POST: Quay's required keys plus ``robot_username`` (Quay answers a 500 without it)."""

    is_enabled = StrictBoolean(load_default=True)
    external_reference = fields.String(required=True, validate=validate.Length(max=REFERENCE_MAX))
    external_registry_username = _credential(load_default=None)
    external_registry_password = _credential(load_default=None)
    external_registry_config = fields.Nested(ExternalRegistryConfigSchema, load_default=dict)
    sync_interval = StrictInteger(required=True, validate=_between(0, MAX_INT32))
    sync_start_date = fields.String(required=True)
    robot_username = fields.String(required=True, validate=validate.Length(max=ROBOT_MAX))
    root_rule = RootRule(required=True)
    skopeo_timeout_interval = StrictInteger(required=True,
                                            validate=_between(MIN_SKOPEO_TIMEOUT, MAX_INT32))
    architecture_filter = architecture_list(load_default=None)


class ViewMirrorConfig(Schema):
    """GET's body: every key always present, in Quay's order; never the password."""

    is_enabled = fields.Boolean()
    mirror_type = fields.String()
    external_reference = fields.String()
    external_registry_username = fields.String(allow_none=True)
    external_registry_config = fields.Raw()
    sync_interval = fields.Integer()
    sync_start_date = QuayDate(allow_none=True)
    sync_expiration_date = QuayDate(allow_none=True)
    sync_retries_remaining = fields.Integer()
    sync_status = fields.String()
    root_rule = fields.Raw()
    robot_username = fields.String(allow_none=True)
    skopeo_timeout_interval = fields.Integer()
    architecture_filter = fields.List(fields.String())


_VIEW_DATES = ("sync_start_date", "sync_expiration_date")


def dump_view(values: dict[str, Any]) -> dict[str, Any]:
    """``ViewMirrorConfig().dump(values)`` without marshmallow's per-field machinery, which cost
    GET /mirror as much as its database read; the service's values are already JSON but for the
    dates. Tests hold the two equal."""
    return {**values, **{key: format_date(values[key]) for key in _VIEW_DATES}}


# ------------------------------------------------------------------ the sync history (which Quay lacks)
SYNCS_DEFAULT_LIMIT = 20
SYNCS_MAX_LIMIT = 100
SYNCS_MAX_PAGE = 1_000_000


class SyncListQuery(Query):
    """``?page=&limit=``: an empty value means the default."""

    page = Int64(minimum=1, maximum=SYNCS_MAX_PAGE, load_default=1, empty_is_missing=True,
                 metadata={"description": "Page of runs, newest first."})
    limit = Int64(minimum=1, maximum=SYNCS_MAX_LIMIT, load_default=SYNCS_DEFAULT_LIMIT, empty_is_missing=True,
                  metadata={"description": "Runs per page."})


class SyncTagCountsView(View):
    """A run's tag counters (null ``matched`` until the run has listed the upstream's tags)."""

    matched = fields.Integer(attribute="tags_matched", required=True, allow_none=True)
    done = fields.Integer(attribute="tags_done", required=True, allow_none=True)
    copied = fields.Integer(attribute="tags_copied", required=True, allow_none=True)
    skipped = fields.Integer(attribute="tags_skipped", required=True, allow_none=True)
    deleted = fields.Integer(attribute="tags_deleted", required=True, allow_none=True)
    failed = fields.Integer(attribute="tags_failed", required=True, allow_none=True)
    filtered = fields.Integer(attribute="tags_filtered", required=True, allow_none=True,
                              metadata={"description": "Single images of a platform the architecture filter "
                                                       "leaves out (nothing copied)."})


class SyncProgressView(View):
    """How far a run got: tags done of the tags matched."""

    done = fields.Integer(attribute="tags_done", required=True, allow_none=True)
    total = fields.Integer(attribute="tags_matched", required=True, allow_none=True)


class SyncRunView(View):
    """One sync run of the mirror: a ``repomirrorsyncrun`` row."""

    id = fields.Integer(required=True)
    trigger = fields.String(required=True)
    status = fields.String(required=True)
    in_progress = fields.Method("_in_progress", required=True, metadata={"type": "boolean"})
    started = QuayDate(required=True, allow_none=True)
    finished = QuayDate(required=True, allow_none=True)
    duration_seconds = fields.Method("_duration", required=True, allow_none=True, metadata={"type": "number"})
    reason = fields.String(required=True, allow_none=True)
    message = fields.String(required=True, allow_none=True)
    worker = fields.String(required=True, allow_none=True)
    tags = Group(SyncTagCountsView, required=True)
    progress = Group(SyncProgressView, required=True)
    bytes = fields.Integer(required=True, allow_none=True)

    @staticmethod
    def _in_progress(run: MirrorSyncRun) -> bool:
        return run.status == RunStatus.SYNCING

    @staticmethod
    def _duration(run: MirrorSyncRun) -> float | None:
        return round((run.finished - run.started).total_seconds(), 3) if run.finished else None


class SyncRunListView(View):
    """A page of runs, newest first (``service.RunPage``)."""

    syncs = fields.List(fields.Nested(SyncRunView), required=True)
    page = fields.Integer(required=True)
    has_additional = fields.Boolean(required=True)


class SyncTagResultView(View):
    """One tag's result in a run: a ``repomirrorsynctag`` row."""

    tag = fields.String(required=True)
    digest = fields.String(required=True, allow_none=True)
    outcome = fields.String(required=True)
    reason = fields.String(required=True, allow_none=True)
    output = fields.String(required=True, allow_none=True)
    bytes = fields.Integer(required=True, allow_none=True)
    duration_ms = fields.Integer(required=True, allow_none=True)
    finished = QuayDate(required=True, allow_none=True)
    upstream_digest = fields.String(required=True, allow_none=True,
                                    metadata={"description": "Upstream's digest when the tag was stored under "
                                                             "another one (``digest``: an index of the copied "
                                                             "platforms that the destination registry took instead "
                                                             "of the sparse one); null: the same."})
    platforms = fields.List(fields.String(), required=True, allow_none=True,
                            metadata={"description": "The platforms copied (os/architecture[/variant]) when the "
                                                     "architecture filter chose them; null: the image as it is."})


class SyncTagResultsView(View):
    """The per-tag results that one run's answer adds to its ``SyncRunView``."""

    tag_results = fields.List(fields.Nested(SyncTagResultView), required=True)


# ------------------------------------------------------------------ the mirror health
HEALTH_DEFAULT_LIMIT = 100
HEALTH_MAX_LIMIT = 1000
_TRUE = {"true", "1", "yes", "on", "t", "y"}
_FALSE = {"false", "0", "no", "off", "f", "n", ""}
_NOT_AN_INT = {"invalid": "invalid literal for int() with base 10: {input!r}"}  # Quay's reqparse message


class HealthQuery(Query):
    """Quay's arguments: ``limit`` is clamped to 1..HEALTH_MAX_LIMIT and ``offset`` to 0 and up, as Quay does;
    only a value no database integer can hold (or no integer at all) is a 400."""

    namespace = fields.String(load_default="", metadata={"description": "Only this namespace's mirrors."})
    detailed = QueryBool(truthy=_TRUE, falsy=_FALSE, load_default=False,
                         error_messages={"invalid": "Invalid literal for boolean(): {input}"},
                         metadata={"description": "Also list the repositories (limit, offset)."})
    limit = Int64(load_default=HEALTH_DEFAULT_LIMIT, error_messages=_NOT_AN_INT,
                  metadata={"description": f"Page size of the details, clamped to 1..{HEALTH_MAX_LIMIT}."})
    offset = Int64(load_default=0, error_messages=_NOT_AN_INT,
                   metadata={"description": "Details to skip; a negative value means 0."})

    @post_load
    def _clamp(self, data: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        return {**data, "namespace": data["namespace"] or None,
                "limit": min(HEALTH_MAX_LIMIT, max(1, data["limit"])), "offset": max(0, data["offset"])}


class HealthWorkersView(View):
    """The live workers against the configured replicas; degraded whenever the health is."""

    active = fields.Integer(attribute="active_workers", required=True)
    configured = fields.Integer(attribute="configured_workers", required=True)
    status = fields.Method("_status", required=True, validate=validate.OneOf(["healthy", "degraded"]),
                           metadata={"type": "string"})

    @staticmethod
    def _status(health: Health) -> str:
        return "healthy" if health.healthy else "degraded"


class HealthRepositoryView(View):
    """One mirrored repository in the detailed answer."""

    namespace = fields.String(required=True)
    repository = fields.String(required=True)
    sync_status = fields.String(required=True)
    is_enabled = fields.Boolean(required=True)
    last_sync = IsoDate(required=True, allow_none=True)
    retries_remaining = fields.Integer(required=True)


class HealthPaginationView(View):
    limit = fields.Integer(required=True)
    offset = fields.Integer(required=True)
    has_more = fields.Boolean(required=True)


class HealthRepositoriesView(View):
    """The counts by status; with ``?detailed=true`` also a page of repositories (Quay's keys appear then)."""

    omit_when_none = ("pagination",)

    total = fields.Integer(required=True)
    syncing = fields.Integer(required=True)
    completed = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    never_run = fields.Integer(required=True)
    details = fields.List(fields.Nested(HealthRepositoryView), attribute="details.repositories")
    pagination = fields.Nested(HealthPaginationView, attribute="details")


class HealthIssueView(View):
    severity = fields.String(required=True, validate=validate.OneOf(["critical", "error", "warning"]))
    message = fields.String(required=True)
    timestamp = IsoDate(required=True)


class MirrorHealthView(View):
    """Quay's mirror health answer (``health.Health``)."""

    healthy = fields.Boolean(required=True)
    workers = Group(HealthWorkersView, required=True)
    repositories = fields.Nested(HealthRepositoriesView, required=True)
    tags_pending = fields.Integer(required=True)
    last_check = IsoDate(required=True, allow_none=True)
    issues = fields.List(fields.Nested(HealthIssueView), required=True)


# ------------------------------------------------------------------ the registry's capabilities
class SparseManifestsView(View):
    """Whether the registry stores sparse indexes (an index whose other platforms were not mirrored)."""

    supported = fields.Boolean(required=True)
    required_architectures = fields.List(fields.String(), required=True)
    optional_architectures_allowed = fields.Boolean(required=True)


class RegistryCapabilitiesView(View):
    """Quay's ``GET /api/v1/registry/capabilities``: what clients may ask of the mirror's architecture filter."""

    sparse_manifests = fields.Nested(SparseManifestsView, required=True)
    mirror_architectures = fields.List(fields.String(), required=True)
