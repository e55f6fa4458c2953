"""Remediation of Redis, planned and applicable: settings, keys, pooling.

Each plan shows the setting (or keys) before and after, and the command.
Given the runbook's ``target``, a plan can be applied
(:meth:`~paracle_nb.actions.Plan.apply`): a setting is changed with
CONFIG SET only while it still holds the value the plan showed, and
checked with CONFIG GET afterwards. Without a target a plan is applied by
hand. Key deletes and TTLs live in :mod:`paracle_nb.actions_redis_keys`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from paracle_nb import redis as redis_helpers
from paracle_nb.actions import Plan, Plans, _frame, plan_set_env
from paracle_nb.actions_redis_keys import (
    guarded,
    plan_delete_by_pattern,
    plan_shorter_ttls,
)
from paracle_nb.errors import ParacleError, ParameterError
from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import available
from paracle_nb.target import Target
from paracle_nb.units import format_bytes, format_duration

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

CONFIG_NEEDS = ("needs a Redis user allowed +config|get and +config|set (the "
                "remediation user); the read-only runbook user may only read.")
RESTART_NOTE = ("CONFIG SET lasts until restart: write it to redis.conf too "
                "(CONFIG REWRITE, or the chart's values).")

POOL_SNIPPET = """\
# Application code: one pool per process, shared by every request
import redis
from redis.connection import ConnectionPool

pool = ConnectionPool(host="redis", port=6379, max_connections={size})
redis_client = redis.Redis(connection_pool=pool)"""


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    """One CONFIG SET: values as CONFIG GET reports them (None: unreadable)."""

    setting: str
    before: str | None
    after: str
    shown: Callable[[str], Any] = str

    def show(self, value: str | None) -> Any:
        return "unknown" if value is None else self.shown(value)


def read_setting(target: Target, setting: str) -> str | None:
    """Return a setting as CONFIG GET reports it; None when it cannot be read.

    A plan still shows (with "unknown" before) where CONFIG GET is refused.
    """
    try:
        client = redis_helpers.connect(target)
    except ParacleError as exc:
        log.debug("cannot read %s: %s", setting, exc)
        return None
    try:
        return _config_get(target, client, setting)
    except ParacleError as exc:
        log.debug("cannot read %s: %s", setting, exc)
        return None
    finally:
        client.close()


def _config_get(target: Target, client: redis.Redis, setting: str) -> str:
    reply = guarded(target, f"CONFIG GET {setting}", client.config_get, setting)
    for key, value in dict(reply).items():
        if (key.decode() if isinstance(key, bytes) else str(key)) == setting:
            return value.decode() if isinstance(value, bytes) else str(value)
    raise ParacleError(f"Redis has no setting {setting!r}", target="redis")


def _before(target: Target | None, setting: str, diagnosed: Any) -> str | None:
    """The value a plan starts from: live with a target, else the diagnosis's."""
    if target is not None:
        return read_setting(target, setting)
    return None if diagnosed is None else str(diagnosed)


def _config_plan(target: Target | None, change: ConfigChange, title: str,
                 notes: list[str], command: str,
                 rebuild: Callable[[str | None], Plan]) -> Plan:
    """Return the plan of one CONFIG SET; applicable when there is a target.

    ``rebuild`` makes the same plan from a freshly read value: applying
    compares the two, so a setting changed since the plan was shown is
    re-shown, not overwritten.
    """
    rows = [] if change.before == change.after else [{
        "setting": change.setting, "before": change.show(change.before),
        "after": change.show(change.after)}]
    plan = Plan(title, _frame(rows, ["setting", "before", "after"]), command,
                [*notes, RESTART_NOTE], kind=f"redis.config.{change.setting}",
                target=target, key_columns=["setting", "before", "after"],
                needs=CONFIG_NEEDS)
    if target is None:
        return plan

    def execute(plan: Plan) -> dict[str, Any]:
        client = redis_helpers.connect(target)
        try:
            current = _config_get(target, client, change.setting)
            if change.before is not None and current != change.before:
                raise ParacleError(
                    f"{change.setting} is {change.show(current)} now, not "
                    f"{change.show(change.before)} as planned: not changed; "
                    "plan again", target="redis")
            guarded(target, f"CONFIG SET {change.setting}", client.config_set,
                    change.setting, change.after)
        finally:
            client.close()
        return {"setting": change.setting, "before": current,
                "after": change.after}

    def verify(plan: Plan, applied: dict[str, Any]) -> Finding:
        client = redis_helpers.connect(target)
        try:
            now = _config_get(target, client, change.setting)
        finally:
            client.close()
        ok = now == change.after
        return Finding(
            "remediation-applied" if ok else "remediation-incomplete",
            Severity.INFO if ok else Severity.WARNING,
            f"{change.setting} is {change.show(now)} now (was "
            f"{change.show(applied['before'])}"
            + ("" if ok else f"; planned {change.show(change.after)}")
            + f"). {RESTART_NOTE}",
            {**applied, "after": {change.setting: now,
                                  "lasts": "until the server restarts"}})

    plan.executor, plan.verifier = execute, verify
    plan.replan = lambda: rebuild(read_setting(target, change.setting))
    return plan


def _whole(value: Any, name: str, least: int) -> int:
    """Return ``value`` as an int of at least ``least``, or a ParameterError."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a whole number, got {value!r}"
                             ) from None
    if number < least or number != float(value):
        raise ParameterError(f"{name} must be a whole number of at least {least}, "
                             f"got {value!r}")
    return number


# Known shortcoming: the default target (the guide's 10000) ignores how far
# over the limit the clients are; a leak needs pooling, not more slots.
def plan_maxclients(limits: Any, new_maxclients: int = 10_000, *,
                    target: Target | None = None) -> Plan:
    """Plan raising ``maxclients`` with CONFIG SET.

    With ``target`` the plan reads the live value and can be applied.
    """
    after = _whole(new_maxclients, "maxclients", 1)
    diagnosed = limits["maxclients"] if available(limits) else None
    return _maxclients_plan(target, _before(target, "maxclients", diagnosed), after)


def _maxclients_plan(target: Target | None, before: str | None, after: int) -> Plan:
    notes = ["Each client costs memory and a file descriptor: the server's open "
             "file limit must exceed maxclients + 32 (Redis refuses the change "
             "otherwise).",
             "More slots hide a leak instead of fixing it: check the largest "
             "client group first."]
    return _config_plan(target, ConfigChange("maxclients", before, str(after), int),
                        "raise maxclients", notes, f"CONFIG SET maxclients {after}",
                        lambda live: _maxclients_plan(target, live, after))


def plan_client_timeout(limits: Any, timeout_s: int = 300, *,
                        target: Target | None = None) -> Plan:
    """Plan closing idle clients after ``timeout_s`` seconds (CONFIG SET timeout).

    With ``target`` the plan reads the live value and can be applied.
    """
    after = _whole(timeout_s, "timeout", 0)
    diagnosed = limits["timeout_s"] if available(limits) else None
    return _timeout_plan(target, _before(target, "timeout", diagnosed), after)


def _timeout_plan(target: Target | None, before: str | None, after: int) -> Plan:
    notes = [f"Redis closes clients idle for {format_duration(after)}; "
             "replicas, blocked and Pub/Sub clients are exempt."
             if after else "0: idle clients are never closed.",
             "Pools must tolerate a closed connection (redis-py reconnects on "
             "the next command; health_check_interval checks before use)."]
    title = (f"close clients idle for {format_duration(after)}" if after
             else "never close idle clients")
    return _config_plan(target, ConfigChange("timeout", before, str(after), int),
                        title, notes, f"CONFIG SET timeout {after}",
                        lambda live: _timeout_plan(target, live, after))


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
                         prefixes: Any = None, *,
                         target: Target | None = None) -> Plan:
    """Plan switching Redis to an evicting maxmemory-policy.

    The notes say which of this Redis's keys (``prefixes``, from the
    diagnosis) the policy could evict. With ``target`` the plan reads the
    live policy and can be applied.
    """
    if policy not in POLICIES:
        raise ParameterError(f"unknown maxmemory-policy {policy!r}; one of: "
                             f"{', '.join(POLICIES)}")
    diagnosed = memory["maxmemory_policy"] if available(memory) else None
    before = _before(target, "maxmemory-policy", diagnosed)
    return _policy_plan(target, before, policy, prefixes)


def _policy_plan(target: Target | None, before: str | None, policy: str,
                 prefixes: Any) -> Plan:
    notes = ["Evicts keys under memory pressure instead of refusing writes.",
             *_eviction_scope(policy, prefixes)]
    return _config_plan(target, ConfigChange("maxmemory-policy", before, policy),
                        f"set maxmemory-policy {policy}", notes,
                        f"CONFIG SET maxmemory-policy {policy}",
                        lambda live: _policy_plan(target, live, policy, prefixes))


def plan_maxmemory(memory: Any, new_maxmemory: str, *,
                   target: Target | None = None) -> Plan:
    """Plan raising Redis maxmemory; the pod's memory limit must allow it.

    With ``target`` the plan reads the live value and can be applied.
    """
    wanted = parse_redis_bytes(new_maxmemory)
    diagnosed = memory["maxmemory"] if available(memory) else None
    before = _before(target, "maxmemory", diagnosed)
    current = int(before) if before is not None else None
    if current and wanted <= current:
        raise ParameterError(f"new maxmemory {new_maxmemory} is not above the "
                             f"current {format_bytes(current)}")
    return _maxmemory_plan(target, before, wanted, new_maxmemory)


def _maxmemory_plan(target: Target | None, before: str | None, wanted: int,
                    written: str) -> Plan:
    notes = ["Keep maxmemory well under the Redis pod's memory limit "
             "(fork for persistence needs headroom)."]
    return _config_plan(target, ConfigChange("maxmemory", before, str(wanted),
                                             _shown_bytes),
                        "raise maxmemory", notes, f"CONFIG SET maxmemory {written}",
                        lambda live: _maxmemory_plan(target, live, wanted, written))


def _shown_bytes(value: str) -> str:
    return "0 (no limit)" if value == "0" else format_bytes(int(value))


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


def _key_plans(target: Target, client: Any, pattern: str, new_ttl: str) -> Plans:
    """The clean-up plans for ``pattern``; a pattern refused is said, not raised.

    ``*`` is the FLUSHDB plan alone: shortening every key's TTL is no
    milder form of emptying the database.
    """
    plans = Plans()
    try:
        plans.append(plan_delete_by_pattern(target, client, pattern))
        if new_ttl and pattern.strip() != "*":
            plans.append(plan_shorter_ttls(target, client, pattern, new_ttl))
    except ParameterError as exc:
        plans.append(Plan(f"delete keys matching {pattern!r}: refused",
                          _frame([], ["db", "pattern", "keys"]),
                          "# no command: choose a narrower delete_pattern",
                          [str(exc)]))
    return plans


def redis_memory_plans(verdict: Any, target: Target, *, client: Any, memory: Any,
                       prefixes: Any, delete_pattern: str, new_policy: str,
                       new_maxmemory: str, deployment: str,
                       new_ttl: str = "") -> Plans:
    """Return the guide's fixes for what the Redis memory runbook found.

    The Redis plans can be applied; ``new_ttl`` (e.g. ``"1h"``) adds the
    plan that shortens the TTLs of the keys matching ``delete_pattern``,
    the milder alternative to deleting them.
    """
    plans = Plans()
    causes = set(verdict.causes)
    if causes & {"redis-out-of-memory", "redis-memory-near-limit"}:
        plans.extend(_key_plans(target, client, delete_pattern, new_ttl))
        if memory["maxmemory_policy"] == "noeviction":
            plans.append(plan_eviction_policy(memory, new_policy, prefixes,
                                              target=target))
    if causes & {"redis-out-of-memory", "redis-memory-near-limit",
                 "redis-evicting"}:
        plans.append(plan_maxmemory(memory, new_maxmemory, target=target))
        plans.append(plan_set_env(target, deployment, "api", {"CACHE_TTL": "300"}))
    return plans
