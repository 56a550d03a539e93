"""A webhook's body template, as Quay's: JSON whose strings may hold ``${jsonpath}`` expressions.

Quay's rule (util/jsontemplate.py, said in words): the template is a JSON document; every string in it, keys
included, is processed. A string that is exactly one ``${expr}`` becomes the expression's raw value (a list
when it matches several values, an object, a number; ``null`` when it matches nothing). An expression inside
a longer string is replaced by its value as text (several matches joined with ``,``; ``(none)`` when it
matches nothing). Expressions are JSONPath (Quay uses jsonpath-rw; jsonpath-ng is its maintained fork, with
the same grammar). The template is checked when the notification is created, with Quay's messages.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonpath_ng import parse as parse_path

_EXPRESSION = re.compile(r"\$\{([^}]*)\}")


class TemplateInvalid(ValueError):
    """The template cannot be used; the message is Quay's, for the API's 400."""


def check(template: str) -> None:
    """Raise TemplateInvalid, with Quay's message, unless ``template`` parses and every expression does."""
    render(template, {})


def render(template: str, data: dict[str, Any]) -> Any:
    """The body ``template`` makes of ``data`` (the event's payload)."""
    try:
        parsed = json.loads(template)
    except ValueError as error:
        raise TemplateInvalid(f"Could not parse template: {error}") from None
    return _process(parsed, data)


def _process(value: Any, data: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return _string(value, data)
    if isinstance(value, dict):
        return {_text(_process(key, data)): _process(item, data) for key, item in value.items()}
    if isinstance(value, list):
        return [_process(item, data) for item in value]
    return value


def _string(text: str, data: dict[str, Any]) -> Any:
    whole = _EXPRESSION.fullmatch(text)
    if whole:
        values = _find(whole.group(1), data)
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def inline(match: re.Match[str]) -> str:
        values = _find(match.group(1), data)
        return ",".join(_text(value) for value in values) if values else "(none)"

    return _EXPRESSION.sub(inline, text)


def _find(expression: str, data: dict[str, Any]) -> list[Any]:
    if not expression.strip():
        raise TemplateInvalid("Empty expression found")
    try:
        path = parse_path(expression)
    except Exception as error:  # noqa: BLE001  # the parser raises several kinds, all meaning "not JSONPath"
        raise TemplateInvalid(f"For expression `{expression}`: {error}") from None
    return [match.value for match in path.find(data)]


def _text(value: Any) -> str:
    """A value inside a longer string: Python's ``str()``, as Quay puts it there."""
    return str(value)
