"""High-latency rules: one cause named from its own evidence (pure)."""

import pandas as pd
import pytest

from paracle_nb.diagnosis.latency import (
    describe_concurrency,
    describe_latency,
    diagnose_latency,
    index_candidate,
)
from paracle_nb.errors import TargetUnreachable
from paracle_nb.findings import Severity, Verdict
from paracle_nb.latency_plans import llm_env_changes, replicas_for
from paracle_nb.runbook import Unavailable

SLOW_STATEMENT = (
    "SELECT e.id, e.status, e.provider, e.tokens, e.created_at, (SELECT count(*) "
    "FROM executions t WHERE t.agent_id = $1 AND t.status = $2) AS failed_total "
    "FROM executions e WHERE e.agent_id = $3 AND e.status = $4 ORDER BY "
    "e.created_at DESC LIMIT $5")
FAST_STATEMENT = "SELECT id, name, owner FROM agents WHERE id = $1"


def _current(p95, window="5m"):
    """The current latency as the runbook reads it (p95 given in seconds)."""
    p95_ms = None if p95 != p95 else round(p95 * 1000)
    return {"p95_ms": p95_ms, "p50_ms": p95_ms // 2 if p95_ms else None,
            "requests_per_second": 12.5, "window": window, "query": "..."}


def _llm(openai=(120, 0, 0.21, None), anthropic=(40, 0, 0.2, None)):
    rows = []
    for name, (calls, timeouts, p95, timeout_s) in (("openai", openai),
                                                    ("anthropic", anthropic)):
        rows.append({"provider": name, "calls": calls, "failed": timeouts,
                     "timeouts": timeouts, "p50_ms": round(p95 * 500),
                     "p95_ms": round(p95 * 1000), "max_ms": round(p95 * 1000),
                     "timeout_ms": round(timeout_s * 1000) if timeout_s
                     else float("nan")})
    frame = pd.DataFrame(rows)
    for column in ("p50_ms", "p95_ms", "max_ms", "timeout_ms"):
        # As logs.llm_durations writes them: whole ms, NaN for none.
        frame[column] = pd.Series([r[column] for r in rows], dtype=object)
    return frame


def _statements(slow_mean=None, sample_calls=30):
    rows = [{"query": FAST_STATEMENT, "role": "paracle", "calls": 900,
             "mean_exec_time_ms": 0.05, "sample_calls": sample_calls,
             "sample_mean_ms": 0.04 if sample_calls else None,
             "sample_seconds": 2.0}]
    if slow_mean is not None:
        rows.insert(0, {"query": SLOW_STATEMENT, "role": "paracle", "calls": 80,
                        "mean_exec_time_ms": slow_mean,
                        "sample_calls": sample_calls,
                        "sample_mean_ms": slow_mean if sample_calls else None,
                        "sample_seconds": 2.0})
    return pd.DataFrame(rows)


def _redis(median=0.3):
    return {"samples": 10, "min_ms": median / 2, "median_ms": median,
            "max_ms": median * 2}


IN_FLIGHT = {"max_in_flight": 4.0, "mean_in_flight": 3.1,
             "requests_per_second": 15.0, "window": "5m"}
CAPACITY = {"deployment": "paracle-api", "ready_replicas": 3, "workers_per_pod": 4,
            "workers": 12}


def _diagnose(current=None, llm=None, statements=None, redis=None,
              in_flight=IN_FLIGHT, capacity=CAPACITY):
    return diagnose_latency(
        _current(0.3) if current is None else current,
        _llm() if llm is None else llm,
        _statements() if statements is None else statements,
        _redis() if redis is None else redis, in_flight, capacity)


def _causes(findings):
    return Verdict("api/high-latency", findings).causes


def test_healthy_api_has_no_finding():
    assert _diagnose() == []


def test_slow_statement_is_the_cause_with_its_index():
    findings = _diagnose(current=_current(2.4), statements=_statements(612.0))
    assert _causes(findings) == ["slow-database-queries", "high-latency"]
    evidence = findings[0].evidence
    assert evidence["mean_ms"] == 612.0 and evidence["basis"] == "sample"
    assert evidence["calls"] == 30 and evidence["threshold_ms"] == 100.0
    assert evidence["table"] == "executions"
    assert evidence["filter_columns"] == ["agent_id", "status"]
    high = findings[-1].evidence
    assert high["p95_s"] == 2.4 and high["threshold_s"] == 1.0
    assert high["explained_by"] == ["slow-database-queries"]


def test_a_slow_statement_that_no_longer_runs_is_not_the_cause():
    # All-time mean of 600 ms, but the sample saw only the fast statement.
    statements = _statements(612.0)
    statements.loc[0, ["sample_calls", "sample_mean_ms"]] = [0, None]
    findings = _diagnose(current=_current(2.4), statements=statements)
    assert "slow-database-queries" not in _causes(findings)


def test_without_any_call_in_the_sample_all_time_means_count():
    findings = _diagnose(current=_current(2.4),
                         statements=_statements(612.0, sample_calls=0))
    finding = findings[0]
    assert finding.cause == "slow-database-queries"
    assert finding.evidence["basis"] == "all-time" and finding.evidence[
        "calls"] == 80


def test_llm_timeouts_name_the_provider_and_a_healthy_one():
    findings = _diagnose(current=_current(1.6),
                         llm=_llm(openai=(60, 45, 1.5, 1.5)))
    assert _causes(findings) == ["llm-provider-timeout", "high-latency"]
    evidence = findings[0].evidence
    assert evidence["provider"] == "openai" and evidence["timeouts"] == 45
    assert evidence["timeout_share"] == 0.75 and evidence["llm_timeout_s"] == 1.5
    assert evidence["healthy_providers"] == {"anthropic": 0.2}


def test_a_few_timeouts_are_not_the_cause():
    findings = _diagnose(current=_current(1.6), llm=_llm(openai=(100, 3, 0.4, 1.5)),
                         in_flight={**IN_FLIGHT, "max_in_flight": 40.0})
    assert "llm-provider-timeout" not in _causes(findings)


def test_slow_redis_round_trips():
    findings = _diagnose(current=_current(1.5), redis=_redis(450.0))
    assert _causes(findings) == ["slow-redis", "high-latency"]
    assert findings[0].evidence["median_ms"] == 450.0
    assert findings[0].evidence["threshold_ms"] == 50.0


def test_queueing_with_fast_dependencies_is_too_many_requests():
    in_flight = {**IN_FLIGHT, "max_in_flight": 100.0, "requests_per_second": 57.0}
    findings = _diagnose(current=_current(1.9), in_flight=in_flight)
    assert _causes(findings) == ["too-many-concurrent-requests", "high-latency"]
    evidence = findings[0].evidence
    assert evidence["max_in_flight"] == 100.0 and evidence["workers"] == 12
    assert evidence["replicas_needed"] == 25


def test_queueing_behind_a_slow_dependency_names_the_dependency():
    in_flight = {**IN_FLIGHT, "max_in_flight": 24.0}
    findings = _diagnose(current=_current(2.4), statements=_statements(612.0),
                         in_flight=in_flight)
    assert _causes(findings) == ["slow-database-queries", "high-latency"]


def test_unknown_capacity_leaves_high_latency_unexplained():
    in_flight = {**IN_FLIGHT, "max_in_flight": 100.0}
    capacity = {**CAPACITY, "workers": None, "workers_per_pod": None}
    findings = _diagnose(current=_current(1.9), in_flight=in_flight,
                         capacity=capacity)
    assert _causes(findings) == ["high-latency"]
    assert "no dependency" in findings[0].summary


def test_slow_dependency_under_the_threshold_is_only_noted():
    findings = _diagnose(current=_current(0.4), redis=_redis(80.0))
    assert [(f.cause, f.severity) for f in findings] == [
        ("slow-redis", Severity.INFO)]
    assert _causes(findings) == []


def test_without_prometheus_a_slow_dependency_is_a_warning():
    down = Unavailable("Check current latency",
                       TargetUnreachable("Prometheus is unreachable"))
    findings = _diagnose(current=down, statements=_statements(612.0))
    assert [(f.cause, f.severity) for f in findings] == [
        ("slow-database-queries", Severity.WARNING)]


def test_no_traffic_is_noted():
    findings = _diagnose(current=_current(float("nan")))
    assert [(f.cause, f.severity) for f in findings] == [
        ("no-traffic", Severity.INFO)]


@pytest.mark.parametrize("query, candidate", [
    (SLOW_STATEMENT, {"table": "executions", "columns": ["agent_id", "status"]}),
    ("SELECT * FROM agents WHERE owner = $1 AND created_at > $2",
     {"table": "agents", "columns": ["owner"]}),
    ("SELECT a.name FROM agents a JOIN executions e ON e.agent_id = a.id "
     "WHERE e.status = $1", {"table": "executions", "columns": ["status"]}),
    (FAST_STATEMENT, {"table": "agents", "columns": ["id"]}),
    ("SELECT 1", None),
    ("SELECT now() - created_at FROM agents ORDER BY 1", None),
])
def test_index_candidate(query, candidate):
    assert index_candidate(query) == candidate


def test_plans_follow_the_findings():
    findings = _diagnose(current=_current(2.4), statements=_statements(612.0),
                         llm=_llm(openai=(60, 45, 1.5, 1.5)))
    verdict = Verdict("api/high-latency", findings)
    assert llm_env_changes(verdict, "120", "gemini") == {
        "LLM_TIMEOUT": "120", "DEFAULT_LLM_PROVIDER": "anthropic"}
    assert replicas_for(verdict) is None and replicas_for(verdict, 6) == 6

    healthy = Verdict("api/high-latency", [])
    assert llm_env_changes(healthy, "120", "anthropic")["DEFAULT_LLM_PROVIDER"] \
        == "anthropic"


def test_descriptions():
    assert "above the 1 s threshold" in describe_latency(_current(2.4))
    assert "under the 1 s threshold" in describe_latency(_current(0.24))
    assert "No requests" in describe_latency(_current(float("nan")))
    assert "requests queue" in describe_concurrency(
        {**IN_FLIGHT, "max_in_flight": 100.0}, CAPACITY)
    assert "no queue" in describe_concurrency(IN_FLIGHT, CAPACITY)
