"""api/high-latency, run by papermill, names each cause of its incident.

Every incident is real: the API stand-in under a bounded load, Prometheus
scraping it, Postgres, Redis and the LLM providers made slow for real (or
not at all, for too many concurrent requests). The load keeps running
while the runbook looks, as traffic would during an incident.
"""

import json
import math
import re

import pytest
from outputs import SHOWN_PLAN, plans_html

from paracle_nb import run
from paracle_nb.sandbox import latency_incidents

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

RUNBOOK = "api/high-latency"
WINDOW = "8s"
# A short window, a short statement sample, few PINGs: the runbook's
# defaults are the guide's (5m) and take longer.
OVERRIDES = {"latency_window": WINDOW, "plot_window": "2m", "sample_window": "2s",
             "redis_samples": 5, "log_lines": 300}
CAUSES = {"slow-database-queries", "llm-provider-timeout", "slow-redis",
          "too-many-concurrent-requests"}


@pytest.fixture(scope="module")
def lab(live_lab):
    return live_lab


def _run(lab, tmp_path):
    result = run.run(RUNBOOK, lab.parameters_file, OVERRIDES,
                     artifacts=tmp_path / "artifacts")
    assert result.failed is None, result.failed
    return result


def _assert_artifact(result, lab):
    html = result.html.read_text()
    assert 'alt="api latency"' in html and "data:image/png;base64" in html
    if result.verdict.problem:
        assert SHOWN_PLAN.search(html)
    else:
        assert "No cause found that a plan would fix" in html
    notebook = json.loads(result.notebook.read_text())
    assert notebook["metadata"]["paracle"]["verdict"] == result.verdict.to_dict()
    written = b"".join(p.read_bytes() for p in result.folder.iterdir())
    for secret in (lab.postgres.password("paracle_sre"),
                   lab.postgres.password("paracle"), lab.redis.password):
        assert secret.encode() not in written




def _high_latency(result):
    evidence = result.verdict.finding("high-latency").evidence
    assert evidence["p95_s"] > 1.0 and evidence["threshold_s"] == 1.0
    assert evidence["window"] == WINDOW
    return evidence


def test_healthy_lab_has_no_latency_problem(lab, tmp_path):
    with latency_incidents.healthy_traffic(lab, window=WINDOW):
        result = _run(lab, tmp_path)

    assert not result.verdict.problem, result.verdict.to_dict()
    assert result.verdict.causes == []
    assert not {f.cause for f in result.verdict.findings} & CAUSES
    _assert_artifact(result, lab)


def test_slow_database_queries_are_named(lab, tmp_path):
    with lab.incident("latency-slow-db", window=WINDOW) as incident:
        result = _run(lab, tmp_path)

    assert incident.p95_s > 1.0
    assert result.verdict.causes == ["slow-database-queries", "high-latency"]
    evidence = result.verdict.finding("slow-database-queries").evidence
    assert evidence["basis"] == "sample" and evidence["calls"] > 0
    assert evidence["mean_ms"] > 100.0 and evidence["threshold_ms"] == 100.0
    assert "FROM executions" in evidence["query"]
    assert evidence["table"] == "executions"
    assert evidence["filter_columns"] == ["agent_id", "status"]
    assert _high_latency(result)["explained_by"] == ["slow-database-queries"]
    html = result.html.read_text()
    assert "CREATE INDEX CONCURRENTLY idx_executions_agent_id_status" in html
    assert "ON executions (agent_id, status);" in html
    _assert_artifact(result, lab)


def test_llm_provider_timeout_is_named(lab, tmp_path):
    with lab.incident("latency-llm-timeout", window=WINDOW) as incident:
        result = _run(lab, tmp_path)

    assert result.verdict.causes == ["llm-provider-timeout", "high-latency"]
    evidence = result.verdict.finding("llm-provider-timeout").evidence
    assert evidence["provider"] == "openai"
    assert evidence["llm_timeout_s"] == incident.details["llm_timeout_s"] == 1.5
    assert evidence["timeouts"] > 0 and evidence["timeout_share"] >= 0.5
    assert evidence["p95_s"] >= 1.5
    assert list(evidence["healthy_providers"]) == ["anthropic"]
    assert evidence["healthy_providers"]["anthropic"] < 0.5
    html = result.html.read_text()
    assert "LLM_TIMEOUT=120 DEFAULT_LLM_PROVIDER=anthropic" in html
    _assert_artifact(result, lab)


def test_slow_redis_is_named(lab, tmp_path):
    with lab.incident("latency-slow-redis", window=WINDOW) as incident:
        result = _run(lab, tmp_path)

    assert result.verdict.causes == ["slow-redis", "high-latency"]
    evidence = result.verdict.finding("slow-redis").evidence
    # Two clients take turns sleeping 250 ms in Redis: a PING waits for them.
    assert evidence["median_ms"] >= incident.details["sleep_s"] * 1000 / 2
    assert evidence["samples"] == 5 and evidence["threshold_ms"] == 50.0
    plans = plans_html(result)
    assert "SCAN 0 MATCH cache:*" in plans and "CONFIG SET maxmemory 64mb" in plans
    assert set(re.findall(r"\w+ FLUSHDB", plans)) == {"never FLUSHDB"}
    _assert_artifact(result, lab)


def test_too_many_concurrent_requests_are_named(lab, tmp_path):
    with lab.incident("latency-concurrency", window=WINDOW) as incident:
        result = _run(lab, tmp_path)

    assert result.verdict.causes == ["too-many-concurrent-requests",
                                     "high-latency"]
    evidence = result.verdict.finding("too-many-concurrent-requests").evidence
    assert evidence["workers"] == incident.details["workers"] == 12
    assert (evidence["ready_replicas"], evidence["workers_per_pod"]) == (3, 4)
    # A hundred clients: nearly all of them in flight, most waiting.
    assert 80 <= evidence["max_in_flight"] <= 101
    assert evidence["replicas_needed"] == math.ceil(evidence["max_in_flight"] / 4)
    assert f"--replicas={evidence['replicas_needed']}" in result.html.read_text()
    _assert_artifact(result, lab)
