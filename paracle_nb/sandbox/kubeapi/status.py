"""Errors of the lab's Kubernetes API, answered as ``Status`` objects."""

from __future__ import annotations

from typing import Any

from paracle_nb.errors import SandboxError

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(SandboxError):
    """A request to the lab's Kubernetes API fails with an HTTP status."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, step="kubeapi", detail=f"HTTP {code}")
        self.code = code
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def to_status(self) -> dict[str, Any]:
        """Return the ``Status`` object a real API server would answer."""
        return status_body(self.code, self.message, self.reason, self.details)


def status_body(
    code: int,
    message: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a ``Status`` object for ``code``; successes carry no reason."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, ""),
        "code": code,
    }
    if code < 400:
        body.pop("reason")
    if details:
        body["details"] = details
    return body


def _details(resource: str, group: str, name: str) -> dict[str, Any]:
    details = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return details


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    """Return the 404 for a missing object, e.g. ``pods "x" not found``."""
    message = f'{_qualified(resource, group)} "{name}" not found'
    return ApiError(404, message, details=_details(resource, group, name))


def already_exists(resource: str, group: str, name: str) -> ApiError:
    """Return the 409 for creating an object whose name is taken."""
    message = f'{_qualified(resource, group)} "{name}" already exists'
    return ApiError(
        409, message, reason="AlreadyExists", details=_details(resource, group, name)
    )


def conflict(resource: str, group: str, name: str) -> ApiError:
    """Return the 409 for an update made against a stale resourceVersion."""
    message = (
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": '
        "the object has been modified; please apply your changes to the latest "
        "version and try again"
    )
    return ApiError(409, message, details=_details(resource, group, name))


def bad_request(message: str) -> ApiError:
    """Return a 400 with ``message``."""
    return ApiError(400, message)
