"""Why do Redis connections time out: no slot left, idle clients, or a slow Redis?"""

from __future__ import annotations

import statistics
from typing import Any

from paracle_nb.errors import ConnectionRefused
from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import Unavailable, available
from paracle_nb.units import format_duration

MAX_CLIENTS_MARKER = "max number of clients reached"


def refused_for_max_clients(result: Any) -> str | None:
    """Return Redis's refusal if a step failed because no client slot was left."""
    if isinstance(result, Unavailable) and isinstance(result.error,
                                                      ConnectionRefused):
        said = result.error.detail or str(result.error)
        if MAX_CLIENTS_MARKER in said:
            return said
    return None


def refused_samples(samples: Any) -> int:
    """Return how many connectivity samples Redis refused for lack of slots."""
    if not available(samples) or samples.empty:
        return 0
    return int(samples["error"].fillna("").str.contains(MAX_CLIENTS_MARKER).sum())


def diagnose_clients(connected: Any, limits: Any, stats: Any, clients: Any,
                     samples: Any, *, idle_older_than_s: float,
                     idle_clients_warn: int, slow_ms: float,
                     warn_ratio: float = 0.9) -> list[Finding]:
    """Return findings: max clients reached, idle clients kept, Redis slow.

    ``connected`` is the result of the runbook's own connect step: when
    Redis refused it for lack of slots, that refusal is the finding.
    """
    refusal = refused_for_max_clients(connected)
    if refusal:
        evidence: dict[str, Any] = {"server_message": refusal, "inspected": False,
                                    "refused_samples": refused_samples(samples)}
        return [Finding(
            "redis-max-clients", Severity.CRITICAL,
            f"Redis refused the runbook's own connection: {refusal}.",
            evidence, step="Connect")]

    findings = []
    full = _max_clients(limits, stats, clients, samples,
                        idle_older_than_s=idle_older_than_s,
                        warn_ratio=warn_ratio)
    if full:
        findings.append(full)
    idle = _idle_clients(limits, clients, idle_older_than_s, idle_clients_warn)
    if idle:
        findings.append(idle)
    slow = _slow(samples, slow_ms)
    if slow:
        findings.append(slow)
    return findings


def _max_clients(limits: Any, stats: Any, clients: Any, samples: Any, *,
                 idle_older_than_s: float, warn_ratio: float) -> Finding | None:
    if not available(limits) or not limits["maxclients"]:
        return None
    connected, maxclients = limits["connected_clients"], limits["maxclients"]
    rejected = stats["rejected_connections"] if available(stats) else 0
    refused = refused_samples(samples)
    full = connected >= maxclients or refused > 0
    if not full and connected < warn_ratio * maxclients and not rejected:
        return None

    evidence: dict[str, Any] = {
        "connected_clients": connected,
        "maxclients": maxclients,
        "usage_ratio": limits["usage_ratio"],
        "rejected_connections": rejected,
        "refused_samples": refused,
        "timeout_s": limits["timeout_s"],
    }
    evidence.update(_top_client(clients))
    evidence.update(_idle_stats(clients, idle_older_than_s))
    if full:
        summary = (f"{connected} of {maxclients} client slots taken: Redis refuses "
                   f"new connections ({rejected} refused so far"
                   f"{f', {refused} of our test connections' if refused else ''}).")
        severity = Severity.CRITICAL
    else:
        summary = (f"{connected} of {maxclients} client slots taken; {rejected} "
                   "connection(s) refused since the stats were last reset.")
        severity = Severity.WARNING
    if "top_client_name" in evidence:
        summary += (f" Most held by {evidence['top_client_name']} from "
                    f"{evidence['top_client_host']} "
                    f"({evidence['top_client_count']}).")
    return Finding("redis-max-clients", severity, summary, evidence,
                   step="Check max clients")


def _top_client(clients: Any) -> dict[str, Any]:
    if not available(clients) or clients.empty:
        return {}
    counts = clients.groupby(["name", "host"]).size().sort_values(ascending=False)
    (name, host), count = counts.index[0], int(counts.iloc[0])
    return {"top_client_name": name, "top_client_host": host,
            "top_client_count": count}


def _idle_stats(clients: Any, idle_older_than_s: float) -> dict[str, Any]:
    if not available(clients) or clients.empty:
        return {}
    return {"idle_over_threshold": int((clients["idle_s"] >= idle_older_than_s)
                                       .sum()),
            "idle_threshold_s": idle_older_than_s,
            "median_idle_s": float(clients["idle_s"].median()),
            "max_idle_s": float(clients["idle_s"].max())}


def _idle_clients(limits: Any, clients: Any, idle_older_than_s: float,
                  idle_clients_warn: int) -> Finding | None:
    if not available(clients) or clients.empty:
        return None
    idle = clients[clients["idle_s"] >= idle_older_than_s]
    timeout = limits["timeout_s"] if available(limits) else None
    # With a timeout, Redis closes idle clients itself; with 0, never.
    if len(idle) < idle_clients_warn or timeout not in (0, None):
        return None

    counts = idle.groupby(["name", "host"]).size().sort_values(ascending=False)
    (name, host), count = counts.index[0], int(counts.iloc[0])
    evidence = {
        "idle_clients": len(idle),
        "idle_threshold_s": idle_older_than_s,
        "timeout_s": timeout,
        "top_idle_name": name,
        "top_idle_host": host,
        "top_idle_count": count,
        "max_idle_s": float(idle["idle_s"].max()),
        "connected_clients": limits["connected_clients"] if available(limits)
        else None,
    }
    never = "timeout is 0: Redis never closes them" if timeout == 0 else \
        "the timeout setting is unknown"
    summary = (f"{len(idle)} clients idle for over "
               f"{format_duration(idle_older_than_s)}, {count} of them {name} "
               f"from {host}; {never}.")
    return Finding("redis-idle-connections", Severity.WARNING, summary, evidence,
                   step="Check connected clients")


def _slow(samples: Any, slow_ms: float) -> Finding | None:
    if not available(samples) or samples.empty:
        return None
    answered = samples.dropna(subset=["ping_ms"])
    if answered.empty:
        return None
    pings = [float(v) for v in answered["ping_ms"]]
    fresh = [float(v) for v in answered["connect_ping_ms"]]
    # A fresh connection's first answer takes several round trips (connect,
    # AUTH, PING), so a busy server shows there even when a lone PING slips
    # through between two slow commands.
    median_ping, median_fresh = statistics.median(pings), statistics.median(fresh)
    if median_ping <= slow_ms and median_fresh <= slow_ms:
        return None
    evidence = {
        "ping_ms": [round(v, 1) for v in pings],
        "median_ping_ms": round(median_ping, 1),
        "max_ping_ms": round(max(pings), 1),
        "connect_ping_ms": [round(v, 1) for v in fresh],
        "median_connect_ping_ms": round(median_fresh, 1),
        "samples": len(pings),
        "slow_ms": slow_ms,
    }
    summary = (f"Redis answers slowly: a fresh connection waits {median_fresh:.0f} "
               f"ms for its first PING, a PING on an open one {median_ping:.0f} ms "
               f"(medians of {len(pings)} samples; threshold {slow_ms:g} ms).")
    return Finding("redis-slow", Severity.WARNING, summary, evidence,
                   step="Test connectivity")


def describe_groups(by_name: Any) -> str:
    """Return one sentence on the client groups and how idle they are."""
    if not available(by_name):
        return "Client list unavailable."
    if by_name.empty:
        return "No client connected besides this runbook."
    top = by_name.iloc[0]
    return (f"{int(by_name['clients'].sum())} client(s) in {len(by_name)} "
            f"group(s); the largest, {top['name']} from {top['host']}, has "
            f"{int(top['clients'])}; {int(by_name['idle_over_threshold'].sum())} "
            "idle past the threshold.")


def describe_limits(limits: Any) -> str:
    """Return one sentence: clients against maxclients, and the idle timeout."""
    if refused_for_max_clients(limits):
        return "Redis refused our connection: every client slot is taken."
    if not available(limits):
        return "Client limits unavailable."
    if limits["timeout_s"] is None:
        timeout = "timeout unknown (CONFIG GET refused)"
    elif limits["timeout_s"] == 0:
        timeout = "timeout 0: idle clients are never closed"
    else:
        timeout = f"idle clients closed after {format_duration(limits['timeout_s'])}"
    return (f"{limits['connected_clients']} of {limits['maxclients']} client slots "
            f"taken (this runbook's included), {limits['blocked_clients']} "
            f"blocked; {timeout}.")


def describe_stats(stats: Any) -> str:
    """Return one sentence on refused connections."""
    if not available(stats):
        return "Connection stats unavailable."
    rejected = stats["rejected_connections"]
    if not rejected:
        return "No connection refused since the stats were last reset."
    return (f"{rejected} connection(s) refused for lack of a client slot, of "
            f"{stats['total_connections_received']} received.")


def describe_samples(samples: Any) -> str:
    """Return one sentence on the connectivity test."""
    if not available(samples) or samples.empty:
        return "Connectivity test unavailable."
    answered = samples.dropna(subset=["ping_ms"])
    failed = len(samples) - len(answered)
    if answered.empty:
        return (f"All {failed} test connections failed: "
                f"{samples['error'].iloc[0]}.")
    text = (f"{len(answered)} of {len(samples)} test connections answered: "
            f"PING {statistics.median(answered['ping_ms']):.1f} ms median, "
            f"connect+PING {statistics.median(answered['connect_ping_ms']):.1f} "
            "ms median.")
    return text + (f" {failed} failed." if failed else "")
