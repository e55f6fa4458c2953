"""The Redis connection-timeout runbook names each cause on the real lab Redis.

Each incident is real: clients up to maxclients, idle clients never closed,
a Redis kept busy with DEBUG SLEEP. Settings are restored after each test.
"""

import json

import pytest

from paracle_nb import run
from paracle_nb.sandbox import redis_incidents

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

RUNBOOK = "redis/connection-timeout"
CAUSES = {"redis-max-clients", "redis-idle-connections", "redis-slow"}


def _run(lab, artifacts, **overrides):
    result = run.run(RUNBOOK, lab.parameters_file, overrides, artifacts=artifacts)
    assert result.failed is None, result.failed
    notebook = json.loads(result.notebook.read_text())
    assert notebook["metadata"]["paracle"]["verdict"] == result.verdict.to_dict()
    written = b"".join(p.read_bytes() for p in result.folder.iterdir())
    assert lab.redis.password.encode() not in written
    return result


def _config(lab):
    client = lab.redis.client()
    try:
        return {k: client.config_get(k)[k] for k in ("maxclients", "timeout")}
    finally:
        client.close()


def _diagnosed(result):
    return CAUSES & set(result.verdict.causes)


def test_healthy_lab_has_no_connection_problem(lab, artifacts):
    result = _run(lab, artifacts)

    assert not result.verdict.problem, result.verdict.to_dict()
    assert 'alt="redis clients"' in result.html.read_text()


def test_max_clients_is_named_with_limit_refusals_and_holder(lab, artifacts):
    before = _config(lab)
    with lab.incident("redis-max-clients") as flood:
        held = flood.held
        result = _run(lab, artifacts)

    assert result.verdict.causes == ["redis-max-clients"]
    evidence = result.verdict.finding("redis-max-clients").evidence
    assert evidence["maxclients"] == flood.maxclients == 64
    assert evidence["connected_clients"] == 64
    assert evidence["rejected_connections"] >= 1
    assert evidence["refused_samples"] == 5
    assert evidence["top_client_name"] == "paracle-api-worker"
    assert evidence["top_client_host"] == "127.0.0.1"
    assert evidence["top_client_count"] == held == 63
    assert evidence["timeout_s"] == 0

    html = result.html.read_text()
    assert 'alt="redis clients"' in html
    assert "CONFIG SET maxclients 10000" in html
    assert "port=6379, max_connections=50)" in html
    assert _config(lab) == before


def test_refusal_of_the_runbook_itself_is_the_finding(lab, artifacts):
    with lab.incident("redis-max-clients-full") as flood:
        held = flood.held
        result = _run(lab, artifacts)

    assert held == 64
    assert result.verdict.cause == "redis-max-clients"
    assert _diagnosed(result) == {"redis-max-clients"}
    finding = result.verdict.finding("redis-max-clients")
    assert finding.evidence["server_message"] == \
        redis_incidents.MAX_CLIENTS_REFUSAL
    assert finding.evidence["inspected"] is False
    assert finding.evidence["refused_samples"] == 5


def test_idle_connections_never_closed_are_named(lab, artifacts):
    with lab.incident("redis-idle-connections") as idle:
        held = idle.held
        result = _run(lab, artifacts, idle_older_than="2s")

    assert result.verdict.causes == ["redis-idle-connections"]
    evidence = result.verdict.finding("redis-idle-connections").evidence
    assert evidence["idle_clients"] == held == 30
    assert evidence["timeout_s"] == 0
    assert evidence["top_idle_name"] == "paracle-api-worker"
    assert evidence["top_idle_count"] == 30
    assert evidence["max_idle_s"] >= 2
    assert "CONFIG SET timeout 300" in result.html.read_text()


def test_slow_redis_is_named_with_latency_samples(lab, artifacts):
    with lab.incident("redis-slow") as slow:
        result = _run(lab, artifacts)

    assert slow.commands > 0 and not slow.errors
    assert result.verdict.causes == ["redis-slow"]
    evidence = result.verdict.finding("redis-slow").evidence
    assert evidence["samples"] == 5
    assert evidence["median_connect_ping_ms"] > 2 * slow.sleep_ms
    assert evidence["max_ping_ms"] > slow.sleep_ms


def test_healed_lab_is_healthy_again(lab, artifacts):
    for name in ("redis-max-clients", "redis-idle-connections", "redis-slow"):
        with lab.incident(name):
            pass
    result = _run(lab, artifacts, idle_older_than="2s")
    assert not result.verdict.problem, result.verdict.to_dict()
    assert _config(lab) == {"maxclients": "10000", "timeout": "0"}
