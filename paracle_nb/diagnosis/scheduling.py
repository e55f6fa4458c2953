"""Why are pods not scheduling, and is a disruption budget blocking drains?

The rules read what the runbook's steps produced: the pending pods, the
scheduler's parsed ``FailedScheduling`` reasons, and the fit table of
:func:`paracle_nb.kube_nodes.fit_table` (per workload and node, what keeps
the pod off). A cause is named when it is the filter that leaves the pod
no node at all: a taint on a node the pod could otherwise use is not the
cause while other nodes pass it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import available
from paracle_nb.units import format_bytes

if TYPE_CHECKING:
    import pandas as pd

EVENT_CAUSES = {"insufficient": "insufficient-resources",
                "node-selector": "node-selector-mismatch",
                "taint": "taint-not-tolerated"}


def diagnose_scheduling(pending: Any, reasons: Any, fit: Any,
                        selectors: Any = None) -> list[Finding]:
    """Return the causes that keep pending pods off every node."""
    if not available(pending) or pending.empty:
        return []

    findings: list[Finding] = []
    fitted = available(fit) and not fit.empty
    workloads = list(dict.fromkeys(pending["workload"]))
    for workload in workloads:
        pods = pending[pending["workload"] == workload]
        rows = fit[fit["workload"] == workload] if fitted else None
        if rows is not None and not rows.empty:
            findings += _from_fit(workload, pods, rows, selectors)
        else:
            findings += _from_events(workload, pods, reasons)

    if available(reasons) and not reasons.empty:
        for finding in findings:
            _add_reported(finding, reasons)
    if not findings:
        findings.append(_unexplained(pending, reasons))
    return findings


def _from_fit(workload: str, pods: pd.DataFrame, rows: pd.DataFrame,
              selectors: Any) -> list[Finding]:
    findings = []
    schedulable = rows[rows["schedulable"]]
    if schedulable.empty:
        return []
    tolerated = schedulable[schedulable["untolerated_taints"] == ""]
    matching = schedulable[schedulable["selector_ok"]]
    candidates = tolerated[tolerated["selector_ok"]]

    if tolerated.empty:
        findings.append(_taint_finding(workload, pods, schedulable))
    if matching.empty:
        findings.append(_selector_finding(workload, pods, schedulable, selectors))
    if not candidates.empty and not candidates["fits"].any():
        findings.append(_resources_finding(workload, pods, candidates))
    return findings


def _base_evidence(workload: str, pods: pd.DataFrame) -> dict[str, Any]:
    return {"workload": workload, "pending_pods": len(pods),
            "pods": sorted(str(p) for p in pods["pod"])}


def _taint_finding(workload: str, pods: pd.DataFrame, rows: pd.DataFrame
                   ) -> Finding:
    by_taint: dict[str, list[str]] = {}
    for row in rows.itertuples():
        for text in str(row.untolerated_taints).split(", "):
            by_taint.setdefault(text, []).append(str(row.node))
    taints = [{**split_taint(text), "nodes": sorted(nodes)}
              for text, nodes in sorted(by_taint.items(), key=lambda t: -len(t[1]))]
    top = taints[0]

    evidence = _base_evidence(workload, pods)
    evidence.update({
        "taint_key": top["key"], "taint_value": top["value"],
        "taint_effect": top["effect"], "nodes": top["nodes"],
        "taints": taints,
        "tolerations": str(pods["tolerations"].iloc[0]),
    })
    value = f"={top['value']}" if top["value"] else ""
    summary = (f"{len(pods)} pod(s) of {workload} Pending: every schedulable node "
               f"has a taint the pod does not tolerate ({top['key']}{value}:"
               f"{top['effect']} on {', '.join(top['nodes'])}).")
    return Finding("taint-not-tolerated", Severity.CRITICAL, summary, evidence,
                   step="Check taints and tolerations")


def split_taint(text: str) -> dict[str, str]:
    """Return ``key=value:Effect`` as ``{key, value, effect}``."""
    rest, _, effect = text.rpartition(":")
    key, _, value = rest.partition("=")
    return {"key": key, "value": value, "effect": effect}


def _selector_finding(workload: str, pods: pd.DataFrame, rows: pd.DataFrame,
                      selectors: Any) -> Finding:
    evidence = _base_evidence(workload, pods)
    wanted: dict[str, str] = {}
    nodes_have: dict[str, list[str]] = {}
    if available(selectors) and not selectors.empty:
        for row in selectors[selectors["workload"] == workload].itertuples():
            op = "" if row.operator == "=" else f"{row.operator} "
            wanted[str(row.label)] = f"{op}{row.wanted}".strip()
            nodes_have[str(row.label)] = str(row.nodes_have).split(", ")
    evidence.update({"selector": wanted, "nodes_have": nodes_have,
                     "matching_nodes": 0, "nodes": sorted(map(str, rows["node"]))})

    shown = ", ".join(f"{k}={v}" for k, v in wanted.items()) or \
        str(pods["node_selector"].iloc[0])
    have = "; ".join(f"{k}: {', '.join(v)}" for k, v in nodes_have.items())
    summary = (f"{len(pods)} pod(s) of {workload} Pending: no schedulable node "
               f"matches the node selector {shown}"
               + (f" (nodes have {have})." if have else "."))
    return Finding("node-selector-mismatch", Severity.CRITICAL, summary, evidence,
                   step="Check node selector and affinity")


def _resources_finding(workload: str, pods: pd.DataFrame,
                       candidates: pd.DataFrame) -> Finding:
    resources = {}
    for resource, free_col, request_col, unit in (
            ("cpu", "cpu_free", "cpu_request", "cores"),
            ("memory", "memory_free_bytes", "memory_request_bytes", "bytes")):
        short = candidates[candidates["short_of"].str.contains(resource)]
        if short.empty:
            continue
        best = candidates.loc[candidates[free_col].idxmax()]
        request = float(candidates[request_col].iloc[0])
        free = [float(f) for f in candidates[free_col]]
        resources[resource] = {
            "requested_per_pod": round(request, 3),
            "max_free": round(float(best[free_col]), 3),
            "max_free_node": str(best["node"]),
            "nodes": len(short),
            "unit": unit,
            "request_that_fits": request_that_fits(free, len(pods), request),
        }
    if not resources:
        # Only the pod count is exhausted on every candidate.
        resources["pods"] = {"requested_per_pod": 1, "max_free": int(
            candidates["pods_free"].max()), "nodes": len(candidates), "unit": "pods"}

    resource = next(iter(resources))
    evidence = _base_evidence(workload, pods)
    evidence.update({"resource": resource, **resources[resource],
                     "resources": resources})
    summary = (f"{len(pods)} pod(s) of {workload} Pending: each requests "
               f"{_amount(resource, evidence['requested_per_pod'])} {resource}, "
               f"and the most any of {len(candidates)} eligible node(s) has free "
               f"is {_amount(resource, evidence['max_free'])} "
               f"({evidence.get('max_free_node', '-')}).")
    return Finding("insufficient-resources", Severity.CRITICAL, summary, evidence,
                   step="Check node capacity")


def _amount(resource: str, value: float) -> str:
    if resource == "memory":
        return format_bytes(value)
    if resource == "cpu":
        return f"{round(value * 1000)}m"
    return str(value)


def request_that_fits(free: list[float], pods: int, current: float) -> float | None:
    """Return the largest per-pod request (at most ``current``) that places
    ``pods`` pods on nodes with these free amounts; None if none does.

    >>> request_that_fits([1.49, 1.89, 1.89], 3, 2.01)
    1.49
    """
    # The best size fills some node exactly: one of free/k, or the request.
    sizes = [current] + [a / k for a in free for k in range(1, pods + 1)]
    best = None
    for size in sizes:
        if size <= 0 or size > current:
            continue
        placed = sum(math.floor(f / size + 1e-9) for f in free if f > 0)
        if placed >= pods and (best is None or size > best):
            best = size
    return round(best, 3) if best is not None else None


def _from_events(workload: str, pods: pd.DataFrame, reasons: Any) -> list[Finding]:
    """Without the fit table: a reason the scheduler gave for every node."""
    if not available(reasons) or reasons.empty:
        return []
    findings = []
    for row in reasons.itertuples():
        cause = EVENT_CAUSES.get(str(row.category))
        if cause is None or not row.total_nodes or row.nodes != row.total_nodes:
            continue
        evidence = _base_evidence(workload, pods)
        evidence.update({"reason": row.reason, "nodes": int(row.nodes),
                         "detail": row.detail})
        if cause == "insufficient-resources":
            evidence["resource"] = row.detail
        findings.append(Finding(
            cause, Severity.CRITICAL,
            f"The scheduler reports for all {int(row.nodes)} node(s): "
            f"{row.reason}.", evidence, step="Check events"))
    return findings


def _add_reported(finding: Finding, reasons: pd.DataFrame) -> None:
    categories = [c for c, cause in EVENT_CAUSES.items() if cause == finding.cause]
    rows = reasons[reasons["category"].isin(categories)]
    if finding.cause == "insufficient-resources" and "resource" in finding.evidence:
        rows = rows[rows["detail"] == finding.evidence["resource"]]
    if not rows.empty:
        finding.evidence["nodes_reported"] = int(rows["nodes"].max())
        finding.evidence["scheduler_says"] = str(rows["reason"].iloc[0])


def _unexplained(pending: pd.DataFrame, reasons: Any) -> Finding:
    said = []
    if available(reasons) and not reasons.empty:
        said = [f"{int(r.nodes)} {r.reason}" if r.nodes == r.nodes and r.nodes
                else str(r.reason) for r in reasons.itertuples()]
    summary = (f"{len(pending)} pod(s) Pending"
               + (f"; the scheduler says: {', '.join(said)}." if said else
                  ", with no FailedScheduling reason yet."))
    return Finding("pods-pending", Severity.WARNING, summary,
                   {"pending_pods": len(pending),
                    "pods": sorted(map(str, pending["pod"])), "reasons": said},
                   step="Check pod status")


# -- PodDisruptionBudgets ----------------------------------------------------------

def diagnose_pdbs(pdbs: Any, disruptions: Any = None,
                  cordoned: Any = None) -> list[Finding]:
    """Return findings for PDBs that allow no disruption at all."""
    if not available(pdbs) or pdbs.empty:
        return []
    findings = []
    for row in pdbs.itertuples():
        if row.disruptions_allowed != 0 or not row.expected_pods:
            continue
        evidence: dict[str, Any] = {
            "pdb": row.pdb,
            "disruptions_allowed": 0,
            "min_available": _plain(row.min_available),
            "max_unavailable": _plain(row.max_unavailable),
            "current_healthy": int(row.current_healthy or 0),
            "desired_healthy": int(row.desired_healthy or 0),
            "expected_pods": int(row.expected_pods),
        }
        if evidence["current_healthy"] < evidence["desired_healthy"]:
            findings.append(Finding(
                "pdb-budget-spent", Severity.INFO,
                f"PDB {row.pdb} allows no disruption because only "
                f"{evidence['current_healthy']} of {evidence['desired_healthy']} "
                "required pods are healthy: fix the pods, not the budget.",
                evidence, step="Check PodDisruptionBudgets"))
            continue
        findings.append(_pdb_blocking(str(row.pdb), evidence, disruptions, cordoned))
    return findings


def _pdb_blocking(name: str, evidence: dict[str, Any], disruptions: Any,
                  cordoned: Any) -> Finding:
    refused = 0
    if available(disruptions) and not disruptions.empty:
        # A refusal names its budget, or none at all when only one applies.
        said = disruptions["message"]
        mine = disruptions[said.str.contains(name, regex=False)
                           | ~said.str.contains("budget ", regex=False)]
        refused = int(mine["count"].sum())
        evidence["evictions_refused"] = refused
        evidence["pods_blocked"] = sorted({str(o).split("/", 1)[-1]
                                           for o in mine["object"]
                                           if str(o).startswith("pod/")})
        if not mine.empty:
            evidence["last_refusal"] = str(mine["message"].iloc[0])
    if available(cordoned) and cordoned:
        evidence["cordoned_nodes"] = list(cordoned)

    rule = (f"minAvailable {evidence['min_available']}"
            if evidence["min_available"] is not None
            else f"maxUnavailable {evidence['max_unavailable']}")
    summary = (f"PDB {name} allows 0 disruptions: {rule} with "
               f"{evidence['current_healthy']} of {evidence['expected_pods']} pods "
               "healthy, so every eviction (node drain, upgrade) is refused")
    summary += f" ({refused} refused so far)." if refused else "."
    severity = Severity.CRITICAL if refused else Severity.WARNING
    return Finding("pdb-blocking", severity, summary, evidence,
                   step="Check PodDisruptionBudgets")


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# -- one sentence per step -----------------------------------------------------------

def describe_pending(pods: Any, pending: Any) -> str:
    """Return one sentence on how many pods are Pending, and of what."""
    if not available(pods) or not available(pending):
        return "Pod status unavailable."
    if pending.empty:
        return f"{len(pods)} pod(s) in the namespace, none waiting to be scheduled."
    workloads = ", ".join(f"{w} ({n})" for w, n in
                          pending["workload"].value_counts().items())
    return (f"{len(pending)} of {len(pods)} pod(s) Pending with no node: "
            f"{workloads}.")


def describe_reasons(reasons: Any) -> str:
    """Return one sentence on what the scheduler said."""
    if not available(reasons):
        return "Events unavailable."
    if reasons.empty:
        return "No FailedScheduling event."
    total = reasons["total_nodes"].dropna()
    of = f" of {int(total.max())}" if not total.empty else ""
    said = "; ".join(f"{r.reason}: {int(r.nodes)}{of} node(s)"
                     if r.nodes == r.nodes and r.nodes else str(r.reason)
                     for r in reasons.itertuples())
    return f"The scheduler's FailedScheduling reasons, by node count: {said}."


def describe_allocation(allocation: Any) -> str:
    """Return one sentence on the node with the most CPU and memory free."""
    if not available(allocation) or allocation.empty:
        return "Node capacity unavailable."
    cpu = allocation.loc[allocation["cpu_free"].idxmax()]
    memory = allocation.loc[allocation["memory_free_bytes"].idxmax()]
    return (f"{len(allocation)} node(s); most CPU free: {cpu['cpu_free']:g} cores "
            f"on {cpu['node']}; most memory free: "
            f"{format_bytes(memory['memory_free_bytes'])} on {memory['node']}.")


def describe_fit(fit: Any) -> str:
    """Return one sentence: does the pending pod fit on any node?"""
    if not available(fit):
        return "Fit unavailable."
    if fit.empty:
        return "No pending pod to place."
    parts = []
    for workload, rows in fit.groupby("workload", sort=False):
        fits = list(rows[rows["fits"]]["node"])
        blocked = ", ".join(f"{n}: {b}" for n, b in
                            zip(rows["node"], rows["blocked_by"], strict=True) if b)
        parts.append(f"{workload} fits on {', '.join(fits)}" if fits else
                     f"{workload} fits nowhere ({blocked})")
    return "; ".join(parts) + "."


def describe_selectors(selectors: Any) -> str:
    """Return one sentence on the pending pods' node requirements."""
    if not available(selectors):
        return "Node selectors unavailable."
    if selectors.empty:
        return "No pending pod has a node selector or required node affinity."
    unmatched = selectors[selectors["matching_nodes"] == 0]
    if unmatched.empty:
        return "Every node requirement of the pending pods matches some node."
    return "No node has " + "; ".join(
        f"{r.label} {'=' if r.operator == '=' else r.operator} {r.wanted} "
        f"(nodes have {r.nodes_have})" for r in unmatched.itertuples()) + "."


def describe_taints(taints: Any, fit: Any) -> str:
    """Return one sentence on node taints and whether pending pods tolerate them."""
    if not available(taints):
        return "Taints unavailable."
    if taints.empty:
        return "No node has a taint."
    blocked = 0
    if available(fit) and not fit.empty:
        blocked = int((fit["untolerated_taints"] != "").sum())
    return (f"{len(taints)} taint(s) on {taints['node'].nunique()} node(s); "
            f"{blocked} node(s) carry a taint a pending pod does not tolerate.")


def describe_pdbs(pdbs: Any, disruptions: Any) -> str:
    """Return one sentence on the disruption budgets and refused evictions."""
    if not available(pdbs):
        return "PodDisruptionBudgets unavailable."
    if pdbs.empty:
        return "No PodDisruptionBudget in the namespace."
    zero = list(pdbs[pdbs["disruptions_allowed"] == 0]["pdb"])
    refused = (int(disruptions["count"].sum())
               if available(disruptions) and not disruptions.empty else 0)
    state = (f"{', '.join(zero)} allow(s) 0 disruptions" if zero
             else "every budget allows at least one disruption")
    return f"{len(pdbs)} PDB(s): {state}; {refused} eviction(s) refused by a budget."
