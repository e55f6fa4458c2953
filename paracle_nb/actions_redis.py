"""Remediation of Redis connection trouble, planned: limits, timeout, pooling.

Nothing here changes the server; each plan shows the setting before and
after, and the command to run.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from paracle_nb.actions import Plan, Plans, _frame, plan_set_env
from paracle_nb.errors import ParameterError
from paracle_nb.runbook import available
from paracle_nb.target import Target
from paracle_nb.units import format_bytes, format_duration

if TYPE_CHECKING:
    import redis

POOL_SNIPPET = """\
# Application code: one pool per process, shared by every request
import redis
from redis.connection import ConnectionPool

pool = ConnectionPool(host="redis", port=6379, max_connections={size})
redis_client = redis.Redis(connection_pool=pool)"""


# Known shortcoming: the default target (the guide's 10000) ignores how far
# over the limit the clients are; a leak needs pooling, not more slots.
def plan_maxclients(limits: Any, new_maxclients: int = 10_000) -> Plan:
    """Plan raising ``maxclients`` with CONFIG SET."""
    before = limits["maxclients"] if available(limits) else None
    changes = _frame([{"setting": "maxclients", "before": before,
                       "after": int(new_maxclients)}],
                     ["setting", "before", "after"])
    notes = ["Each client costs memory and a file descriptor: the server's open "
             "file limit must exceed maxclients + 32.",
             "CONFIG SET lasts until restart: write it to redis.conf too "
             "(CONFIG REWRITE, or the chart's values).",
             "More slots hide a leak instead of fixing it: check the largest "
             "client group first."]
    return Plan("raise maxclients", changes,
                f"CONFIG SET maxclients {int(new_maxclients)}", notes)


def plan_client_timeout(limits: Any, timeout_s: int = 300) -> Plan:
    """Plan closing idle clients after ``timeout_s`` seconds (CONFIG SET timeout)."""
    before = limits["timeout_s"] if available(limits) else None
    changes = _frame([{"setting": "timeout",
                       "before": "unknown" if before is None else before,
                       "after": int(timeout_s)}], ["setting", "before", "after"])
    notes = [f"Redis closes clients idle for {format_duration(timeout_s)}; "
             "replicas, blocked and Pub/Sub clients are exempt.",
             "Pools must tolerate a closed connection (redis-py reconnects on "
             "the next command; health_check_interval checks before use).",
             "CONFIG SET lasts until restart: write it to redis.conf too."]
    return Plan(f"close clients idle for {format_duration(timeout_s)}", changes,
                f"CONFIG SET timeout {int(timeout_s)}", notes)


def plan_connection_pooling(by_name: Any, max_connections: int = 50) -> Plan:
    """Plan a bounded connection pool for the client groups above its size."""
    columns = ["name", "host", "connections now", "after"]
    rows = []
    if available(by_name) and not by_name.empty:
        for row in by_name.itertuples():
            if row.clients > max_connections:
                rows.append({"name": row.name, "host": row.host,
                             "connections now": int(row.clients),
                             "after": f"at most {max_connections} per process"})
    notes = ["A bounded pool makes callers wait for a free connection instead "
             "of opening new ones until Redis refuses them.",
             "Size: (processes per host) x max_connections must stay well "
             "under maxclients."]
    return Plan(f"pool connections (max_connections={max_connections})",
                _frame(rows, columns),
                POOL_SNIPPET.format(size=int(max_connections)), notes)


def plan_eviction_policy(memory: Any, policy: str = "allkeys-lru",
                         prefixes: Any = None) -> Plan:
    """Plan switching Redis to an evicting maxmemory-policy."""
    if policy not in POLICIES:
        raise ParameterError(f"unknown maxmemory-policy {policy!r}; one of: "
                             f"{', '.join(POLICIES)}")
    before = memory["maxmemory_policy"] if available(memory) else None
    changes = _frame([{"setting": "maxmemory-policy", "before": before,
                       "after": policy}], ["setting", "before", "after"])
    notes = ["Evicts keys under memory pressure instead of refusing writes.",
             *_eviction_scope(policy, prefixes)]
    return Plan(f"set maxmemory-policy {policy}", changes,
                f"CONFIG SET maxmemory-policy {policy}", notes)


def plan_delete_by_pattern(target: Target, client: redis.Redis, pattern: str,
                           *, max_keys: int = 100_000, sample: int = 5) -> Plan:
    """Plan deleting the keys matching a pattern: count, bytes, examples."""
    from paracle_nb.redis import _guard

    count, size, cursor = 0, 0, 0
    examples: list[str] = []
    while count < max_keys:
        cursor, keys = _guard(target, "SCAN", client.scan, cursor, pattern, 1000)
        if keys:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.memory_usage(key)
            size += sum(int(s or 0) for s in _guard(target, "MEMORY USAGE",
                                                    pipe.execute))
            count += len(keys)
            examples.extend(k.decode(errors="replace") for k in keys[:sample])
        if cursor == 0:
            break
    complete = cursor == 0
    if pattern.strip() == "*":
        raise ParameterError("pattern '*' matches every key, sessions included: "
                             "name the prefix to clear, e.g. 'cache:*'")
    changes = _frame([{"pattern": pattern,
                       "keys": count if complete else f">= {count}",
                       "memory_freed": format_bytes(size),
                       "examples": ", ".join(examples[:sample])}],
                     ["pattern", "keys", "memory_freed", "examples"])
    notes = ["Deleted with SCAN and UNLINK in batches, on this Redis only; "
             "never FLUSHDB."]
    return Plan(f"delete keys matching {pattern}", changes,
                f"SCAN 0 MATCH {pattern} COUNT 1000 ... then UNLINK in batches",
                notes)


def plan_maxmemory(memory: Any, new_maxmemory: str) -> Plan:
    """Plan raising Redis maxmemory; the pod's memory limit must allow it."""
    wanted = parse_redis_bytes(new_maxmemory)
    current = memory["maxmemory"] if available(memory) else None
    if current and wanted <= current:
        raise ParameterError(f"new maxmemory {new_maxmemory} is not above the "
                             f"current {format_bytes(current)}")
    before = format_bytes(current) if current is not None else None
    changes = _frame([{"setting": "maxmemory", "before": before,
                       "after": format_bytes(wanted)}],
                     ["setting", "before", "after"])
    notes = ["Keep maxmemory well under the Redis pod's memory limit "
             "(fork for persistence needs headroom)."]
    return Plan("raise maxmemory", changes, f"CONFIG SET maxmemory {new_maxmemory}",
                notes)


# -- scheduling and service access (Kubernetes) -------------------------------------


POLICIES = ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
            "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")
_UNITS = {"b": 1, "k": 1000, "kb": 1024, "m": 10**6, "mb": 1024**2,
          "g": 10**9, "gb": 1024**3}


def parse_redis_bytes(text: str) -> int:
    """Return a Redis memory setting (``64mb``, ``6gb``, ``1048576``) in bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?b?)\s*", str(text).lower())
    if not match:
        raise ParameterError(f"not a Redis memory size: {text!r} (e.g. '64mb')")
    return int(match.group(1)) * _UNITS[match.group(2) or "b"]


def _eviction_scope(policy: str, prefixes: Any) -> list[str]:
    """Say which of this Redis's keys the policy could evict."""
    if not available(prefixes) or prefixes.empty:
        return ["allkeys-* may evict any key; volatile-* only keys with a TTL."]
    with_ttl = prefixes[prefixes["no_ttl"] == 0]
    without = prefixes[prefixes["no_ttl"] > 0]
    listing = ", ".join(f"{r.prefix} ({format_bytes(r.bytes)})"
                        for r in without.itertuples()) or "none"
    if policy.startswith("volatile"):
        return [f"{policy} evicts only keys with a TTL "
                f"({', '.join(with_ttl['prefix']) or 'none here'}); keys without "
                f"TTL stay and keep the memory: {listing}."]
    if policy.startswith("allkeys"):
        return [f"{policy} may evict any key, including those without TTL: "
                f"{listing}; sessions too if they are least recently used."]
    return []


def redis_memory_plans(verdict: Any, target: Target, *, client: Any, memory: Any,
                       prefixes: Any, delete_pattern: str, new_policy: str,
                       new_maxmemory: str, deployment: str) -> Plans:
    """Return the guide's fixes for what the Redis memory runbook found."""
    plans = Plans()
    causes = set(verdict.causes)
    if causes & {"redis-out-of-memory", "redis-memory-near-limit"}:
        plans.append(plan_delete_by_pattern(target, client, delete_pattern))
        if memory["maxmemory_policy"] == "noeviction":
            plans.append(plan_eviction_policy(memory, new_policy, prefixes))
    if causes & {"redis-out-of-memory", "redis-memory-near-limit",
                 "redis-evicting"}:
        plans.append(plan_maxmemory(memory, new_maxmemory))
        plans.append(plan_set_env(target, deployment, "api", {"CACHE_TTL": "300"}))
    return plans
