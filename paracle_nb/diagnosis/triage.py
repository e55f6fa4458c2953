"""Quick diagnostics: what is wrong at a glance, and which runbook is next."""

from __future__ import annotations

from typing import Any

from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import Unavailable, available

# Log markers that point at one runbook, checked on error and warning lines.
LOG_SIGNS = [
    ("too many clients", "database/connection-pool-exhausted",
     "Postgres refuses connections"),
    ("remaining connection slots", "database/connection-pool-exhausted",
     "Postgres refuses connections"),
    ("oom command not allowed", "redis/out-of-memory", "Redis refuses writes"),
    ("command not allowed when used memory", "redis/out-of-memory",
     "Redis refuses writes"),
    ("max number of clients", "redis/connection-timeout", "Redis refuses clients"),
    ("redis timeout", "redis/connection-timeout", "Redis calls time out"),
    ("traceback", "api/500-errors", "unhandled exceptions"),
    ("llm call failed", "llm/provider-errors", "LLM calls fail"),
]
POD_SIGNS = {
    "CrashLoopBackOff": ("api/pods-crashing", "pods crash-looping"),
    "OOMKilled": ("api/pods-crashing", "pods OOM-killed"),
    "Error": ("api/pods-crashing", "containers exiting with errors"),
    "ErrImagePull": ("api/pods-crashing", "image pull failing"),
    "ImagePullBackOff": ("api/pods-crashing", "image pull failing"),
    "Pending": ("kubernetes/pods-not-scheduling", "pods not scheduled"),
}


def diagnose_triage(health: Any, pods: Any, log_lines: Any, up: Any, p95: Any,
                    *, latency_threshold_s: float = 1.0) -> list[Finding]:
    """Return one finding per symptom, each naming the runbook to open next."""
    findings: list[Finding] = []
    if isinstance(health, Unavailable):
        findings.append(_next("api-unreachable", "service-not-accessible",
                              f"Health check failed: {health.reason}",
                              "kubernetes/service-not-accessible"))
    elif available(health) and health["status"] >= 500:
        findings.append(_next("api-unhealthy", "health endpoint failing",
                              f"Health endpoint answered {health['status']}.",
                              "api/500-errors", status=health["status"]))

    if available(pods) and not pods.empty:
        for status, (runbook, label) in POD_SIGNS.items():
            count = int((pods["status"] == status).sum())
            if count:
                findings.append(_next(f"pods-{status.lower()}", label,
                                      f"{count} pod(s) {status}.", runbook,
                                      pods=count))
    if available(up) and up.get("targets") is not None and up["down"]:
        findings.append(_next("scrape-target-down", "API not scraped",
                              f"{up['down']} of {up['targets']} API scrape targets "
                              "are down.", "api/pods-crashing", **up))
    if available(p95) and p95 is not None and p95 > latency_threshold_s:
        findings.append(_next("high-latency", "p95 above threshold",
                              f"p95 latency {p95:.2f}s > {latency_threshold_s:g}s.",
                              "api/high-latency", p95_s=round(p95, 3)))
    if available(log_lines):
        findings.extend(_log_findings(log_lines))
    return findings


def _log_findings(lines: list[str]) -> list[Finding]:
    counts: dict[str, list[Any]] = {}
    for line in lines:
        lowered = line.lower()
        for marker, runbook, label in LOG_SIGNS:
            if marker in lowered:
                entry = counts.setdefault(runbook, [label, 0, line])
                entry[1] += 1
    return [_next(f"log-{runbook.split('/')[-1]}", label,
                  f"{n} log line(s): {label}.", runbook, log_lines=n,
                  example=example[:200])
            for runbook, (label, n, example) in counts.items()]


def _next(cause: str, label: str, summary: str, runbook: str,
          **evidence: Any) -> Finding:
    return Finding(cause, Severity.WARNING, f"{summary} Open {runbook}.",
                   {"open_next": runbook, "symptom": label, **evidence},
                   step="Quick diagnostics")


def next_runbooks(findings: list[Finding]) -> list[str]:
    """Return the runbooks to open next, most findings first, no repeats."""
    order: dict[str, int] = {}
    for finding in findings:
        runbook = finding.evidence.get("open_next")
        if runbook:
            order[runbook] = order.get(runbook, 0) + 1
    return sorted(order, key=lambda r: -order[r])
