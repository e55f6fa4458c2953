"""The one exception tree of paracle-nb.

Every error a runbook can meet is a :class:`ParacleError`, carrying which
target and which step it concerns and what the server said, so that a
finding can be written from it and an on-call engineer can act on it.
"""

from __future__ import annotations


class ParacleError(Exception):
    """Base of every paracle-nb error; ``str()`` is one actionable line."""

    def __init__(
        self,
        message: str,
        *,
        target: str | None = None,
        step: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        self.step = step
        self.detail = detail

    def __str__(self) -> str:
        where = f"{self.target}: " if self.target else ""
        said = f" (server said: {self.detail})" if self.detail else ""
        return f"{where}{self.message}{said}"


class ParameterError(ParacleError):
    """A parameter or parameters file is missing, unknown or malformed."""


class UnknownRunbook(ParacleError):
    """No runbook goes by the given name."""


class TargetUnreachable(ParacleError):
    """A server could not be reached: refused, timed out, or no route."""


class ConnectionRefused(TargetUnreachable):
    """The server answered but refused the connection (e.g. no free slot)."""


class AuthenticationFailed(ConnectionRefused):
    """The server refused the credentials (wrong or rotated password, key)."""


class TargetTimeout(TargetUnreachable):
    """A call to the target did not finish within its timeout."""


class PermissionDenied(ParacleError):
    """The target refused the call: the role in use may not do this."""


class KubernetesError(ParacleError):
    """The Kubernetes API answered with an error status."""

    def __init__(self, message: str, *, status: int | None = None, **kw: object):
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.status = status


class Forbidden(KubernetesError, PermissionDenied):
    """The Kubernetes API answered 403: the runbook's role may not do this."""


class SandboxError(ParacleError):
    """The local incident lab could not start, stop or reproduce something."""


class MissingServerBinary(SandboxError):
    """A server binary the lab needs is not installed; says what to install."""
