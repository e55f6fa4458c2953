"""Remediation for high API latency: the guide's fix for each cause found.

Each plan shows what would change before anything does: an index built
concurrently on the columns the slow statement filters, a longer
``LLM_TIMEOUT`` or another provider, cache keys deleted by pattern (never
``FLUSHDB``) and more Redis memory, more replicas and a ``RATE_LIMIT``. The
env and replica plans are patches that can be applied
(:mod:`paracle_nb.actions_kubernetes`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from paracle_nb import kube, postgres, postgres_queries
from paracle_nb.actions import Plan, Plans, plan_set_env
from paracle_nb.actions_database import plan_create_index
from paracle_nb.actions_redis import plan_delete_by_pattern, plan_maxmemory
from paracle_nb.errors import ParacleError
from paracle_nb.runbook import available
from paracle_nb.target import Target


def plan_latency_fixes(target: Target, verdict: Any, *, client: Any,
                       memory: Any, deployment: str, container: str,
                       new_llm_timeout: str, fallback_provider: str,
                       cache_pattern: str, new_maxmemory: str,
                       new_replicas: int = 0, rate_limit: str = "") -> Plans:
    """Return the guide's fix for each latency cause in the verdict.

    For slow Redis the guide's ``FLUSHDB`` becomes deleting the cache keys
    by pattern (SCAN and UNLINK), sessions kept.
    """
    plans = Plans()
    causes = set(verdict.causes)
    if "slow-database-queries" in causes:
        finding = verdict.finding("slow-database-queries")
        plans.append(plan_create_index(_with_table_rows(target, finding)))
    if "llm-provider-timeout" in causes:
        plans.append(plan_set_env(target, deployment, container, llm_env_changes(
            verdict, new_llm_timeout, fallback_provider)))
    if "slow-redis" in causes:
        if available(client):
            plans.append(plan_delete_by_pattern(target, client, cache_pattern))
        if available(memory):
            plans.append(plan_maxmemory(memory, new_maxmemory))
    if "too-many-concurrent-requests" in causes:
        plans.append(plan_scale_replicas(target, deployment,
                                         replicas_for(verdict, new_replicas)))
        if rate_limit:
            plans.append(plan_set_env(target, deployment, container,
                                      {"RATE_LIMIT": rate_limit}))
    return plans


def _with_table_rows(target: Target, finding: Any) -> Any:
    """Return the finding with the table's live rows added to its evidence."""
    table = finding.evidence.get("table")
    if not table:
        return finding
    try:
        with postgres.connect(target) as conn:
            tables = postgres_queries.table_scans(conn, 0)
    except ParacleError:  # the plan stands without the row count
        return finding
    rows = tables.loc[tables["table"] == table, "rows"]
    evidence = {**finding.evidence,
                "rows": int(rows.iloc[0]) if len(rows) else "?"}
    return dataclasses.replace(finding, evidence=evidence)


# Known shortcoming: the plan's "before" reads the deployment's env only, so
# an LLM_TIMEOUT set in the ConfigMap shows as unset, and the env value the
# plan sets would silently override it.
def llm_env_changes(verdict: Any, new_timeout: str, fallback: str
                    ) -> dict[str, str | None]:
    """Return the guide's LLM env change: a longer timeout, another provider.

    The fallback must be a provider the logs show healthy: the given one if
    it is, else the fastest healthy one.
    """
    finding = verdict.finding("llm-provider-timeout")
    healthy = finding.evidence.get("healthy_providers") if finding else None
    if healthy and fallback not in healthy:
        fallback = min(healthy, key=lambda p: healthy[p])
    return {"LLM_TIMEOUT": new_timeout, "DEFAULT_LLM_PROVIDER": fallback}


def replicas_for(verdict: Any, new_replicas: int = 0) -> int | None:
    """Return the replicas to scale to: the parameter, else what the queue needs."""
    if new_replicas > 0:
        return new_replicas
    finding = verdict.finding("too-many-concurrent-requests")
    return finding.evidence.get("replicas_needed") if finding else None


def plan_scale_replicas(target: Target, deployment: str, replicas: int | None
                        ) -> Plan:
    """Plan scaling a deployment to ``replicas`` (None: one more than now).

    Never fewer than today: a plan against high latency does not scale down.
    """
    from paracle_nb.actions_kubernetes import scale_replicas

    spec = kube.get_deployment(target, deployment)
    before = int(spec["spec"].get("replicas") or 0)
    plan = scale_replicas(target, deployment,
                          max(int(replicas or before + 1), before))
    plan.notes.append("If the load is abusive rather than real, a lower "
                      "RATE_LIMIT is the other fix.")
    return plan
