"""Server-side printing: lists answered as ``meta.k8s.io`` Tables for kubectl."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from .selectors import selector_string
from .timeutil import age, human_duration, parse_time

Obj = dict[str, Any]
Cell = Callable[[Obj, dt.datetime], Any]

NONE = "<none>"


def pod_phase_text(pod: Obj) -> str:
    """Return the STATUS kubectl shows for a pod: ``CrashLoopBackOff``, ``Running``...

    >>> pod_phase_text({"status": {"phase": "Running", "containerStatuses": [
    ...     {"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}})
    'CrashLoopBackOff'
    """
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"

    # An init container still working or failing names the whole pod.
    inits = status.get("initContainerStatuses") or []
    for index, container in enumerate(inits):
        state = container.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated and terminated.get("exitCode") == 0:
            continue
        if terminated:
            return "Init:" + (
                terminated.get("reason") or f"ExitCode:{terminated.get('exitCode')}"
            )
        if waiting and waiting.get("reason") not in (None, "", "PodInitializing"):
            return "Init:" + waiting["reason"]
        total = len((pod.get("spec") or {}).get("initContainers") or inits)
        return f"Init:{index}/{total}"

    has_running = False
    for container in reversed(status.get("containerStatuses") or []):
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated:
            reason = (
                terminated.get("reason") or f"ExitCode:{terminated.get('exitCode')}"
            )
        elif container.get("ready") and "running" in state:
            has_running = True

    if reason == "Completed" and has_running:
        reason = "Running"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    return reason


def _pod_ready(pod: Obj, _: dt.datetime) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    total = len((pod.get("spec") or {}).get("containers") or statuses)
    return f"{ready}/{total}"


def _pod_restarts(pod: Obj, now: dt.datetime) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    finished = [
        parse_time(
            ((c.get("lastState") or {}).get("terminated") or {}).get("finishedAt", "")
        )
        for c in statuses
    ]
    last = max((t for t in finished if t is not None), default=None)
    if restarts and last is not None:
        return f"{restarts} ({human_duration((now - last).total_seconds())} ago)"
    return str(restarts)


def _node_status(node: Obj, _: dt.datetime) -> str:
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    text = "Ready" if ready and ready.get("status") == "True" else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    return text


def _node_roles(node: Obj, _: dt.datetime) -> str:
    prefix = "node-role.kubernetes.io/"
    labels = (node.get("metadata") or {}).get("labels") or {}
    roles = sorted(k[len(prefix) :] for k in labels if k.startswith(prefix))
    return ",".join(roles) or NONE


def _node_address(kind: str) -> Cell:
    def cell(node: Obj, _: dt.datetime) -> str:
        addresses = (node.get("status") or {}).get("addresses") or []
        return next((a["address"] for a in addresses if a.get("type") == kind), NONE)

    return cell


def _field(path: str, default: Any = NONE) -> Cell:
    """Return a cell reading the dotted ``path`` of an object."""

    def cell(obj: Obj, _: dt.datetime) -> Any:
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        return default if current in (None, "") else current

    return cell


def _ratio(ready_path: str, total_path: str) -> Cell:
    ready, total = _field(ready_path, 0), _field(total_path, 0)
    return lambda obj, now: f"{ready(obj, now)}/{total(obj, now)}"


def _containers(attribute: str) -> Cell:
    def cell(obj: Obj, _: dt.datetime) -> str:
        spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        return ",".join(c.get(attribute, "") for c in spec.get("containers") or [])

    return cell


def _selector(obj: Obj, _: dt.datetime) -> str:
    return selector_string((obj.get("spec") or {}).get("selector")) or NONE


def _service_ports(svc: Obj, _: dt.datetime) -> str:
    ports = (svc.get("spec") or {}).get("ports") or []
    texts = []
    for port in ports:
        node_port = f":{port['nodePort']}" if port.get("nodePort") else ""
        texts.append(f"{port.get('port')}{node_port}/{port.get('protocol', 'TCP')}")
    return ",".join(texts) or NONE


def _service_selector(svc: Obj, _: dt.datetime) -> str:
    selector = (svc.get("spec") or {}).get("selector") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or NONE


def _external_ip(svc: Obj, _: dt.datetime) -> str:
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ips = [i.get("ip") or i.get("hostname") for i in ingress]
    ips += (svc.get("spec") or {}).get("externalIPs") or []
    if ips:
        return ",".join(ips)
    return (
        "<pending>" if (svc.get("spec") or {}).get("type") == "LoadBalancer" else NONE
    )


def _endpoints(ep: Obj, _: dt.datetime) -> str:
    pairs = [
        f"{address['ip']}:{port['port']}"
        for subset in ep.get("subsets") or []
        for port in subset.get("ports") or [{}]
        for address in subset.get("addresses") or []
        if "port" in port
    ]
    shown = ",".join(pairs[:3])
    return shown + (f" + {len(pairs) - 3} more..." if len(pairs) > 3 else "") or NONE


def _count(path: str) -> Cell:
    read = _field(path, {})
    return lambda obj, now: len(read(obj, now) or {})


def _event_age(path: str) -> Cell:
    def cell(event: Obj, now: dt.datetime) -> str:
        return age(event.get(path) or event.get("eventTime"), now)

    return cell


def _event_object(event: Obj, _: dt.datetime) -> str:
    involved = event.get("involvedObject") or {}
    return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"


def _ingress_hosts(ing: Obj, _: dt.datetime) -> str:
    hosts = [r.get("host", "*") for r in (ing.get("spec") or {}).get("rules") or []]
    return ",".join(hosts) or "*"


def _ingress_address(ing: Obj, _: dt.datetime) -> str:
    ingress = ((ing.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return ",".join(i.get("ip") or i.get("hostname", "") for i in ingress)


def _ingress_ports(ing: Obj, _: dt.datetime) -> str:
    return "80, 443" if (ing.get("spec") or {}).get("tls") else "80"


def _name(obj: Obj, _: dt.datetime) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _age(obj: Obj, now: dt.datetime) -> str:
    return age((obj.get("metadata") or {}).get("creationTimestamp"), now)


# (title, type, priority, cell). Priority 1 columns show only with -o wide.
Column = tuple[str, str, int, Cell]
_NAME: Column = ("Name", "string", 0, _name)
_AGE: Column = ("Age", "string", 0, _age)

COLUMNS: dict[str, list[Column]] = {
    "Pod": [
        _NAME,
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, lambda pod, now: pod_phase_text(pod)),
        ("Restarts", "string", 0, _pod_restarts),
        _AGE,
        ("IP", "string", 1, _field("status.podIP")),
        ("Node", "string", 1, _field("spec.nodeName")),
        ("Nominated Node", "string", 1, _field("status.nominatedNodeName")),
        ("Readiness Gates", "string", 1, lambda pod, now: NONE),
    ],
    "Node": [
        _NAME,
        ("Status", "string", 0, _node_status),
        ("Roles", "string", 0, _node_roles),
        _AGE,
        ("Version", "string", 0, _field("status.nodeInfo.kubeletVersion", "")),
        ("Internal-IP", "string", 1, _node_address("InternalIP")),
        ("External-IP", "string", 1, _node_address("ExternalIP")),
        ("OS-Image", "string", 1, _field("status.nodeInfo.osImage", "<unknown>")),
        ("Kernel-Version", "string", 1,
         _field("status.nodeInfo.kernelVersion", "<unknown>")),
        ("Container-Runtime", "string", 1,
         _field("status.nodeInfo.containerRuntimeVersion", "<unknown>")),
    ],
    "Deployment": [
        _NAME,
        ("Ready", "string", 0, _ratio("status.readyReplicas", "spec.replicas")),
        ("Up-to-date", "integer", 0, _field("status.updatedReplicas", 0)),
        ("Available", "integer", 0, _field("status.availableReplicas", 0)),
        _AGE,
        ("Containers", "string", 1, _containers("name")),
        ("Images", "string", 1, _containers("image")),
        ("Selector", "string", 1, _selector),
    ],
    "ReplicaSet": [
        _NAME,
        ("Desired", "integer", 0, _field("spec.replicas", 0)),
        ("Current", "integer", 0, _field("status.replicas", 0)),
        ("Ready", "integer", 0, _field("status.readyReplicas", 0)),
        _AGE,
        ("Containers", "string", 1, _containers("name")),
        ("Images", "string", 1, _containers("image")),
        ("Selector", "string", 1, _selector),
    ],
    "StatefulSet": [
        _NAME,
        ("Ready", "string", 0, _ratio("status.readyReplicas", "spec.replicas")),
        _AGE,
        ("Containers", "string", 1, _containers("name")),
        ("Images", "string", 1, _containers("image")),
    ],
    "Service": [
        _NAME,
        ("Type", "string", 0, _field("spec.type", "ClusterIP")),
        ("Cluster-IP", "string", 0, _field("spec.clusterIP")),
        ("External-IP", "string", 0, _external_ip),
        ("Port(s)", "string", 0, _service_ports),
        _AGE,
        ("Selector", "string", 1, _service_selector),
    ],
    "Endpoints": [_NAME, ("Endpoints", "string", 0, _endpoints), _AGE],
    "ConfigMap": [_NAME, ("Data", "integer", 0, _count("data")), _AGE],
    "Secret": [
        _NAME,
        ("Type", "string", 0, _field("type", "Opaque")),
        ("Data", "integer", 0, _count("data")),
        _AGE,
    ],
    "Namespace": [
        _NAME, ("Status", "string", 0, _field("status.phase", "Active")), _AGE
    ],
    "ServiceAccount": [_NAME, ("Secrets", "integer", 0, _count("secrets")), _AGE],
    "PersistentVolumeClaim": [
        _NAME,
        ("Status", "string", 0, _field("status.phase", "Pending")),
        ("Volume", "string", 0, _field("spec.volumeName", "")),
        ("Capacity", "string", 0, _field("status.capacity.storage", "")),
        ("Access Modes", "string", 0,
         lambda pvc, now: ",".join((pvc.get("status") or {}).get("accessModes") or [])
         .replace("ReadWriteOnce", "RWO").replace("ReadOnlyMany", "ROX")
         .replace("ReadWriteMany", "RWX")),
        ("StorageClass", "string", 0, _field("spec.storageClassName", "")),
        _AGE,
    ],
    "PodDisruptionBudget": [
        _NAME,
        ("Min Available", "string", 0, _field("spec.minAvailable", "N/A")),
        ("Max Unavailable", "string", 0, _field("spec.maxUnavailable", "N/A")),
        ("Allowed Disruptions", "integer", 0, _field("status.disruptionsAllowed", 0)),
        _AGE,
    ],
    "Ingress": [
        _NAME,
        ("Class", "string", 0, _field("spec.ingressClassName")),
        ("Hosts", "string", 0, _ingress_hosts),
        ("Address", "string", 0, _ingress_address),
        ("Ports", "string", 0, _ingress_ports),
        _AGE,
    ],
    "Event": [
        ("Last Seen", "string", 0, _event_age("lastTimestamp")),
        ("Type", "string", 0, _field("type", "")),
        ("Reason", "string", 0, _field("reason", "")),
        ("Object", "string", 0, _event_object),
        ("Subobject", "string", 1, _field("involvedObject.fieldPath", "")),
        ("Source", "string", 1, _field("source.component", "")),
        ("Message", "string", 0, _field("message", "")),
        ("First Seen", "string", 1, _event_age("firstTimestamp")),
        ("Count", "integer", 1, _field("count", 1)),
        ("Name", "string", 1, _name),
    ],
}  # fmt: skip


def _partial(obj: Obj, api_version: str) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": api_version,
        "metadata": obj.get("metadata") or {},
    }


def to_table(
    objects: list[Obj],
    kind: str,
    *,
    revision: str,
    now: dt.datetime,
    include_object: str = "Metadata",
    api_version: str = "meta.k8s.io/v1",
) -> Obj:
    """Return a ``Table`` of ``objects`` with the columns kubectl shows for ``kind``.

    ``include_object`` is kubectl's ``includeObject``: ``None``, ``Metadata``
    (a PartialObjectMetadata per row) or ``Object`` (the whole object).
    """
    columns = COLUMNS.get(kind, [_NAME, _AGE])
    definitions = [
        {
            "name": title,
            "type": kind_of_cell,
            "format": "name" if cell is _name else "",
            "description": title,
            "priority": priority,
        }
        for title, kind_of_cell, priority, cell in columns
    ]

    rows = []
    for obj in objects:
        row: Obj = {"cells": [cell(obj, now) for _, _, _, cell in columns]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = _partial(obj, api_version)
        rows.append(row)

    return {
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": {"resourceVersion": revision},
        "columnDefinitions": definitions,
        "rows": rows,
    }


def partial_list(objects: list[Obj], revision: str, api_version: str) -> Obj:
    """Return a ``PartialObjectMetadataList`` of ``objects``."""
    return {
        "kind": "PartialObjectMetadataList",
        "apiVersion": api_version,
        "metadata": {"resourceVersion": revision},
        "items": [_partial(obj, api_version) for obj in objects],
    }
