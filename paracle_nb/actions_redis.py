"""Remediation of Redis connection trouble, planned: limits, timeout, pooling.

Nothing here changes the server; each plan shows the setting before and
after, and the command to run.
"""

from __future__ import annotations

from typing import Any

from paracle_nb.actions import Plan, _frame
from paracle_nb.runbook import available
from paracle_nb.units import format_duration

POOL_SNIPPET = """\
# Application code: one pool per process, shared by every request
import redis
from redis.connection import ConnectionPool

pool = ConnectionPool(host="redis", port=6379, max_connections={size})
redis_client = redis.Redis(connection_pool=pool)"""


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
