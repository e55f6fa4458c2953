"""Read helpers for scheduling: nodes, what is requested on them, taints, PDBs.

The reads go through :func:`paracle_nb.kube._call`; everything else here is
pure and works on the API's JSON: the requests of a pod, what is free on
each node, and whether a pod's selector, tolerations and requests let it
onto a node. The scheduler's own words are in
:mod:`paracle_nb.failed_scheduling`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from paracle_nb import kube
from paracle_nb.target import Target
from paracle_nb.units import parse_quantity

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
RESOURCES = ("cpu", "memory")
DEFAULT_TOLERATIONS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


# -- reads -----------------------------------------------------------------------

def list_nodes(target: Target) -> list[dict[str, Any]]:
    """Return every node of the cluster, as the API sent them."""
    body = kube._call(target, "list nodes", kube._core(target).list_node)
    return list(body.get("items", []))


def pods_on_nodes(target: Target) -> list[dict[str, Any]]:
    """Return the pods of every namespace that still hold their requests.

    Like ``kubectl describe nodes``, finished pods (Succeeded, Failed) are
    left out: they no longer count against a node's allocatable.
    """
    body = kube._call(
        target, "list pods in all namespaces",
        kube._core(target).list_pod_for_all_namespaces,
        field_selector="status.phase!=Succeeded,status.phase!=Failed")
    return list(body.get("items", []))


def list_pdbs(target: Target) -> list[dict[str, Any]]:
    """Return the PodDisruptionBudgets of the target's namespace."""
    ns = target.namespace
    body = kube._call(target, f"list poddisruptionbudgets in {ns}",
                      kube._policy(target).list_namespaced_pod_disruption_budget, ns)
    return list(body.get("items", []))


def disruption_events(target: Target) -> pd.DataFrame:
    """Return the namespace's events about evictions a disruption budget refused."""
    import pandas as pd

    body = kube._call(target, f"list events in {target.namespace}",
                      kube._core(target).list_namespaced_event, target.namespace)
    rows = []
    for event in body.get("items", []):
        message = event.get("message") or ""
        if "disruption budget" not in message.lower():
            continue
        involved = event.get("involvedObject", {})
        rows.append({
            "last_seen": kube._timestamp(event.get("lastTimestamp")
                                         or event.get("eventTime")),
            "reason": event.get("reason"),
            "object": f"{str(involved.get('kind', '')).lower()}/"
                      f"{involved.get('name')}",
            "count": event.get("count") or 1,
            "message": message,
        })
    columns = ["last_seen", "reason", "object", "count", "message"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("last_seen", ascending=False, ignore_index=True)


# -- pods and their requests ------------------------------------------------------

def pod_requests(pod: dict[str, Any]) -> dict[str, float]:
    """Return what a pod asks the scheduler for: CPU cores and memory bytes.

    As the scheduler counts it: the sum over the containers, or the largest
    init container if that is more, plus the pod's overhead.
    """
    spec = pod.get("spec", {})
    total = {}
    for resource in RESOURCES:
        running = sum(_request(c, resource) for c in spec.get("containers", []))
        init = max((_request(c, resource) for c in spec.get("initContainers") or []),
                   default=0.0)
        overhead = parse_quantity((spec.get("overhead") or {}).get(resource)) or 0.0
        total[resource] = max(running, init) + overhead
    return total


def _request(container: dict[str, Any], resource: str) -> float:
    requests = (container.get("resources") or {}).get("requests") or {}
    return parse_quantity(requests.get(resource)) or 0.0


def workload_of(pod: dict[str, Any]) -> str:
    """Return ``kind/name`` of the pod's controller, or ``pod/<name>``."""
    for owner in pod.get("metadata", {}).get("ownerReferences") or []:
        return f"{str(owner.get('kind', '')).lower()}/{owner.get('name')}"
    return f"pod/{pod['metadata']['name']}"


def pending_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the pods the scheduler has not placed: Pending with no node."""
    return [p for p in pods
            if (p.get("status") or {}).get("phase") == "Pending"
            and not (p.get("spec") or {}).get("nodeName")]


def pending_table(pending: list[dict[str, Any]], now: dt.datetime | None = None
                  ) -> pd.DataFrame:
    """Return one row per pending pod: its requests, selector, tolerations."""
    import pandas as pd

    now = now or dt.datetime.now(dt.timezone.utc)
    rows = []
    for pod in pending:
        requests = pod_requests(pod)
        created = kube._timestamp(pod["metadata"].get("creationTimestamp"))
        rows.append({
            "pod": pod["metadata"]["name"],
            "workload": workload_of(pod),
            "cpu_request": requests["cpu"],
            "memory_request_bytes": requests["memory"],
            "node_selector": _selector_text(pod),
            "tolerations": ", ".join(
                toleration_text(t) for t in pod["spec"].get("tolerations") or []
                if not _default_toleration(t)) or "-",
            "age_s": (now - created).total_seconds() if created else None,
            "scheduler_says": _scheduled_condition(pod),
        })
    columns = ["pod", "workload", "cpu_request", "memory_request_bytes",
               "node_selector", "tolerations", "age_s", "scheduler_says"]
    return pd.DataFrame(rows, columns=columns)


def _default_toleration(toleration: dict[str, Any]) -> bool:
    # Every pod gets these two from admission; they say nothing about it.
    return (toleration.get("key") in DEFAULT_TOLERATIONS
            and toleration.get("operator") == "Exists"
            and toleration.get("effect") == "NoExecute")


def _scheduled_condition(pod: dict[str, Any]) -> str:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (condition.get("type") == "PodScheduled"
                and condition.get("status") != "True"):
            said = str(condition.get("message") or condition.get("reason") or "")
            return said.partition(" preemption: ")[0]
    return ""


# -- nodes: allocatable against what is requested ----------------------------------

def node_ready(node: dict[str, Any]) -> bool:
    """True when the node's Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def node_schedulable(node: dict[str, Any]) -> bool:
    """True when the node is Ready and not cordoned."""
    return node_ready(node) and not (node.get("spec") or {}).get("unschedulable")


def node_allocation(nodes: list[dict[str, Any]], pods: list[dict[str, Any]]
                    ) -> pd.DataFrame:
    """Return per node: allocatable, the requests of its pods, and what is free.

    What ``kubectl describe nodes`` shows under "Allocated resources".
    """
    import pandas as pd

    requested = {n["metadata"]["name"]: {"cpu": 0.0, "memory": 0.0, "pods": 0}
                 for n in nodes}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node not in requested:
            continue
        for resource, amount in pod_requests(pod).items():
            requested[node][resource] += amount
        requested[node]["pods"] += 1

    rows = []
    for node in nodes:
        name = node["metadata"]["name"]
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        cpu = parse_quantity(allocatable.get("cpu")) or 0.0
        memory = parse_quantity(allocatable.get("memory")) or 0.0
        pods_max = int(parse_quantity(allocatable.get("pods")) or 0)
        used = requested[name]
        rows.append({
            "node": name,
            "schedulable": node_schedulable(node),
            "cpu_allocatable": cpu,
            "cpu_requested": round(used["cpu"], 3),
            "cpu_free": round(cpu - used["cpu"], 3),
            "memory_allocatable_bytes": memory,
            "memory_requested_bytes": used["memory"],
            "memory_free_bytes": memory - used["memory"],
            "pods": used["pods"],
            "pods_allocatable": pods_max,
        })
    columns = ["node", "schedulable", "cpu_allocatable", "cpu_requested", "cpu_free",
               "memory_allocatable_bytes", "memory_requested_bytes",
               "memory_free_bytes", "pods", "pods_allocatable"]
    return pd.DataFrame(rows, columns=columns)


# -- labels, selectors, taints, tolerations --------------------------------------

def node_labels(nodes: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Return each node's labels by node name."""
    return {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {})
            for n in nodes}


def selector_requirements(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Return a pod's node requirements as ``{key, operator, values, term}``.

    ``nodeSelector`` entries are term 0 with operator ``=``; required node
    affinity terms follow, numbered from 1 (terms are alternatives).
    """
    spec = pod.get("spec") or {}
    wanted = [{"key": k, "operator": "=", "values": [str(v)], "term": 0}
              for k, v in sorted((spec.get("nodeSelector") or {}).items())]
    terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {}
             ).get("nodeSelectorTerms") or []
    for number, term in enumerate(terms, start=1):
        for expression in term.get("matchExpressions") or []:
            wanted.append({"key": expression["key"],
                           "operator": expression["operator"],
                           "values": [str(v) for v in expression.get("values") or []],
                           "term": number})
    return wanted


def _expression_holds(requirement: dict[str, Any], labels: dict[str, str]) -> bool:
    key, op, values = (requirement["key"], requirement["operator"],
                       requirement["values"])
    present = key in labels
    if op in ("=", "In"):
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and values:
        try:
            have, limit = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > limit if op == "Gt" else have < limit
    return False


def matches_node(pod: dict[str, Any], labels: dict[str, str]) -> bool:
    """True when a node with these labels satisfies the pod's node selector.

    Every ``nodeSelector`` entry must hold, and, when the pod has required
    node affinity, every expression of at least one of its terms.
    """
    wanted = selector_requirements(pod)
    if not all(_expression_holds(r, labels) for r in wanted if r["term"] == 0):
        return False
    terms = sorted({r["term"] for r in wanted if r["term"] > 0})
    return not terms or any(
        all(_expression_holds(r, labels) for r in wanted if r["term"] == term)
        for term in terms)


def _selector_text(pod: dict[str, Any]) -> str:
    parts = []
    for r in selector_requirements(pod):
        if r["operator"] == "=":
            parts.append(f"{r['key']}={r['values'][0]}")
        else:
            parts.append(f"{r['key']} {r['operator']} {','.join(r['values'])}".strip())
    return ", ".join(parts) or "-"


def taints_of(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the taints of a node."""
    return list((node.get("spec") or {}).get("taints") or [])


def taint_text(taint: dict[str, Any]) -> str:
    """Return a taint as kubectl writes it: ``key=value:Effect``."""
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key')}{value}:{taint.get('effect')}"


def toleration_text(toleration: dict[str, Any]) -> str:
    """Return a toleration in the same shape as :func:`taint_text`."""
    key = toleration.get("key") or "*"
    if toleration.get("operator") == "Exists":
        text = key
    else:
        text = f"{key}={toleration.get('value', '')}"
    return f"{text}:{toleration.get('effect') or '*'}"


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """True when one of the tolerations covers the taint."""
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        key = toleration.get("key")
        if toleration.get("operator") == "Exists":
            if not key or key == taint.get("key"):
                return True
        elif key == taint.get("key") and (
                toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def untolerated_taints(pod: dict[str, Any], node: dict[str, Any]
                       ) -> list[dict[str, Any]]:
    """Return the node's taints that keep this pod off it."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    return [t for t in taints_of(node)
            if t.get("effect") in BLOCKING_EFFECTS
            and t.get("key") != UNSCHEDULABLE_TAINT
            and not tolerates(tolerations, t)]


def taint_table(nodes: list[dict[str, Any]]) -> pd.DataFrame:
    """Return one row per node taint (``kubectl describe node`` Taints)."""
    import pandas as pd

    rows = [{"node": n["metadata"]["name"], "key": t.get("key"),
             "value": t.get("value") or "", "effect": t.get("effect")}
            for n in nodes for t in taints_of(n)]
    return pd.DataFrame(rows, columns=["node", "key", "value", "effect"])


def selector_table(pending: list[dict[str, Any]], nodes: list[dict[str, Any]]
                   ) -> pd.DataFrame:
    """Return each pending workload's node requirements against node labels."""
    import pandas as pd

    labels = node_labels(nodes)
    rows, seen = [], set()
    for pod in pending:
        workload = workload_of(pod)
        if workload in seen:
            continue
        seen.add(workload)
        for r in selector_requirements(pod):
            have = sorted({lbl.get(r["key"], "(absent)") for lbl in labels.values()})
            matching = [n for n, lbl in labels.items() if _expression_holds(r, lbl)]
            rows.append({"workload": workload, "label": r["key"],
                         "operator": r["operator"], "wanted": ", ".join(r["values"]),
                         "nodes_have": ", ".join(have),
                         "matching_nodes": len(matching)})
    columns = ["workload", "label", "operator", "wanted", "nodes_have",
               "matching_nodes"]
    return pd.DataFrame(rows, columns=columns)


# -- does a pending pod fit anywhere? ---------------------------------------------

def fit_table(pending: list[dict[str, Any]], nodes: list[dict[str, Any]],
              allocation: pd.DataFrame) -> pd.DataFrame:
    """Return, per pending workload and node, what keeps the pod off the node.

    Filters in the scheduler's order: cordoned or not Ready, untolerated
    taints, node selector and affinity, then CPU, memory and pod count.
    ``blocked_by`` names the first that fails; empty when the pod fits.
    """
    import pandas as pd

    free = {r.node: r for r in allocation.itertuples()}
    groups: dict[str, list[dict[str, Any]]] = {}
    for pod in pending:
        groups.setdefault(workload_of(pod), []).append(pod)

    rows = []
    for workload, pods in groups.items():
        pod = pods[0]
        requests = pod_requests(pod)
        for node in nodes:
            name = node["metadata"]["name"]
            room = free.get(name)
            taints = untolerated_taints(pod, node)
            row = {
                "workload": workload,
                "pods_pending": len(pods),
                "node": name,
                "schedulable": node_schedulable(node),
                "untolerated_taints": ", ".join(taint_text(t) for t in taints),
                "selector_ok": matches_node(pod, node_labels([node])[name]),
                "cpu_request": requests["cpu"],
                "cpu_free": room.cpu_free if room else None,
                "memory_request_bytes": requests["memory"],
                "memory_free_bytes": room.memory_free_bytes if room else None,
                "pods_free": (room.pods_allocatable - room.pods) if room else None,
            }
            row["short_of"] = _short_of(row)
            row["blocked_by"] = _blocked_by(row)
            row["fits"] = row["blocked_by"] == ""
            rows.append(row)
    columns = ["workload", "pods_pending", "node", "schedulable",
               "untolerated_taints", "selector_ok", "cpu_request", "cpu_free",
               "memory_request_bytes", "memory_free_bytes", "pods_free",
               "short_of", "blocked_by", "fits"]
    return pd.DataFrame(rows, columns=columns)


def _short_of(row: dict[str, Any]) -> str:
    short = []
    if row["cpu_free"] is not None and row["cpu_request"] > row["cpu_free"] + 1e-9:
        short.append("cpu")
    if (row["memory_free_bytes"] is not None
            and row["memory_request_bytes"] > row["memory_free_bytes"]):
        short.append("memory")
    if row["pods_free"] is not None and row["pods_free"] < 1:
        short.append("pods")
    return ", ".join(short)


def _blocked_by(row: dict[str, Any]) -> str:
    if not row["schedulable"]:
        return "node not schedulable"
    if row["untolerated_taints"]:
        return "taint"
    if not row["selector_ok"]:
        return "node selector"
    return f"insufficient {row['short_of']}" if row["short_of"] else ""


# -- PodDisruptionBudgets ----------------------------------------------------------

def pdb_table(pdbs: list[dict[str, Any]]) -> pd.DataFrame:
    """Return one row per PDB, as ``kubectl get pdb`` plus its health counts."""
    import pandas as pd

    rows = []
    for pdb in pdbs:
        spec, status = pdb.get("spec") or {}, pdb.get("status") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        rows.append({
            "pdb": pdb["metadata"]["name"],
            "min_available": spec.get("minAvailable"),
            "max_unavailable": spec.get("maxUnavailable"),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
            "expected_pods": status.get("expectedPods"),
            "current_healthy": status.get("currentHealthy"),
            "desired_healthy": status.get("desiredHealthy"),
            "disruptions_allowed": status.get("disruptionsAllowed"),
        })
    columns = ["pdb", "min_available", "max_unavailable", "selector",
               "expected_pods", "current_healthy", "desired_healthy",
               "disruptions_allowed"]
    return pd.DataFrame(rows, columns=columns)


def cordoned_nodes(nodes: list[dict[str, Any]]) -> list[str]:
    """Return the names of the nodes marked unschedulable (cordoned, draining)."""
    return sorted(n["metadata"]["name"] for n in nodes
                  if (n.get("spec") or {}).get("unschedulable"))
