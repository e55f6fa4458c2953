"""Remediation, planned first: what exactly would change, before and after.

A plan reads the target and describes the change; it never writes. Each
plan carries the command an engineer would run, scoped to exactly the
objects, sessions or keys it lists.
"""

from __future__ import annotations

import html
import shlex
from typing import TYPE_CHECKING, Any

from paracle_nb import kube
from paracle_nb.runbook import available
from paracle_nb.target import Target
from paracle_nb.units import format_bytes, format_duration, parse_quantity

if TYPE_CHECKING:
    import pandas as pd
    import redis


class Plan:
    """A described change: the rows it touches, the command, and caveats."""

    def __init__(self, title: str, changes: pd.DataFrame, command: str,
                 notes: list[str] | None = None) -> None:
        self.title = title
        self.changes = changes
        self.command = command
        self.notes = notes or []

    @property
    def empty(self) -> bool:
        return self.changes.empty

    def apply(self) -> None:
        """Not available yet: plans are shown, and applied by hand."""
        raise NotImplementedError(
            "applying a plan is not built yet: review it and run the command "
            "it shows; diagnosis stays read-only")

    def _repr_html_(self) -> str:
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        table = (self.changes.to_html(index=False, max_rows=20)
                 if not self.changes.empty else "<p>Nothing to change.</p>")
        return (f"<div><p><b>Plan (not applied)</b>: {html.escape(self.title)}</p>"
                f"{table}<ul>{notes}</ul>"
                f"<pre>{html.escape(self.command)}</pre></div>")

    def __repr__(self) -> str:
        return f"Plan({self.title!r}, {len(self.changes)} change(s), not applied)"


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def plan_memory_limit(target: Target, deployment: str, container: str,
                      new_limit: str = "") -> Plan:
    """Plan raising a container's memory limit (default: double it)."""
    spec = kube.get_deployment(target, deployment)
    containers = spec["spec"]["template"]["spec"]["containers"]
    current = next(c for c in containers if c["name"] == container)
    before = current.get("resources", {}).get("limits", {}).get("memory")
    if not new_limit:
        doubled = 2 * (parse_quantity(before) or 256 * 2**20)
        new_limit = f"{int(doubled // 2**20)}Mi"

    changes = _frame([{
        "object": f"deployment/{deployment}",
        "field": f"containers[{container}].resources.limits.memory",
        "before": before or "(none)",
        "after": new_limit,
    }], ["object", "field", "before", "after"])
    command = shlex.join(["kubectl", "set", "resources", f"deployment/{deployment}",
                          "-c", container, f"--limits=memory={new_limit}",
                          "-n", target.namespace])
    notes = ["Starts a rolling update of every pod of the deployment.",
             "Check node allocatable memory first: pods may go Pending."]
    return Plan(f"raise memory limit of {deployment}/{container}", changes,
                command, notes)


def plan_terminate_idle(sessions: Any, application: str,
                        older_than_s: float) -> Plan:
    """Plan ending idle sessions of one application older than a threshold."""
    columns = ["pid", "role", "application", "state", "idle_for"]
    if not available(sessions) or sessions.empty:
        return Plan("terminate idle sessions", _frame([], columns), "-- nothing")
    idle = sessions[(sessions["application"] == application)
                    & sessions["state"].str.startswith("idle")
                    & (sessions["state_age_s"] >= older_than_s)]
    rows = [{"pid": int(r.pid), "role": r.role, "application": r.application,
             "state": r.state, "idle_for": format_duration(r.state_age_s)}
            for r in idle.itertuples()]
    pids = ", ".join(str(r["pid"]) for r in rows) or "NULL"
    command = (
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity\n"
        f" WHERE pid IN ({pids})\n"
        "   AND backend_type = 'client backend'\n"
        f"   AND application_name = '{application.replace(chr(39), '')}'\n"
        "   AND state LIKE 'idle%';")
    notes = [f"Only client sessions of {application!r} idle for at least "
             f"{format_duration(older_than_s)}; never replication, autovacuum "
             "or background workers.",
             "The application's pool reconnects; in-flight transactions of "
             "'idle in transaction' sessions are rolled back."]
    return Plan(f"terminate {len(rows)} idle session(s) of {application}",
                _frame(rows, columns), command, notes)


def plan_max_connections(limits: Any, new_max: int) -> Plan:
    """Plan raising max_connections; says that it needs a restart."""
    current = limits["max_connections"] if available(limits) else None
    changes = _frame([{"setting": "max_connections", "before": current,
                       "after": new_max}], ["setting", "before", "after"])
    notes = ["Takes effect only after a Postgres restart (a short outage).",
             "Each connection costs memory (work_mem, buffers): a pooler "
             "(PgBouncer) is usually the better fix."]
    return Plan("raise max_connections", changes,
                f"ALTER SYSTEM SET max_connections = {int(new_max)};", notes)


def plan_eviction_policy(memory: Any, policy: str = "allkeys-lru") -> Plan:
    """Plan switching Redis to an evicting maxmemory-policy."""
    before = memory["maxmemory_policy"] if available(memory) else None
    changes = _frame([{"setting": "maxmemory-policy", "before": before,
                       "after": policy}], ["setting", "before", "after"])
    notes = ["Evicts keys under memory pressure instead of refusing writes.",
             "Also evicts keys without TTL (sessions) with allkeys-*; "
             "volatile-lru spares them."]
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


def plan_set_env(target: Target, deployment: str, container: str,
                 changes: dict[str, str | None]) -> Plan:
    """Plan setting (or, with None, removing) env vars of a container.

    Values from Secrets are shown as their reference, never their value.
    """
    spec = kube.get_deployment(target, deployment)
    containers = spec["spec"]["template"]["spec"]["containers"]
    current = next(c for c in containers if c["name"] == container)
    env = {e["name"]: e for e in current.get("env", [])}

    rows = []
    for name, value in changes.items():
        rows.append({"object": f"deployment/{deployment}",
                     "variable": name,
                     "before": _env_shown(env.get(name)),
                     "after": "(removed)" if value is None else value})
    args = [f"{k}-" if v is None else f"{k}={v}" for k, v in changes.items()]
    command = shlex.join(["kubectl", "set", "env", f"deployment/{deployment}",
                          "-c", container, *args, "-n", target.namespace])
    return Plan(f"set env on {deployment}/{container}",
                _frame(rows, ["object", "variable", "before", "after"]), command,
                ["Starts a rolling update of the deployment's pods."])


def _env_shown(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "(unset)"
    if "value" in entry:
        return str(entry["value"])
    ref = entry.get("valueFrom", {})
    for kind, key in (("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")):
        if kind in ref:
            return f"(from {key} {ref[kind].get('name')}/{ref[kind].get('key')})"
    return "(from a reference)"


def plan_maxmemory(memory: Any, new_maxmemory: str) -> Plan:
    """Plan raising Redis maxmemory; the pod's memory limit must allow it."""
    before = format_bytes(memory["maxmemory"]) if available(memory) else None
    changes = _frame([{"setting": "maxmemory", "before": before,
                       "after": new_maxmemory}], ["setting", "before", "after"])
    notes = ["Keep maxmemory well under the Redis pod's memory limit "
             "(fork for persistence needs headroom)."]
    return Plan("raise maxmemory", changes, f"CONFIG SET maxmemory {new_maxmemory}",
                notes)
