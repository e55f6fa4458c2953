"""Read helpers for the Kubernetes API, through the official client.

Every call carries a timeout and answers with plain dicts or DataFrames.
Responses are read as JSON rather than the client's model objects: it is
several times faster on large namespaces and keeps every field as the
API server sent it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from paracle_nb.errors import (
    Forbidden,
    KubernetesError,
    ParameterError,
    TargetTimeout,
    TargetUnreachable,
)
from paracle_nb.target import Target
from paracle_nb.units import parse_quantity

if TYPE_CHECKING:
    import pandas as pd
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=16)
def _api_client(kubeconfig: str | None, context: str | None) -> ApiClient:
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=kubeconfig,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except ConfigException as exc:
        raise ParameterError(f"kubeconfig: {exc}", target="kubernetes") from None
    except OSError as exc:
        raise ParameterError(
            f"cannot read kubeconfig {kubeconfig}: {exc.strerror}", target="kubernetes"
        ) from None
    # A stalled API server must cost one timeout, not several.
    configuration.retries = 0
    return client.ApiClient(configuration)


def api_client(target: Target) -> ApiClient:
    """Return the (cached) API client for a target's kubeconfig and context."""
    return _api_client(target.kubeconfig, target.kube_context)


def _call(target: Target, what: str, method: Callable[..., Any], *args: Any,
          **kw: Any) -> Any:
    """Call one client method; return the parsed JSON or text body."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    timeout = target.timeout_seconds
    try:
        response = method(*args, _preload_content=False,
                          _request_timeout=(timeout, timeout), **kw)
    except ApiException as exc:
        detail = _status_message(exc.body) or exc.reason
        kind = Forbidden if exc.status == 403 else KubernetesError
        raise kind(f"{what} failed with HTTP {exc.status}", status=exc.status,
                   target="kubernetes", detail=detail) from None
    except urllib3.exceptions.ReadTimeoutError:
        raise TargetTimeout(f"{what}: no answer within {timeout:g}s",
                            target="kubernetes") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
            # Connected, then no answer: a stalled server, not a missing one.
            raise TargetTimeout(f"{what}: no answer within {timeout:g}s",
                                target="kubernetes") from None
        raise TargetUnreachable(f"{what}: API server unreachable ({reason})",
                                target="kubernetes") from None

    body = response.data
    if "json" in (response.headers.get("Content-Type") or ""):
        return json.loads(body)
    return body.decode("utf-8", errors="replace")


def _status_message(body: Any) -> str | None:
    try:
        return str(json.loads(body).get("message")) if body else None
    except (ValueError, AttributeError):
        return None


def _core(target: Target) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client(target))


def _apps(target: Target) -> Any:
    from kubernetes import client

    return client.AppsV1Api(api_client(target))


def _policy(target: Target) -> Any:
    from kubernetes import client

    return client.PolicyV1Api(api_client(target))


def _networking(target: Target) -> Any:
    from kubernetes import client

    return client.NetworkingV1Api(api_client(target))


def list_pods(target: Target, selector: str | None = None,
              namespace: str | None = None) -> list[dict[str, Any]]:
    """Return the pods matching a label selector, as the API sent them."""
    ns = namespace or target.namespace
    body = _call(target, f"list pods in {ns}", _core(target).list_namespaced_pod,
                 ns, label_selector=selector or "")
    return list(body.get("items", []))


def get_deployment(target: Target, name: str) -> dict[str, Any]:
    """Return one deployment of the target's namespace."""
    return dict(_call(target, f"read deployment {name}",
                      _apps(target).read_namespaced_deployment,
                      name, target.namespace))


def get_config_map(target: Target, name: str) -> dict[str, Any]:
    """Return one ConfigMap of the target's namespace."""
    return dict(_call(target, f"read configmap {name}",
                      _core(target).read_namespaced_config_map,
                      name, target.namespace))


def previous_logs(target: Target, pod: str, container: str,
                  tail_lines: int = 50) -> str:
    """Return the log of a container's previous (crashed) instance."""
    return str(_call(target, f"previous logs of {pod}/{container}",
                     _core(target).read_namespaced_pod_log, pod, target.namespace,
                     container=container, previous=True, tail_lines=tail_lines))


def pod_logs(target: Target, pod: str, container: str | None = None,
             tail_lines: int | None = 100) -> str:
    """Return the current log of a pod's container."""
    kw: dict[str, Any] = {"container": container} if container else {}
    if tail_lines:
        kw["tail_lines"] = tail_lines
    return str(_call(target, f"logs of {pod}", _core(target).read_namespaced_pod_log,
                     pod, target.namespace, **kw))


def pod_events(target: Target, pods: Any = None) -> pd.DataFrame:
    """Return the events of the namespace's pods, newest first.

    With ``pods`` (names, or a pod table), only the events of those pods.
    """
    import pandas as pd

    if hasattr(pods, "columns"):
        pods = list(pods["pod"])
    # A set: namespaces hold thousands of pods and tens of thousands of events.
    wanted = None if pods is None else set(pods)

    body = _call(target, f"list events in {target.namespace}",
                 _core(target).list_namespaced_event, target.namespace,
                 field_selector="involvedObject.kind=Pod")
    rows = []
    for event in body.get("items", []):
        involved = event.get("involvedObject", {})
        if wanted is not None and involved.get("name") not in wanted:
            continue
        rows.append({
            "last_seen": _timestamp(event.get("lastTimestamp")
                                    or event.get("eventTime")),
            "type": event.get("type"),
            "reason": event.get("reason"),
            "object": f"pod/{involved.get('name')}",
            "count": event.get("count") or 1,
            "message": event.get("message", ""),
        })
    columns = ["last_seen", "type", "reason", "object", "count", "message"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("last_seen", ascending=False, ignore_index=True)


def pod_metrics(target: Target, selector: str | None = None) -> pd.DataFrame:
    """Return per-container CPU (cores) and memory (bytes) from metrics.k8s.io."""
    import pandas as pd
    from kubernetes import client

    api = client.CustomObjectsApi(api_client(target))
    body = _call(target, "read pod metrics", api.list_namespaced_custom_object,
                 "metrics.k8s.io", "v1beta1", target.namespace, "pods",
                 label_selector=selector or "")
    rows = [
        {
            "pod": item["metadata"]["name"],
            "container": c["name"],
            "cpu_cores": parse_quantity(c["usage"].get("cpu")),
            "memory_bytes": parse_quantity(c["usage"].get("memory")),
        }
        for item in body.get("items", [])
        for c in item.get("containers", [])
    ]
    return pd.DataFrame(rows, columns=["pod", "container", "cpu_cores",
                                       "memory_bytes"])


def pod_table(pods: list[dict[str, Any]], now: dt.datetime | None = None
              ) -> pd.DataFrame:
    """Return one row per pod, as ``kubectl get pods -o wide`` shows it."""
    import pandas as pd

    now = now or dt.datetime.now(dt.timezone.utc)
    rows = []
    for pod in pods:
        statuses = pod.get("status", {}).get("containerStatuses") or []
        created = _timestamp(pod["metadata"].get("creationTimestamp"))
        rows.append({
            "pod": pod["metadata"]["name"],
            "status": pod_status(pod),
            "ready": f"{sum(bool(s.get('ready')) for s in statuses)}/"
                     f"{len(pod.get('spec', {}).get('containers', []))}",
            "restarts": sum(int(s.get("restartCount", 0)) for s in statuses),
            "node": pod.get("spec", {}).get("nodeName"),
            "age_s": (now - created).total_seconds() if created else None,
        })
    columns = ["pod", "status", "ready", "restarts", "node", "age_s"]
    return pd.DataFrame(rows, columns=columns)


def container_table(pods: list[dict[str, Any]]) -> pd.DataFrame:
    """Return one row per container: state, restarts, last termination, limits."""
    import pandas as pd

    rows = []
    for pod in pods:
        specs = {c["name"]: c for c in pod.get("spec", {}).get("containers", [])}
        for status in pod.get("status", {}).get("containerStatuses") or []:
            spec = specs.get(status["name"], {})
            resources = spec.get("resources", {})
            state = status.get("state", {})
            last = status.get("lastState", {}).get("terminated") or {}
            state_name = next(iter(state), "unknown")
            rows.append({
                "pod": pod["metadata"]["name"],
                "container": status["name"],
                "state": state_name,
                "reason": (state.get(state_name) or {}).get("reason"),
                "ready": bool(status.get("ready")),
                "restarts": int(status.get("restartCount", 0)),
                "last_reason": last.get("reason"),
                "last_exit_code": last.get("exitCode"),
                "last_finished": _timestamp(last.get("finishedAt")),
                "memory_limit": parse_quantity(
                    resources.get("limits", {}).get("memory")),
                "memory_request": parse_quantity(
                    resources.get("requests", {}).get("memory")),
                "image": status.get("image") or spec.get("image"),
            })
    columns = ["pod", "container", "state", "reason", "ready", "restarts",
               "last_reason", "last_exit_code", "last_finished", "memory_limit",
               "memory_request", "image"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["last_exit_code"] = frame["last_exit_code"].astype("Int64")
    return frame


def pod_status(pod: dict[str, Any]) -> str:
    """Return the one-word status kubectl would print for a pod."""
    status = pod.get("status", {})
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for container in status.get("initContainerStatuses") or []:
        waiting = container.get("state", {}).get("waiting")
        if waiting and waiting.get("reason"):
            return f"Init:{waiting['reason']}"
    for container in status.get("containerStatuses") or []:
        state = container.get("state", {})
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    return str(reason)


def _timestamp(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def previous_logs_table(target: Target, containers: pd.DataFrame,
                        tail_lines: int = 30) -> pd.DataFrame:
    """Return the last lines each listed container wrote before it died."""
    import pandas as pd

    rows = []
    for row in containers.itertuples():
        try:
            text = previous_logs(target, row.pod, row.container, tail_lines)
        except KubernetesError as exc:
            if exc.status != 400:  # 400: this container never restarted
                raise
            text = ""
        lines = text.rstrip("\n").splitlines()
        rows.append({"pod": row.pod, "container": row.container,
                     "restarts": row.restarts,
                     "last_line": lines[-1] if lines else "", "log": text})
    return pd.DataFrame(rows, columns=["pod", "container", "restarts", "last_line",
                                       "log"])


_LISTS = {
    "pods": ("core", "list_namespaced_pod"),
    "events": ("core", "list_namespaced_event"),
    "services": ("core", "list_namespaced_service"),
    "endpoints": ("core", "list_namespaced_endpoints"),
    "configmaps": ("core", "list_namespaced_config_map"),
    "secrets": ("core", "list_namespaced_secret"),
    "deployments": ("apps", "list_namespaced_deployment"),
    "replicasets": ("apps", "list_namespaced_replica_set"),
    "statefulsets": ("apps", "list_namespaced_stateful_set"),
}


def list_namespaced(target: Target, resource: str, selector: str | None = None
                    ) -> list[dict[str, Any]]:
    """Return every object of one kind in the target's namespace, as sent."""
    group, method = _LISTS[resource]
    api = _core(target) if group == "core" else _apps(target)
    body = _call(target, f"list {resource} in {target.namespace}",
                 getattr(api, method), target.namespace, label_selector=selector or "")
    return list(body.get("items", []))
