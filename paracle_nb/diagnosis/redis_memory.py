"""Is Redis out of memory, and what fills it?"""

from __future__ import annotations

from typing import Any

from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import available
from paracle_nb.units import format_bytes

FULL_RATIO = 0.98


def diagnose_memory(memory: Any, stats: Any, prefixes: Any, *,
                    warn_ratio: float = 0.9, top: int = 5) -> list[Finding]:
    """Return findings on Redis memory: full and refusing writes, near full."""
    if not available(memory):
        return []
    limit, used = memory["maxmemory"], memory["used_memory"]
    if not limit:
        return [Finding("redis-maxmemory-unset", Severity.INFO,
                        "No maxmemory is set: Redis grows until the pod's limit.",
                        {"used_memory": used}, step="Check memory usage")]

    evidence: dict[str, Any] = {
        "used_memory": used,
        "used_memory_human": format_bytes(used),
        "maxmemory": limit,
        "maxmemory_human": format_bytes(limit),
        "usage_ratio": round(used / limit, 3),
        "maxmemory_policy": memory["maxmemory_policy"],
    }
    if available(stats):
        evidence["oom_rejected_writes"] = stats["oom_rejected_writes"]
        evidence["evicted_keys"] = stats["evicted_keys"]
    if available(prefixes) and not prefixes.empty:
        evidence["largest_prefixes"] = [
            {"prefix": r.prefix, "bytes": int(r.bytes), "keys": int(r.keys),
             "no_ttl": int(r.no_ttl)}
            for r in prefixes.head(top).itertuples()]

    full = used >= FULL_RATIO * limit
    if full and memory["maxmemory_policy"] == "noeviction":
        summary = (f"Used memory {format_bytes(used)} has reached maxmemory "
                   f"{format_bytes(limit)} with policy noeviction: writes fail "
                   f"with OOM")
        rejected = evidence.get("oom_rejected_writes")
        summary += f" ({rejected} rejected so far)." if rejected else "."
        summary += _prefix_sentence(evidence)
        return [Finding("redis-out-of-memory", Severity.CRITICAL, summary,
                        evidence, step="Check memory usage")]
    if full:
        summary = (f"Redis is at maxmemory {format_bytes(limit)} and evicting "
                   f"keys ({evidence.get('evicted_keys', '?')} so far) under "
                   f"{memory['maxmemory_policy']}: expect cache misses.")
        return [Finding("redis-evicting", Severity.WARNING, summary + _prefix_sentence(
            evidence), evidence, step="Check eviction stats")]
    if used >= warn_ratio * limit:
        summary = f"Used memory at {used / limit:.0%} of maxmemory."
        return [Finding("redis-memory-near-limit", Severity.WARNING,
                        summary + _prefix_sentence(evidence), evidence,
                        step="Check memory usage")]
    return []


def _prefix_sentence(evidence: dict[str, Any]) -> str:
    largest = evidence.get("largest_prefixes")
    if not largest:
        return ""
    parts = [f"{p['prefix']} {format_bytes(p['bytes'])}" for p in largest[:3]]
    return " Largest prefixes: " + ", ".join(parts) + "."


def describe_memory(memory: Any) -> str:
    """Return one sentence on used memory against the limit."""
    if not available(memory):
        return "Memory information unavailable."
    if not memory["maxmemory"]:
        return f"{format_bytes(memory['used_memory'])} used; no maxmemory set."
    return (f"{format_bytes(memory['used_memory'])} used of "
            f"{format_bytes(memory['maxmemory'])} maxmemory "
            f"({memory['usage_ratio']:.0%}), policy {memory['maxmemory_policy']}.")


def describe_stats(stats: Any) -> str:
    """Return one sentence on evictions, refused writes and the hit ratio."""
    if not available(stats):
        return "Eviction statistics unavailable."
    hits = stats["hit_ratio"]
    hit_text = f"hit ratio {hits:.0%}" if hits is not None else "no reads yet"
    return (f"{stats['evicted_keys']:,} key(s) evicted, "
            f"{stats['oom_rejected_writes']:,} write(s) refused for OOM since the "
            f"last stats reset, {hit_text}.")


def describe_keys(keyspace: Any, prefixes: Any) -> str:
    """Return one sentence: how many keys, and which prefix holds the memory."""
    if not available(keyspace) or not available(prefixes):
        return "Key counts unavailable."
    total = int(keyspace["keys"].sum()) if not keyspace.empty else 0
    if prefixes.empty:
        return f"{total:,} keys (DBSIZE)."
    top = prefixes.iloc[0]
    no_ttl = "none" if top["no_ttl"] == 0 else f"{int(top['no_ttl']):,}"
    return (f"{total:,} keys (DBSIZE) under {len(prefixes)} prefixes; "
            f"{top['prefix']} holds {format_bytes(top['bytes'])} "
            f"({top['share']:.0%}) in {int(top['keys']):,} keys, {no_ttl} "
            f"without TTL.")
