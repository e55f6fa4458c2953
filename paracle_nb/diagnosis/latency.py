"""Why is the API slow: the database, an LLM provider, Redis, or too much load?

Each dependency is judged on its own evidence: the app's statement times
(a sample of ``pg_stat_statements``), LLM call durations and timeouts from
the API logs, Redis round trips. Too many concurrent requests is named
only when every dependency is fast and requests queue for workers: a slow
dependency makes requests pile up too, and then it is the cause.
"""

from __future__ import annotations

import math
import re
from typing import Any

from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import available

_TABLE = re.compile(r"\b(?:from|join)\s+(?:only\s+)?([a-z_][\w.]*)"
                    r"(?:\s+(?:as\s+)?([a-z_]\w*))?", re.I)
_EQUALS = re.compile(r"(?:\b([a-z_]\w*)\.)?\b([a-z_]\w*)\s*=\s*\$\d+", re.I)
_KEYWORDS = {"where", "join", "on", "left", "right", "inner", "outer", "cross",
             "group", "order", "limit", "union", "using", "natural", "full",
             "lateral", "offset", "window", "having", "for"}


def diagnose_latency(current: Any, llm: Any, statements: Any, redis_rtt: Any,
                     in_flight: Any, capacity: Any, *, threshold_s: float = 1.0,
                     slow_statement_ms: float = 100.0, slow_redis_ms: float = 50.0,
                     timeout_share: float = 0.1) -> list[Finding]:
    """Return the causes of high latency found, then ``high-latency`` itself.

    With latency under the threshold a slow dependency is only noted (info);
    without a latency reading it is a warning.
    """
    p95 = _p95(current)
    high = None if p95 is None else p95 > threshold_s
    severity = {True: Severity.CRITICAL, False: Severity.INFO,
                None: Severity.WARNING}[high]

    causes = [f for f in (
        _llm_timeout(llm, threshold_s, timeout_share, severity),
        _slow_database(statements, slow_statement_ms, severity),
        _slow_redis(redis_rtt, slow_redis_ms, severity),
    ) if f is not None]
    if high and not causes:
        queued = _too_many_requests(in_flight, capacity, current)
        if queued is not None:
            causes.append(queued)

    findings = list(causes)
    if high:
        findings.append(_high_latency(current, threshold_s,
                                      [f.cause for f in causes]))
    elif available(current) and p95 is None:
        findings.append(Finding(
            "no-traffic", Severity.INFO,
            f"No request reached the API in the last {current['window']}: "
            "there is no latency to judge.", {"window": current["window"]},
            step="Check current latency"))
    return findings


def _p95(current: Any) -> float | None:
    """Return the p95 in seconds, None without a reading."""
    if not available(current):
        return None
    return _seconds(current.get("p95_ms"))


def _seconds(milliseconds: Any) -> float | None:
    """Return milliseconds (int, float, NA or None) as seconds, or None."""
    try:
        value = float(milliseconds)
    except (TypeError, ValueError):  # None, or pandas' NA
        return None
    return None if math.isnan(value) else round(value / 1000, 3)


def _high_latency(current: dict[str, Any], threshold_s: float,
                  explained_by: list[str]) -> Finding:
    p95 = _seconds(current["p95_ms"]) or 0.0
    evidence = {"p95_s": p95, "threshold_s": threshold_s,
                "p50_s": _seconds(current.get("p50_ms")),
                "requests_per_second": current.get("requests_per_second"),
                "window": current["window"], "explained_by": explained_by}
    summary = (f"p95 latency is {p95:.2f} s over the last "
               f"{current['window']}, above the {threshold_s:g} s threshold")
    if explained_by:
        summary += f"; see {', '.join(explained_by)}."
    else:
        summary += ": no dependency and no queue explains it."
    return Finding("high-latency", Severity.WARNING, summary, evidence,
                   step="Check current latency")


def _llm_timeout(llm: Any, threshold_s: float, timeout_share: float,
                 severity: Severity) -> Finding | None:
    if not available(llm) or llm.empty:
        return None
    rows = [{"provider": r.provider, "calls": int(r.calls),
             "timeouts": int(r.timeouts), "p95_s": _seconds(r.p95_ms),
             "max_s": _seconds(r.max_ms), "timeout_s": _seconds(r.timeout_ms)}
            for r in llm.itertuples()]
    worst = None
    for row in rows:
        share = row["timeouts"] / row["calls"] if row["calls"] else 0.0
        slow = row["p95_s"] is not None and row["p95_s"] >= threshold_s
        if (row["timeouts"] and share >= timeout_share) or slow:
            if worst is None or (row["timeouts"], row["p95_s"] or 0) > (
                    worst["timeouts"], worst["p95_s"] or 0):
                worst = row
    if worst is None:
        return None

    healthy = {r["provider"]: r["p95_s"] for r in rows
               if r["provider"] != worst["provider"] and not r["timeouts"]
               and r["p95_s"] is not None and r["p95_s"] < threshold_s}
    evidence = {
        "provider": worst["provider"], "calls": worst["calls"],
        "timeouts": worst["timeouts"],
        "timeout_share": round(worst["timeouts"] / worst["calls"], 3)
        if worst["calls"] else None,
        "p95_s": worst["p95_s"], "max_s": worst["max_s"],
        "llm_timeout_s": worst["timeout_s"], "healthy_providers": healthy,
    }
    if worst["timeouts"]:
        summary = (f"{worst['provider']}: {worst['timeouts']} of {worst['calls']} "
                   f"LLM calls timed out")
        if worst["timeout_s"]:
            summary += f" after {worst['timeout_s']:g} s"
    else:
        summary = f"{worst['provider']}: LLM calls are slow"
    if worst["p95_s"] is not None:
        summary += f" (p95 {worst['p95_s']:.2f} s)"
    summary += "."
    if healthy:
        others = ", ".join(f"{p} p95 {s:.2f} s" for p, s in healthy.items())
        summary += f" Healthy: {others}."
    return Finding("llm-provider-timeout", severity, summary, evidence,
                   step="Check LLM provider latency")


def _slow_database(statements: Any, slow_ms: float, severity: Severity
                   ) -> Finding | None:
    if not available(statements) or statements.empty:
        return None
    sampled = statements[statements["sample_calls"] > 0]
    if not sampled.empty:
        basis, column, calls_column = "sample", "sample_mean_ms", "sample_calls"
        rows = sampled
    else:
        basis, column, calls_column = "all-time", "mean_exec_time_ms", "calls"
        rows = statements
    slow = rows[rows[column] >= slow_ms].sort_values(column, ascending=False)
    if slow.empty:
        return None

    top = slow.iloc[0]
    candidate = index_candidate(str(top["query"]))
    evidence: dict[str, Any] = {
        "query": str(top["query"])[:300], "mean_ms": round(float(top[column]), 1),
        "calls": int(top[calls_column]), "basis": basis,
        "all_time_mean_ms": round(float(top["mean_exec_time_ms"]), 1),
        "slow_statements": int(len(slow)), "threshold_ms": slow_ms,
        # Named as the slow-queries runbook names them, for the index plan.
        "table": candidate["table"] if candidate else None,
        "filter_columns": candidate["columns"] if candidate else [],
    }
    when = (f"{evidence['calls']} calls in the last {top['sample_seconds']:g} s"
            if basis == "sample" else f"{evidence['calls']} calls, all-time")
    summary = (f"An API statement takes {evidence['mean_ms']:.0f} ms on average "
               f"({when}), over the {slow_ms:g} ms line")
    if candidate:
        summary += (f": it filters {candidate['table']} on "
                    f"({', '.join(candidate['columns'])}).")
    else:
        summary += "."
    return Finding("slow-database-queries", severity, summary, evidence,
                   step="Check database query time")


def _slow_redis(rtt: Any, slow_ms: float, severity: Severity) -> Finding | None:
    if not available(rtt) or rtt["median_ms"] < slow_ms:
        return None
    evidence = {**rtt, "threshold_ms": slow_ms}
    summary = (f"Redis answers PING in {rtt['median_ms']:.0f} ms (median of "
               f"{rtt['samples']}, max {rtt['max_ms']:.0f} ms), over the "
               f"{slow_ms:g} ms line: every cache call waits that long.")
    return Finding("slow-redis", severity, summary, evidence,
                   step="Check Redis latency")


def _too_many_requests(in_flight: Any, capacity: Any, current: Any
                       ) -> Finding | None:
    if not available(in_flight) or not available(capacity):
        return None
    workers, peak = capacity.get("workers"), in_flight.get("max_in_flight")
    if not workers or peak is None or peak <= workers:
        return None
    per_pod = capacity.get("workers_per_pod") or 1
    evidence = {
        "max_in_flight": peak, "mean_in_flight": in_flight.get("mean_in_flight"),
        "workers": workers, "ready_replicas": capacity.get("ready_replicas"),
        "workers_per_pod": capacity.get("workers_per_pod"),
        "requests_per_second": in_flight.get("requests_per_second"),
        "replicas_needed": math.ceil(peak / per_pod),
        "window": in_flight.get("window"),
    }
    summary = (f"Up to {peak:.0f} requests in flight for {workers} workers "
               f"({capacity.get('ready_replicas')} replicas x {per_pod}): requests "
               f"wait for a worker while the database, LLM providers and Redis "
               f"answer fast.")
    return Finding("too-many-concurrent-requests", Severity.CRITICAL, summary,
                   evidence, step="Check active requests")


def index_candidate(query: str) -> dict[str, Any] | None:
    """Return the table and columns a statement filters by equality on.

    >>> index_candidate("SELECT id FROM executions e WHERE e.agent_id = $1 "
    ...                 "AND e.status = $2")
    {'table': 'executions', 'columns': ['agent_id', 'status']}
    """
    aliases: dict[str, str] = {}
    for table, alias in _TABLE.findall(query):
        if table.lower() in _KEYWORDS:
            continue
        aliases[table] = table
        if alias and alias.lower() not in _KEYWORDS:
            aliases[alias] = table
    tables = sorted(set(aliases.values()))
    if not tables:
        return None

    columns: dict[str, list[str]] = {}
    for qualifier, column in _EQUALS.findall(query):
        table = aliases.get(qualifier) if qualifier else (
            tables[0] if len(tables) == 1 else None)
        if table is None:
            continue
        seen = columns.setdefault(table, [])
        if column not in seen:
            seen.append(column)
    if not columns:
        return None
    table = max(columns, key=lambda t: len(columns[t]))
    return {"table": table, "columns": columns[table]}


def describe_latency(current: Any, threshold_s: float = 1.0) -> str:
    """Return one sentence on the API's p95 against the threshold."""
    if not available(current):
        return "Latency from Prometheus is unavailable."
    p95 = _p95(current)
    if p95 is None:
        return f"No requests in the last {current['window']}: no p95 to show."
    verdict = "above" if p95 > threshold_s else "under"
    return (f"p95 is **{p95:.2f} s** over the last {current['window']} "
            f"({current['requests_per_second']} requests/s), {verdict} the "
            f"{threshold_s:g} s threshold.")


def describe_llm(llm: Any) -> str:
    """Return one sentence on LLM call durations per provider."""
    if not available(llm):
        return "API logs unavailable."
    if llm.empty:
        return "No LLM call in the API logs of this window."
    parts = [f"{r.provider} p95 {_seconds(r.p95_ms):.2f} s"
             + (f", {int(r.timeouts)} timed out" if r.timeouts else "")
             for r in llm.itertuples() if _seconds(r.p95_ms) is not None]
    return "LLM calls from the API logs: " + "; ".join(parts) + "."


def describe_statements(statements: Any, slow_ms: float = 100.0) -> str:
    """Return one sentence on the app's slowest statement in the sample."""
    if not available(statements):
        return "Statement times unavailable."
    sampled = statements[statements["sample_calls"] > 0]
    if sampled.empty:
        return ("No API statement ran during the sample; all-time means "
                "below.")
    top = sampled.iloc[0]
    line = "over" if top["sample_mean_ms"] >= slow_ms else "under"
    return (f"The API's slowest statement took {top['sample_mean_ms']:.3g} ms on "
            f"average over {int(top['sample_calls'])} calls in the sample, "
            f"{line} the {slow_ms:g} ms line.")


def describe_redis(rtt: Any, slow_ms: float = 50.0) -> str:
    """Return one sentence on Redis round trips."""
    if not available(rtt):
        return "Redis latency unavailable."
    line = "over" if rtt["median_ms"] >= slow_ms else "under"
    return (f"PING round trip: median {rtt['median_ms']:.1f} ms, max "
            f"{rtt['max_ms']:.1f} ms over {rtt['samples']} samples, {line} the "
            f"{slow_ms:g} ms line.")


def describe_concurrency(in_flight: Any, capacity: Any) -> str:
    """Return one sentence on requests in flight against worker capacity."""
    if not available(in_flight):
        return "Requests in flight unavailable."
    peak = in_flight.get("max_in_flight")
    workers = capacity.get("workers") if available(capacity) else None
    if peak is None:
        return "No in-flight gauge in this window."
    if not workers:
        return f"Up to {peak:.0f} requests in flight; worker capacity unknown."
    state = "requests queue" if peak > workers else "no queue"
    return (f"Up to {peak:.0f} requests in flight for {workers} workers: "
            f"{state}.")
