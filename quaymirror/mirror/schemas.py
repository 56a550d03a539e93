"""What the mirror API accepts and returns: Quay's CreateMirrorConfig, UpdateMirrorConfig, ViewMirrorConfig.

Types follow Quay's JSON schema (real JSON booleans and integers, nothing
coerced), with limits Quay lacks so that nothing oversized or unstorable
reaches the database. Unknown top-level keys are ignored, as Quay ignores
them (its Ansible collection sends ``unsigned_images`` at the top level).
Checks whose failures Quay answers with its own texts and body shapes (the
date format, architectures, the rule list being empty, the reference, the
robot) are left to the service so the answers and their order stay Quay's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
RULE_KIND = "tag_glob_csv"
RULE_TYPE = "TAG_GLOB_CSV"

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


def storable(value: str) -> str:
    """Refuse text PostgreSQL or UTF-8 cannot hold (NUL, lone surrogates): a 400, not a 500 at flush."""
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Must be valid Unicode text.") from None
    return value


def _utf8_bytes(maximum: int):
    def check(value: str | None) -> None:
        if value is not None and len(value.encode("utf-8")) > maximum:
            raise ValidationError(f"Longer than maximum length {maximum} bytes in UTF-8.")

    return check


def format_date(value: datetime | None) -> str | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` at second precision, so a client can PUT back exactly what it read."""
    if value is None:
        return None
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"
    )


def parse_date(text: str) -> datetime:
    """Quay's ``strptime("%Y-%m-%dT%H:%M:%SZ")``: naive UTC, non-padded fields accepted; ValueError otherwise."""
    return datetime.strptime(text, DATE_FORMAT)


class Text(fields.String):
    """A JSON string (never a number or boolean) that can be stored as is."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return storable(super()._deserialize(value, attr, data, **kwargs))


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

    default_error_messages: ClassVar[dict[str, str]] = {
        "invalid": "Must be an object with rule_kind and rule_value."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        documented = ("rule_type" in value or "rule" in value) and not (
            "rule_kind" in value or "rule_value" in value
        )
        return self._documented(value) if documented else self._real(value)

    def _real(self, value: dict[str, Any]) -> list[str]:
        errors: dict[str, list[str]] = {}
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
        errors: dict[str, list[str]] = {}
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
            storable(item)
        return list(value)


class ProxySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    http_proxy = Text(allow_none=True, validate=validate.Length(max=PROXY_MAX))
    https_proxy = Text(allow_none=True, validate=validate.Length(max=PROXY_MAX))
    no_proxy = Text(allow_none=True, validate=validate.Length(max=PROXY_MAX))


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


def _credential(**kwargs: Any) -> Text:
    return Text(allow_none=True, validate=[validate.Length(max=CREDENTIAL_MAX), _utf8_bytes(CREDENTIAL_MAX_BYTES)],
                **kwargs)


def _architectures(**kwargs: Any) -> fields.List:
    return fields.List(Text(validate=validate.Length(max=ARCHITECTURE_MAX)), allow_none=True,
                       validate=validate.Length(max=ARCHITECTURES_MAX), **kwargs)


class UpdateMirrorConfig(Schema):
    """PUT: every key optional; only the keys present are loaded (and acted on)."""

    class Meta:
        unknown = EXCLUDE

    is_enabled = StrictBoolean()
    external_reference = Text(validate=validate.Length(max=REFERENCE_MAX))
    external_registry_username = _credential()
    external_registry_password = _credential()
    external_registry_config = fields.Nested(ExternalRegistryConfigSchema)
    sync_interval = StrictInteger(validate=_between(0, MAX_INT32))
    sync_start_date = Text()  # the format (and its length) is checked by the service, with Quay's answer
    robot_username = Text(validate=validate.Length(max=ROBOT_MAX))
    root_rule = RootRule()
    skopeo_timeout_interval = StrictInteger(validate=_between(MIN_SKOPEO_TIMEOUT, MAX_INT32))
    architecture_filter = _architectures()


class CreateMirrorConfig(UpdateMirrorConfig):
    """POST: Quay's required keys plus ``robot_username`` (Quay answers a 500 without it)."""

    is_enabled = StrictBoolean(load_default=True)
    external_reference = Text(required=True, validate=validate.Length(max=REFERENCE_MAX))
    external_registry_username = _credential(load_default=None)
    external_registry_password = _credential(load_default=None)
    external_registry_config = fields.Nested(ExternalRegistryConfigSchema, load_default=dict)
    sync_interval = StrictInteger(required=True, validate=_between(0, MAX_INT32))
    sync_start_date = Text(required=True)
    robot_username = Text(required=True, validate=validate.Length(max=ROBOT_MAX))
    root_rule = RootRule(required=True)
    skopeo_timeout_interval = StrictInteger(required=True,
                                            validate=_between(MIN_SKOPEO_TIMEOUT, MAX_INT32))
    architecture_filter = _architectures(load_default=None)


class QuayDate(fields.Field):
    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return format_date(value)


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
