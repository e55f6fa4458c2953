"""Quick-diagnostics reads: the API's health endpoint and the namespace's pods.

:func:`check_health` is the guide's ``curl -i https://<api>/health``;
:func:`probe_health` is the same check for triage, where an API that does
not answer is a symptom to report, not a step that failed.
:func:`namespace_pods` is ``kubectl get pods -n <namespace>`` with the
API's pods first.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from paracle_nb import kube
from paracle_nb.errors import ParameterError, TargetTimeout, TargetUnreachable
from paracle_nb.target import Target

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

BODY_HEAD = 200  # characters of the answer kept, as `curl -i | head` would


def check_health(target: Target, path: str = "/health") -> dict[str, Any]:
    """Return the health endpoint's status code, latency and body head."""
    import urllib3

    if not target.api_url:
        raise ParameterError("no `api_url` in the parameters", target="api")
    url = target.api_url.rstrip("/") + path
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(
        total=target.timeout_seconds))
    started = time.monotonic()
    try:
        response = http.request("GET", url)
    except urllib3.exceptions.NewConnectionError as exc:
        # urllib3 makes a refused connection a kind of connect timeout.
        refused = str(exc).rsplit(": ", 1)[-1]
        raise TargetUnreachable(f"{url} is unreachable ({refused})",
                                target="api") from None
    except urllib3.exceptions.TimeoutError:
        raise TargetTimeout(f"{url} did not answer within "
                            f"{target.timeout_seconds:g}s", target="api") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TargetUnreachable(f"{url} is unreachable ({reason})",
                                target="api") from None
    finally:
        http.clear()
    return {"url": url, "reachable": True, "status": response.status,
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
            "body": response.data[:BODY_HEAD].decode(errors="replace")}


def probe_health(target: Target, path: str = "/health") -> dict[str, Any]:
    """Return :func:`check_health`'s answer, or why the API did not answer.

    An unreachable or silent API gives ``reachable: False``, ``status:
    None`` and the ``error``; a missing ``api_url`` still raises.
    """
    if not target.api_url:
        raise ParameterError("no `api_url` in the parameters", target="api")
    url = target.api_url.rstrip("/") + path
    started = time.monotonic()
    try:
        return check_health(target, path)
    except (TargetUnreachable, TargetTimeout) as exc:
        log.debug("health check of %s failed: %s", url, exc)
        return {"url": url, "reachable": False, "status": None,
                "latency_ms": round((time.monotonic() - started) * 1000, 1),
                "body": "", "error": str(exc)}


def namespace_pods(target: Target) -> pd.DataFrame:
    """Return every pod of the namespace, the API's pods first.

    :func:`paracle_nb.kube.pod_table` plus an ``api`` column: True for the
    pods the target's ``app_label`` selects.
    """
    every_pod = kube.list_pods(target)
    api_pods = {pod["metadata"]["name"]
                for pod in kube.list_pods(target, target.app_label)}

    table = kube.pod_table(every_pod)
    table.insert(1, "api", table["pod"].isin(api_pods))
    return table.sort_values(["api", "pod"], ascending=[False, True],
                             ignore_index=True)


def postgres_slots(target: Target) -> dict[str, Any]:
    """Connect once and read the slots in use against the limit.

    A refusal for lack of slots is raised (:class:`ConnectionRefused`
    with the server's message): for triage it is the symptom itself.
    """
    from paracle_nb import postgres

    with postgres.connect(target) as conn:
        limits = postgres.connection_limits(conn)
    usable = limits["max_connections"] - limits["superuser_reserved"]
    return {**limits, "usable": usable,
            "usage_ratio": round(limits["client_backends"] / usable, 3)
            if usable else None}


def redis_state(target: Target) -> dict[str, Any]:
    """One PING, memory against maxmemory and clients against maxclients."""
    from paracle_nb import redis as redis_helpers
    from paracle_nb.redis_clients import client_limits

    client = redis_helpers.connect(target)
    try:
        started = time.monotonic()
        redis_helpers._guard(target, "PING", client.ping)
        ping_ms = (time.monotonic() - started) * 1000
        memory = redis_helpers.memory_info(target, client)
        clients = client_limits(target, client)
    finally:
        client.close()
    return {"ping_ms": round(ping_ms, 1), "used_memory": memory["used_memory"],
            "maxmemory": memory["maxmemory"],
            "maxmemory_policy": memory["maxmemory_policy"],
            "memory_ratio": memory["usage_ratio"],
            "connected_clients": clients["connected_clients"],
            "maxclients": clients["maxclients"],
            "clients_ratio": clients["usage_ratio"]}
