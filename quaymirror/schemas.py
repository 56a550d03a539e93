"""What every domain's schemas share: the base of the query-string schemas and their fields, the base of the
response views, and one date field per wire format.

The domains' ``schemas.py`` say what each endpoint accepts (request bodies, query strings) and what it
answers (views); the resources load and dump with them, and the OpenAPI document is generated from them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, missing, post_dump, validate
from marshmallow.types import ErrorMessages

from quaymirror import dates

# The signed 64-bit range: SQLite's INTEGER and PostgreSQL's bigint. Neither database stores a value outside
# it, PostgreSQL refuses one as an OFFSET and SQLite's driver cannot even bind one (OverflowError, a 500), so
# every integer a request carries is checked against it before any query sees it.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


# ------------------------------------------------------------------ query strings
class Query(Schema):
    """Base of the schemas of query strings: arguments nobody asked for are ignored, as Quay does."""

    class Meta:
        unknown = EXCLUDE


class Int64(fields.Integer):
    """An integer query argument, never outside ``minimum``..``maximum`` (at most the signed 64-bit range).

    With ``empty_is_missing``, ``?page=`` means the default (as the history endpoints always read it).
    """

    # Typed as marshmallow declares it (mypy refuses a ClassVar over its instance attribute).
    default_error_messages: ErrorMessages = {  # noqa: RUF012
        "invalid": "must be an integer",
        "range": "must be between {min} and {max}",
    }

    def __init__(self, *, minimum: int = INT64_MIN, maximum: int = INT64_MAX, empty_is_missing: bool = False,
                 **kwargs: Any) -> None:
        if not INT64_MIN <= minimum <= maximum <= INT64_MAX:
            raise ValueError(f"bounds {minimum}..{maximum} leave the signed 64-bit range")
        super().__init__(**kwargs)
        self.empty_is_missing = empty_is_missing
        self.validators.append(validate.Range(min=minimum, max=maximum, error=str(self.error_messages["range"])))

    def deserialize(self, value: Any, attr: str | None = None, data: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> Any:
        if self.empty_is_missing and value == "":
            value = missing
        return super().deserialize(value, attr, data, **kwargs)


class QueryBool(fields.Boolean):
    """A query flag, compared stripped and case-insensitively with the endpoint's own words.

    With ``falsy=None`` every word but the truthy ones means false (Quay's lenient flags); otherwise a word
    in neither set is a 400.
    """

    # Typed as marshmallow declares it (mypy refuses a ClassVar over its instance attribute).
    default_error_messages: ErrorMessages = {"invalid": "must be a boolean"}  # noqa: RUF012

    def __init__(self, *, truthy: Collection[str], falsy: Collection[str] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.words_true = frozenset(truthy)
        self.words_false = None if falsy is None else frozenset(falsy)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        word = str(value).strip().lower()
        if word in self.words_true:
            return True
        if self.words_false is None or word in self.words_false:
            return False
        raise self.make_error("invalid", input=value)


# ------------------------------------------------------------------ response views
class View(Schema):
    """Base of the response views: what a resource answers, and (through apispec) what the OpenAPI document
    says it answers. Fields always present in the body are ``required`` (the document's ``required``).

    Some of Quay's bodies leave a key out, rather than answer null, where it does not apply (a robot has no
    avatar; ``is_org_member`` only exists in an organization): a view lists those keys in ``omit_when_none``.
    """

    omit_when_none: tuple[str, ...] = ()

    class Meta:
        unknown = EXCLUDE  # no "additionalProperties: false" in the document: a client must accept new keys

    @post_dump
    def _omit(self, body: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        for key in self.omit_when_none:
            if key in body and body[key] is None:
                del body[key]
        return body


class Group(fields.Nested):
    """A nested object of the body whose values are attributes of the dumped object itself (Quay groups a run's
    tag counters under ``tags``, for instance)."""

    def get_value(self, obj: Any, attr: str, accessor: Any = None, default: Any = missing) -> Any:
        return obj


# ------------------------------------------------------------------ dates, one field per wire format
class DateText(fields.Field[datetime]):
    """Base of the date fields: a datetime the body writes as text (the OpenAPI document says a string)."""


class QuayDate(DateText):
    """Quay's ``%Y-%m-%dT%H:%M:%SZ`` (``dates.format_date``)."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: object, **kwargs: object) -> str | None:
        return dates.format_date(value)


class Rfc2822Date(DateText):
    """A robot's ``created`` (``dates.format_rfc2822``)."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: object, **kwargs: object) -> str | None:
        return None if value is None else dates.format_rfc2822(value)


class IsoDate(DateText):
    """The mirror health's timestamps (``dates.format_iso``)."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: object, **kwargs: object) -> str | None:
        return dates.format_iso(value)
