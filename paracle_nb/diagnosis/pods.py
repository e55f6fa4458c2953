"""Why are the API pods crashing?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import available
from paracle_nb.units import format_bytes

if TYPE_CHECKING:
    import pandas as pd

OOM_EXIT_CODE = 137


def crashing_containers(containers: pd.DataFrame) -> pd.DataFrame:
    """Return the containers in CrashLoopBackOff or killed since their start."""
    crashing = (containers["reason"] == "CrashLoopBackOff") | (
        (containers["restarts"] > 0) & containers["last_reason"].notna()
        & ~containers["ready"])
    return containers[crashing]


def diagnose_crashloop(containers: Any, metrics: Any = None) -> list[Finding]:
    """Return findings for crashing containers: OOM first, else the crash itself."""
    if not available(containers) or containers.empty:
        return []
    crashing = crashing_containers(containers)
    if crashing.empty:
        return []

    findings = []
    oom = crashing[(crashing["last_reason"] == "OOMKilled")
                   | (crashing["last_exit_code"] == OOM_EXIT_CODE)]
    if not oom.empty:
        findings.append(_oom_finding(oom, metrics))
    other = crashing.drop(oom.index)
    if not other.empty:
        findings.append(_crash_finding(other))
    return findings


def _oom_finding(oom: pd.DataFrame, metrics: Any) -> Finding:
    container = str(oom["container"].mode().iloc[0])
    limit = oom["memory_limit"].dropna()
    limit_bytes = int(limit.iloc[0]) if not limit.empty else None
    restarts = {str(r.pod): int(r.restarts) for r in oom.itertuples()}

    evidence: dict[str, Any] = {
        "container": container,
        "pods": sorted(restarts),
        "pods_crashing": len(restarts),
        "restarts": restarts,
        "max_restarts": max(restarts.values()),
        "last_reason": "OOMKilled",
        "last_exit_code": OOM_EXIT_CODE,
        "memory_limit_bytes": limit_bytes,
        "memory_limit": format_bytes(limit_bytes),
    }
    usage = _peak_usage(metrics, container, list(restarts))
    if usage is not None:
        evidence["peak_memory_bytes"] = usage
        if limit_bytes:
            evidence["peak_usage_of_limit"] = round(usage / limit_bytes, 3)

    summary = (f"Container '{container}' was OOMKilled (exit 137) in "
               f"{len(restarts)} pod(s), up to {evidence['max_restarts']} restarts, "
               f"against a memory limit of {format_bytes(limit_bytes)}.")
    return Finding("oom-killed", Severity.CRITICAL, summary, evidence,
                   step="Check pod status")


def _crash_finding(crashing: pd.DataFrame) -> Finding:
    restarts = {f"{r.pod}/{r.container}": int(r.restarts)
                for r in crashing.itertuples()}
    reasons = sorted({str(r) for r in crashing["last_reason"].dropna()})
    codes = sorted({int(c) for c in crashing["last_exit_code"].dropna()})
    summary = (f"{len(restarts)} container(s) crash-looping; last termination "
               f"{', '.join(reasons) or 'unknown'} (exit {codes or '?'}).")
    return Finding("crashloop", Severity.CRITICAL, summary,
                   {"restarts": restarts, "last_reasons": reasons,
                    "last_exit_codes": codes}, step="Check pod status")


def _peak_usage(metrics: Any, container: str, pods: list[str]) -> int | None:
    if not available(metrics) or metrics.empty:
        return None
    rows = metrics[(metrics["container"] == container) & metrics["pod"].isin(pods)]
    return int(rows["memory_bytes"].max()) if not rows.empty else None


def describe_pods(pods: Any) -> str:
    """Return one sentence on pod health: how many ready, how many failing."""
    if not available(pods):
        return "Pod status unavailable."
    if pods.empty:
        return "No pods match the selector."
    ready = sum(1 for r in pods["ready"] if r.split("/")[0] == r.split("/")[1])
    bad = pods[~pods["status"].isin(["Running", "Completed", "Succeeded"])]
    statuses = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
    tail = f"; {statuses}" if statuses else ""
    return (f"{ready} of {len(pods)} pods fully ready, "
            f"{int(pods['restarts'].sum())} restarts in total{tail}.")


def focus_container(containers: Any) -> str | None:
    """Return the container to look at: the most restarted crashing one."""
    if not available(containers) or containers.empty:
        return None
    crashing = crashing_containers(containers)
    pool = crashing if not crashing.empty else containers
    return str(pool.sort_values("restarts", ascending=False)["container"].iloc[0])


def describe_logs(logs: Any) -> str:
    """Return one sentence on what the crashed containers last wrote."""
    if not available(logs):
        return "Previous logs unavailable."
    if logs.empty:
        return "No crashed container: no previous logs to read."
    last = logs["last_line"].iloc[0]
    return (f"Previous logs of {len(logs)} crashed container(s); each ends "
            f"abruptly, the first with: `{last[:160]}`")


def describe_events(events: Any) -> str:
    """Return one sentence on the warning events of the pods."""
    if not available(events):
        return "Events unavailable."
    warnings = events[events["type"] == "Warning"]
    if warnings.empty:
        return f"{len(events)} event(s), none a warning."
    reasons = ", ".join(f"{r} x{int(n)}" for r, n in
                        warnings.groupby("reason")["count"].sum().items())
    return f"{len(warnings)} warning event(s): {reasons}."


def first_log(logs: Any) -> str:
    """Return the previous log of the most restarted crashed container."""
    if not available(logs) or logs.empty:
        return ""
    top = logs.sort_values("restarts", ascending=False).iloc[0]
    return f"--- {top['pod']}/{top['container']} (previous) ---\n{top['log']}"
