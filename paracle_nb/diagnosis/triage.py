"""Quick diagnostics: what is wrong at a glance, and which runbook is next.

Each symptom becomes one WARNING finding whose ``evidence["open_next"]``
names the runbook that diagnoses it; :func:`next_runbooks` orders them.
The escalation bundle is recommended when the symptoms span several
unrelated areas, or when a triage step could not run at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from paracle_nb.errors import TargetTimeout, TargetUnreachable
from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import Unavailable, available

if TYPE_CHECKING:
    import pandas as pd

ESCALATION = "escalation/diagnostic-bundle"

# Markers in error and warning lines (and in the health endpoint's answer)
# that point at one runbook; the first that matches a line wins, so the
# specific ones come before the generic "unhandled exception".
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
    ("llm call failed", "llm/provider-errors", "LLM calls fail"),
    ("unhandled exception", "api/500-errors", "unhandled exceptions"),
    ("traceback", "api/500-errors", "unhandled exceptions"),
]
POD_SIGNS = {
    "CrashLoopBackOff": ("api/pods-crashing", "pods crash-looping"),
    "OOMKilled": ("api/pods-crashing", "pods OOM-killed"),
    "Error": ("api/pods-crashing", "containers exiting with errors"),
    "CreateContainerConfigError": ("api/pods-crashing",
                                   "containers missing their configuration"),
    "ErrImagePull": ("api/pods-crashing", "image pull failing"),
    "ImagePullBackOff": ("api/pods-crashing", "image pull failing"),
    "Pending": ("kubernetes/pods-not-scheduling", "pods not scheduled"),
}
# Where to look first when two runbooks have as many symptoms: the
# cluster, then the dependencies, then what the API's users see.
RUNBOOK_ORDER = [
    "kubernetes/pods-not-scheduling", "api/pods-crashing",
    "kubernetes/service-not-accessible", "database/connection-pool-exhausted",
    "redis/out-of-memory", "redis/connection-timeout", "llm/provider-errors",
    "database/slow-queries", "api/500-errors", "api/high-latency",
]
# Symptoms in this many areas at once are not one incident: escalate.
UNRELATED_AREAS = 3


# Dependencies this close to their limit are a symptom before they refuse.
NEAR_LIMIT = 0.9
# The guide's line for 500 errors: more than 1% of requests.
ERROR_RATIO = 0.01
SLOW_PING_MS = 200.0  # one sample: only a clearly slow answer counts


def diagnose_triage(health: Any, pods: Any, log_lines: Any, up: Any, p95: Any,
                    *, latency_threshold_s: float = 1.0, postgres: Any = None,
                    redis: Any = None, errors: Any = None) -> list[Finding]:
    """Return one finding per symptom, each naming the runbook to open next.

    ``health`` is :func:`paracle_nb.health.probe_health`'s answer, ``pods``
    a pod table, ``log_lines`` :func:`paracle_nb.logs.error_lines` (or the
    lines as text), ``up`` :func:`paracle_nb.prometheus.scrape_targets` and
    ``p95`` the API's p95 latency in seconds; ``postgres``
    (:func:`paracle_nb.health.postgres_slots`), ``redis``
    (:func:`paracle_nb.health.redis_state`) and ``errors``
    (:func:`paracle_nb.api_errors.error_rate`) look behind the API. The
    findings come in the order of :func:`next_runbooks`, the escalation
    last.
    """
    findings = _health_findings(health)
    pod_findings = _pod_findings(pods)
    findings += pod_findings
    crashing = any(f.evidence["open_next"] == "api/pods-crashing"
                   for f in pod_findings)
    findings += _up_findings(up, crashing)
    if available(p95) and p95 == p95 and p95 > latency_threshold_s:
        findings.append(_next(
            "high-latency", "p95 above threshold",
            f"p95 latency {p95:.2f}s > {latency_threshold_s:g}s.",
            "api/high-latency", p95_s=round(float(p95), 3),
            threshold_s=latency_threshold_s))
    if available(log_lines):
        findings += _log_findings(_texts(log_lines))
    findings += _dependency_findings(postgres, redis, errors)
    findings = _one_per_runbook_and_cause(findings)

    order = next_runbooks(findings)
    findings.sort(key=lambda f: order.index(f.evidence["open_next"])
                  if "open_next" in f.evidence else len(order))
    # An API that does not answer is a symptom; any other step that failed
    # leaves the triage blind on its part.
    not_run = [value.step for value in (health, pods, log_lines, up, p95,
                                        postgres, redis, errors)
               if isinstance(value, Unavailable) and not (
                   value is health and _unreachable(value))
               and not _refused_for_slots(value)]
    not_run = list(dict.fromkeys(not_run))
    escalation = _escalation(findings, not_run)
    return findings + ([escalation] if escalation else [])


def _refused_for_slots(value: Any) -> bool:
    """True for a refusal for lack of slots (Postgres connections, Redis
    clients): a symptom, not a gap in the triage."""
    return isinstance(value, Unavailable) and any(
        sign in str(value.error).lower() for sign in (
            "too many clients", "remaining connection slots",
            "max number of clients"))


def _dependency_findings(postgres: Any, redis: Any, errors: Any) -> list[Finding]:
    findings = []
    if _refused_for_slots(postgres):
        findings.append(_next("postgres-refusing", "Postgres refuses connections",
                              f"Postgres refused the triage's connection: "
                              f"{postgres.reason}",
                              "database/connection-pool-exhausted"))
    elif available(postgres) and (postgres.get("usage_ratio") or 0) >= NEAR_LIMIT:
        full = postgres["client_backends"] >= postgres["usable"]
        findings.append(_next(
            "postgres-slots-full" if full else "postgres-near-limit",
            "Postgres has no free slot" if full else "Postgres slots nearly all used",
            f"{postgres['client_backends']} of {postgres['usable']} usable "
            "Postgres connections in use.", "database/connection-pool-exhausted",
            client_backends=postgres["client_backends"], usable=postgres["usable"]))
    if _refused_for_slots(redis):
        findings.append(_next("redis-refusing", "Redis refuses clients",
                              f"Redis refused the triage's connection: "
                              f"{redis.reason}", "redis/connection-timeout"))
    elif available(redis):
        findings += _redis_findings(redis)
    if available(errors) and (errors.get("ratio") or 0) > ERROR_RATIO:
        findings.append(_next(
            "error-rate", "5xx above 1%",
            f"{errors['ratio']:.1%} of requests answered 5xx over "
            f"{errors['window']}.", "api/500-errors", ratio=errors["ratio"],
            window=errors["window"]))
    return findings


def _redis_findings(redis: dict[str, Any]) -> list[Finding]:
    findings = []
    if (redis.get("memory_ratio") or 0) >= NEAR_LIMIT:
        findings.append(_next(
            "redis-memory-near-limit", "Redis memory at its limit",
            f"Redis uses {redis['memory_ratio']:.0%} of maxmemory (policy "
            f"{redis['maxmemory_policy']}).", "redis/out-of-memory",
            used_memory=redis["used_memory"], maxmemory=redis["maxmemory"]))
    if (redis.get("clients_ratio") or 0) >= NEAR_LIMIT:
        findings.append(_next(
            "redis-clients-near-limit", "Redis clients at maxclients",
            f"{redis['connected_clients']} Redis clients of maxclients "
            f"{redis['maxclients']}.", "redis/connection-timeout",
            connected_clients=redis["connected_clients"],
            maxclients=redis["maxclients"]))
    if redis.get("ping_ms", 0) > SLOW_PING_MS:
        findings.append(_next(
            "redis-slow", "Redis slow to answer",
            f"Redis answered PING in {redis['ping_ms']:.0f} ms.",
            "redis/connection-timeout", ping_ms=redis["ping_ms"]))
    return findings


def _one_per_runbook_and_cause(findings: list[Finding]) -> list[Finding]:
    """Drop repeats of a cause for the same runbook (logs and probes agree)."""
    seen, kept = set(), []
    for finding in findings:
        key = (finding.cause, finding.evidence.get("open_next"))
        if key not in seen:
            seen.add(key)
            kept.append(finding)
    return kept


def _unreachable(health: Any) -> bool:
    """True for a failed health check that says the API did not answer."""
    return isinstance(health, Unavailable) and isinstance(
        health.error, (TargetUnreachable, TargetTimeout))


def _health_findings(health: Any) -> list[Finding]:
    if _unreachable(health):
        health = {"reachable": False, "status": None, "error": health.reason}
    if not available(health):
        return []
    if not health.get("reachable", True):
        return [_next("api-unreachable", "API not answering",
                      f"Health check failed: {health.get('error')}.",
                      "kubernetes/service-not-accessible",
                      url=health.get("url"), error=health.get("error"))]

    status = int(health["status"])
    if status < 400:
        return []
    body = str(health.get("body") or "")
    sign = _sign(body) if status >= 500 else None
    if sign is not None:
        runbook, label = sign
    elif status >= 500:
        runbook, label = "api/500-errors", "health endpoint failing"
    else:  # 4xx: the request reached something that is not the API's /health
        runbook, label = "kubernetes/service-not-accessible", "health not served"
    return [_next("api-unhealthy", label,
                  f"Health endpoint answered {status}"
                  + (f" ({label})." if sign else "."), runbook,
                  status=status, body=body[:160])]


def _pod_findings(pods: Any) -> list[Finding]:
    if not available(pods) or pods.empty:
        return []
    statuses = pods["status"].astype(str).str.removeprefix("Init:")
    findings = []
    for status, (runbook, label) in POD_SIGNS.items():
        names = sorted(pods.loc[statuses == status, "pod"])
        if names:
            findings.append(_next(f"pods-{status.lower()}", label,
                                  f"{len(names)} pod(s) {status}.", runbook,
                                  pods=len(names), pod_names=names[:5]))
    return findings


def _up_findings(up: Any, crashing: bool) -> list[Finding]:
    if not available(up) or up.get("targets") is None:
        return []
    if not up["targets"]:
        return [Finding("no-scrape-target", Severity.INFO,
                        "Prometheus has no scrape target for the API's job: "
                        "its metrics cannot tell whether the API is up.",
                        dict(up), step="Check metrics")]
    if not up["down"]:
        return []
    # Pods that crash explain failed scrapes; running pods that do not
    # answer are the API not being reachable.
    runbook = "api/pods-crashing" if crashing else "kubernetes/service-not-accessible"
    return [_next("scrape-target-down", "API not scraped",
                  f"{up['down']} of {up['targets']} API scrape target(s) down.",
                  runbook, **up)]


def _texts(log_lines: Any) -> list[str]:
    """Return each error line as one text: message and error together."""
    if hasattr(log_lines, "columns"):
        return [f"{row.msg} {row.error if isinstance(row.error, str) else ''}"
                for row in log_lines[["msg", "error"]].itertuples()]
    return [str(line) for line in log_lines]


def _sign(text: str) -> tuple[str, str] | None:
    lowered = text.lower()
    for marker, runbook, label in LOG_SIGNS:
        if marker in lowered:
            return runbook, label
    return None


def _log_findings(lines: Iterable[str]) -> list[Finding]:
    counts: dict[str, list[Any]] = {}
    for line in lines:
        sign = _sign(line)
        if sign is not None:
            runbook, label = sign
            entry = counts.setdefault(runbook, [label, 0, line])
            entry[1] += 1
    return [_next(f"log-{runbook.split('/')[-1]}", label,
                  f"{n} error line(s) in the API's logs: {label}.", runbook,
                  log_lines=n, example=example[:200])
            for runbook, (label, n, example) in counts.items()]


def _area(runbook: str) -> str:
    """Return the part of the platform a runbook looks at."""
    if runbook.startswith("kubernetes/") or runbook == "api/pods-crashing":
        return "cluster"
    return runbook.split("/")[0]


def _escalation(findings: list[Finding], not_run: list[str]) -> Finding | None:
    runbooks = next_runbooks(findings)
    areas = sorted({_area(r) for r in runbooks})
    if not_run:
        why = f"triage step(s) could not run: {', '.join(not_run)}"
    elif len(areas) >= UNRELATED_AREAS:
        why = f"symptoms in {len(areas)} unrelated areas: {', '.join(areas)}"
    else:
        return None
    return _next("escalate", why, f"Escalate: {why}.", ESCALATION,
                 areas=areas, steps_not_run=not_run)


def _next(cause: str, label: str, summary: str, runbook: str,
          **evidence: Any) -> Finding:
    return Finding(cause, Severity.WARNING, f"{summary} Open {runbook}.",
                   {"open_next": runbook, "symptom": label, **evidence},
                   step="Quick diagnostics")


def next_runbooks(findings: Iterable[Finding]) -> list[str]:
    """Return the runbooks to open next, no repeats, the escalation last.

    The runbook with the most symptoms comes first; ties go in the order of
    :data:`RUNBOOK_ORDER` (the cluster, the dependencies, then the API).
    """
    counts: dict[str, int] = {}
    for finding in findings:
        runbook = finding.evidence.get("open_next")
        if runbook:
            counts[runbook] = counts.get(runbook, 0) + 1

    def rank(runbook: str) -> tuple[int, int, int]:
        place = RUNBOOK_ORDER.index(runbook) if runbook in RUNBOOK_ORDER \
            else len(RUNBOOK_ORDER)
        return (runbook == ESCALATION, -counts[runbook], place)

    return sorted(counts, key=rank)


def next_steps(findings: Iterable[Finding], environment: str) -> pd.DataFrame:
    """Return the runbooks to open next: runbook, why, and how to run it."""
    import pandas as pd

    findings = list(findings)
    rows = []
    for runbook in next_runbooks(findings):
        symptoms = [f.evidence["symptom"] for f in findings
                    if f.evidence.get("open_next") == runbook]
        rows.append({"runbook": runbook,
                     "why": "; ".join(dict.fromkeys(symptoms)),
                     "how to run it": f"paracle-nb run {runbook} "
                                      f"-p environment {environment}"})
    return pd.DataFrame(rows, columns=["runbook", "why", "how to run it"])


def describe_health(health: Any) -> str:
    """Return one sentence on the health check."""
    if not available(health):
        return "Health check could not run."
    if not health.get("reachable", True):
        return f"**The API did not answer**: {health.get('error')}."
    verdict = "healthy" if health["status"] < 400 else "**unhealthy**"
    return (f"Health endpoint answered {health['status']} in "
            f"{health['latency_ms']:g} ms: {verdict}.")


def describe_pods(pods: Any) -> str:
    """Return one sentence on the namespace's pods."""
    if not available(pods):
        return "Pod status unavailable."
    if pods.empty:
        return "No pod in the namespace."
    api = pods[pods["api"]] if "api" in pods.columns else pods
    bad = pods[~pods["status"].isin(["Running", "Completed", "Succeeded"])]
    statuses = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
    return (f"{len(pods)} pod(s), {len(api)} of them the API's; "
            + (f"not running: {statuses}." if statuses else "all running."))


def describe_errors(counts: Any) -> str:
    """Return one sentence on the error and warning lines of the API's logs."""
    if not available(counts):
        return "API logs unavailable."
    if counts.empty:
        return "No error or warning line in the API's recent logs."
    return (f"{int(counts['lines'].sum())} error/warning line(s) in the API's "
            f"recent logs, {len(counts)} kind(s); the most frequent: "
            f"`{counts['msg'].iloc[0]}`.")


def describe_up(up: Any) -> str:
    """Return one sentence on the API's scrape targets."""
    if not available(up):
        return "Prometheus's `up` unavailable."
    if not up["targets"]:
        return "Prometheus has no scrape target for the API's job."
    if up["down"]:
        return (f"**{up['down']} of {up['targets']} scrape target(s) down**: "
                f"{', '.join(up.get('down_instances') or [])}.")
    return f"All {up['targets']} scrape target(s) of the API are up."


def describe_p95(p95: Any, threshold_s: float = 1.0) -> str:
    """Return one sentence on the API's current p95 latency."""
    if not available(p95):
        return "p95 latency unavailable."
    if p95 != p95:
        return "No request in the window: no p95 latency to read."
    state = "**above**" if p95 > threshold_s else "below"
    return f"p95 latency {p95 * 1000:.0f} ms, {state} the {threshold_s:g} s line."


def describe_next(steps: Any) -> str:
    """Return one sentence introducing the runbooks to open next."""
    if not available(steps) or steps.empty:
        return "Nothing needs a runbook: no problem found."
    return (f"Open {len(steps)} runbook(s), in this order; "
            f"first **{steps['runbook'].iloc[0]}**.")


def describe_dependencies(postgres: Any, redis: Any, errors: Any) -> str:
    """Return one sentence on Postgres, Redis and the 5xx share, as read."""
    parts = []
    if _refused_for_slots(postgres):
        parts.append("Postgres **refused** the connection (no free slot)")
    elif available(postgres):
        parts.append(f"Postgres {postgres['client_backends']} of "
                     f"{postgres['usable']} usable connections in use")
    else:
        parts.append("Postgres not read")
    if available(redis):
        memory = (f"{redis['memory_ratio']:.0%} of maxmemory"
                  if redis.get("memory_ratio") is not None else "no maxmemory")
        parts.append(f"Redis PING {redis['ping_ms']:.0f} ms, {memory}, "
                     f"{redis['connected_clients']} of {redis['maxclients']} "
                     "clients")
    elif _refused_for_slots(redis):
        parts.append("Redis **refused** the connection (maxclients reached)")
    else:
        parts.append("Redis not read")
    if available(errors) and errors.get("ratio") is not None:
        parts.append(f"{errors['ratio']:.1%} of requests 5xx over "
                     f"{errors['window']}")
    else:
        parts.append("5xx share not read")
    return "; ".join(parts) + "."
