"""The error bodies Quay's clients parse, and the one place that renders them.

Quay answers most errors with its ApiError shape; a few handlers answer with a
bare ``{"detail": ...}`` or ``{"message": ...}`` body, and clients (and our
recorded exchanges) depend on which is which, so both exist here.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request

ERROR_DESCRIPTIONS = {
    "invalid_request": "The request was invalid. It may have contained invalid values or was improperly formatted.",
    "invalid_token": "The access token provided was invalid.",
    "insufficient_scope": "The access token did not have sufficient scope to access the requested resource.",
    "not_found": "The resource was not found.",
    "method_not_allowed": "The method is not allowed for the requested URL.",
    "request_too_large": "The request body is larger than the server accepts.",
    "service_unavailable": "The service is temporarily unavailable.",
    "internal_error": "An internal error occurred.",
}


def dumps(payload: Any) -> str:
    """flask-restful's JSON rendering, which is what Quay's API emits."""
    return json.dumps(payload) + "\n"


def json_response(payload: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(payload), status=status, mimetype="application/json", headers=headers)


class ApiError(Exception):
    """Quay's ApiError: ``{detail, error_message, error_type, title, type, status}``.

    Each kind says its status, Quay's ``error_type`` and the detail it answers with when given none, as
    class keywords: ``class NotFound(ApiError, status=404, error_type="not_found", detail="Not Found")``.
    """

    status = 500
    error_type = "internal_error"
    default_detail = "Internal Server Error"

    def __init_subclass__(cls, *, status: int, error_type: str, detail: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status, cls.error_type, cls.default_detail = status, error_type, detail

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.default_detail)
        self.detail = detail or self.default_detail

    def body(self) -> dict[str, Any]:
        base = request.host_url.rstrip("/") if request else ""
        return {
            "detail": self.detail,
            "error_message": self.detail,
            "error_type": self.error_type,
            "title": self.error_type,
            "type": f"{base}/api/v1/error/{self.error_type}",
            "status": self.status,
        }

    def response(self) -> Response:
        return json_response(self.body(), self.status)


class InvalidRequest(ApiError, status=400, error_type="invalid_request", detail="Invalid request"):
    pass


class NotFound(ApiError, status=404, error_type="not_found", detail="Not Found"):
    pass


class AuthenticationRequired(ApiError, status=401, error_type="invalid_token", detail="Requires authentication"):
    pass


class Forbidden(ApiError, status=403, error_type="insufficient_scope", detail="Unauthorized"):
    pass


class MethodNotAllowed(ApiError, status=405, error_type="method_not_allowed",
                       detail="The method is not allowed for the requested URL."):
    pass


class RequestTooLarge(ApiError, status=413, error_type="request_too_large",
                      detail="The request body is larger than 1 MiB."):
    pass


class ServiceUnavailable(ApiError, status=503, error_type="service_unavailable",
                         detail="The database is unavailable; try again shortly."):
    pass


class PlainError(Exception):
    """A bare JSON body Quay returns by hand, e.g. ``({"detail": msg}, 400)``."""

    def __init__(self, status: int, key: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.key = key
        self.message = message

    def response(self) -> Response:
        return json_response({self.key: self.message}, self.status)


def detail_error(status: int, message: str) -> PlainError:
    """Quay's hand-written ``{"detail": ...}`` answers (dates, 409, credentials)."""
    return PlainError(status, "detail", message)


def model_error(message: str) -> PlainError:
    """Quay's DataModelException answers: 400 ``{"message": ...}`` (robots)."""
    return PlainError(400, "message", message)
