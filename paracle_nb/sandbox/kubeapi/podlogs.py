"""Pod logs as the kubelet serves them through ``GET .../pods/<name>/log``."""

from __future__ import annotations

from typing import Any

from .status import ApiError, bad_request
from .store import LogLine
from .timeutil import format_log_time

Obj = dict[str, Any]


def choose_container(pod: Obj, requested: str | None) -> str:
    """Return the container whose log is wanted; 400 when it is ambiguous.

    A pod with one container needs no name; with more, a real API server
    refuses to guess (kubectl picks a default before it asks).
    """
    spec = pod.get("spec") or {}
    name = pod["metadata"]["name"]
    containers = [c["name"] for c in spec.get("containers") or []]
    inits = [c["name"] for c in spec.get("initContainers") or []]

    if requested:
        if requested not in containers + inits:
            raise bad_request(f"container {requested} is not valid for pod {name}")
        return requested
    if len(containers) == 1:
        return containers[0]

    message = (
        f"a container name must be specified for pod {name}, "
        f"choose one of: [{' '.join(containers)}]"
    )
    if inits:
        message += f" or one of the init containers: [{' '.join(inits)}]"
    raise bad_request(message)


def restart_count(pod: Obj, container: str) -> int:
    """Return how often ``container`` of ``pod`` has restarted."""
    status = pod.get("status") or {}
    statuses = (status.get("containerStatuses") or []) + (
        status.get("initContainerStatuses") or []
    )
    return next(
        (int(s.get("restartCount", 0)) for s in statuses if s.get("name") == container),
        0,
    )


def check_previous(pod: Obj, container: str, lines: list[LogLine] | None) -> None:
    """Raise the 400 a real cluster gives for a previous log that cannot exist."""
    if lines is None or restart_count(pod, container) == 0:
        name = pod["metadata"]["name"]
        raise ApiError(
            400,
            f'previous terminated container "{container}" in pod "{name}" not found',
        )


def render_log(
    lines: list[LogLine],
    *,
    tail_lines: int | None = None,
    timestamps: bool = False,
    limit_bytes: int | None = None,
) -> bytes:
    """Return the log body: the last ``tail_lines`` lines, newline-terminated.

    ``sinceSeconds`` and ``sinceTime`` are not applied: scenario logs carry
    fixed times that would filter away relative to the lab's clock.
    """
    if tail_lines is not None:
        lines = lines[-tail_lines:] if tail_lines > 0 else []
    text = "".join(
        (f"{format_log_time(line.time)} " if timestamps else "") + line.text + "\n"
        for line in lines
    )
    body = text.encode("utf-8")
    return body[:limit_bytes] if limit_bytes is not None else body
