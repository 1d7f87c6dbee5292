"""The error envelope Pivotal answers with, and the one exception that carries it.

Every non-2xx body is `{"error": {"type", "code", "message", "field"?}}` and the status decides
the type (section 3 of docs/pivotal-api.md): a handler raises `ApiError` anywhere and the pipeline
turns it into that body. Codes the docs leave unspecified are marked (assumed) in docs/sandbox.md
and can be renamed with `--error-code OLD=NEW`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

TYPE_FOR_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found",
    405: "invalid_request_error",  # (assumed) 405 is not in Pivotal's table
    409: "conflict",
    429: "rate_limit_error",
    500: "internal_error",
    503: "internal_error",  # (assumed) injected faults only
}


class ApiError(Exception):
    """A request Pivotal would refuse; rendered as the error envelope."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self, renames: Mapping[str, str] | None = None) -> bytes:
        code = renames.get(self.code, self.code) if renames else self.code
        error: dict[str, str] = {
            "type": TYPE_FOR_STATUS[self.status],
            "code": code,
            "message": self.message,
        }
        if self.field is not None:
            error["field"] = self.field
        return json.dumps({"error": error}, separators=(",", ":")).encode()


def bad_request(code: str, message: str, field: str | None = None) -> ApiError:
    return ApiError(400, code, message, field)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def conflict(code: str, message: str, field: str | None = None) -> ApiError:
    return ApiError(409, code, message, field)
