"""Quick-diagnostics rules: each symptom points at the runbook to open next."""

import math

import pandas as pd

from paracle_nb import logs, prometheus
from paracle_nb.diagnosis.triage import (
    ESCALATION,
    describe_next,
    describe_up,
    diagnose_triage,
    next_runbooks,
    next_steps,
)
from paracle_nb.errors import ParameterError, TargetUnreachable
from paracle_nb.runbook import Unavailable

HEALTHY = {"url": "http://api/health", "reachable": True, "status": 200,
           "latency_ms": 12.0, "body": '{"status": "ok"}'}
UP = {"targets": 3, "down": 0}
REFUSED = ('ts=2026-12-04T15:02:11.532Z level=error logger=paracle.api '
           'msg="unhandled exception" error="OperationalError: connection '
           'failed: FATAL:  remaining connection slots are reserved"')


def _pods(*statuses):
    return pd.DataFrame({"pod": [f"p{i}" for i in range(len(statuses))],
                         "status": list(statuses)})


def _errors(*lines):
    return logs.error_lines(logs.log_frame(lines))


def _opened(findings):
    return [f.evidence["open_next"] for f in findings]


def test_healthy_has_nothing_to_open():
    findings = diagnose_triage(HEALTHY, _pods("Running", "Running"),
                               _errors("ts=2026-12-04T15:02:11Z level=info msg=ok"),
                               UP, 0.2)
    assert findings == []
    assert describe_next(next_steps(findings, "prod")).startswith("Nothing needs")


def test_no_traffic_and_no_target_are_not_problems():
    findings = diagnose_triage(HEALTHY, _pods("Running"), [],
                               {"targets": 0, "down": 0}, math.nan)
    assert [(f.cause, f.severity.value) for f in findings] == [
        ("no-scrape-target", "info")]
    assert next_runbooks(findings) == []


def test_each_symptom_names_its_runbook():
    findings = diagnose_triage(
        Unavailable("Health", TargetUnreachable("refused")),
        _pods("CrashLoopBackOff", "Pending", "Running"),
        ['level=error msg="db" error="FATAL: sorry, too many clients already"',
         "Traceback (most recent call last):"],
        {"targets": 3, "down": 1}, 2.5)
    # Crash-looping pods also explain the failed scrape: two symptoms.
    assert next_runbooks(findings)[0] == "api/pods-crashing"
    assert set(next_runbooks(findings)) == {
        "kubernetes/service-not-accessible", "api/pods-crashing",
        "kubernetes/pods-not-scheduling", "api/high-latency",
        "database/connection-pool-exhausted", "api/500-errors", ESCALATION}
    # Findings come in the order of the runbooks to open, escalation last.
    assert _opened(findings)[:2] == ["api/pods-crashing"] * 2
    assert findings[-1].cause == "escalate"
    assert findings[-1].evidence["areas"] == ["api", "cluster", "database"]


def test_api_not_answering_points_at_the_service():
    unreachable = {"url": "http://api/health", "reachable": False, "status": None,
                   "error": "refused"}
    findings = diagnose_triage(unreachable, _pods("Running"), [],
                               {"targets": 3, "down": 3,
                                "down_instances": ["a", "b", "c"]}, math.nan)
    assert _opened(findings) == ["kubernetes/service-not-accessible"] * 2
    assert [f.cause for f in findings] == ["api-unreachable", "scrape-target-down"]


def test_database_refusal_in_health_and_logs_outranks_the_500s():
    health = {**HEALTHY, "status": 503,
              "body": '{"checks": {"postgres": "FATAL:  remaining connection '
                      'slots are reserved'}
    findings = diagnose_triage(health, _pods("Running"), _errors(
        REFUSED, REFUSED.replace("unhandled exception", "request finished")
        .split(" error=")[0] + " status=500"), UP, 0.1)
    assert next_runbooks(findings) == ["database/connection-pool-exhausted"]
    assert findings[0].evidence["status"] == 503
    assert findings[1].evidence["log_lines"] == 1


def test_an_unexplained_500_is_a_500():
    health = {**HEALTHY, "status": 500, "body": "Internal Server Error"}
    findings = diagnose_triage(health, _pods("Running"), [], UP, 0.1)
    assert next_runbooks(findings) == ["api/500-errors"]


def test_ties_go_cause_before_symptom():
    findings = diagnose_triage(
        HEALTHY, _pods("Running"),
        _errors('ts=2026-12-04T15:02:11Z level=error logger=paracle.llm '
                'msg="llm call failed" provider=openai error="timed out"'),
        UP, 1.9)
    assert next_runbooks(findings) == ["llm/provider-errors", "api/high-latency"]


def test_a_step_that_could_not_run_asks_for_escalation():
    no_prometheus = Unavailable("Check metrics", TargetUnreachable("refused"))
    findings = diagnose_triage(
        Unavailable("Health", ParameterError("no `api_url`")), _pods("Running"),
        [], no_prometheus, no_prometheus)
    assert next_runbooks(findings) == [ESCALATION]
    assert findings[0].evidence["steps_not_run"] == ["Health", "Check metrics"]


def test_next_steps_say_how_to_run_each_runbook():
    findings = diagnose_triage(HEALTHY, _pods("Pending", "Pending"), [], UP, 0.1)
    steps = next_steps(findings, "sandbox")
    assert steps.to_dict("records") == [{
        "runbook": "kubernetes/pods-not-scheduling", "why": "pods not scheduled",
        "how to run it": "paracle-nb run kubernetes/pods-not-scheduling "
                         "-p environment sandbox"}]
    assert findings[0].evidence["pod_names"] == ["p0", "p1"]


def test_scrape_targets_from_the_up_answer():
    up = pd.DataFrame({"instance": ["a:1", "b:1"], "job": ["api", "api"],
                       "series": ["up", "up"], "value": [1.0, 0.0]})
    targets = prometheus.scrape_targets(up)
    assert targets == {"targets": 2, "down": 1, "down_instances": ["b:1"]}
    assert "b:1" in describe_up(targets)
    empty = pd.DataFrame(columns=["series", "time", "value"])
    assert prometheus.scrape_targets(empty)["targets"] == 0


def test_error_counts_group_lines_by_kind():
    lines = _errors(REFUSED, REFUSED, REFUSED.replace("level=error",
                                                      "level=warning"),
                    "Traceback (most recent call last):",
                    "ts=2026-12-04T15:02:12Z level=info msg=ok")
    assert len(lines) == 3
    counts = logs.error_counts(lines)
    assert counts[["level", "lines"]].values.tolist() == [["error", 2],
                                                          ["warning", 1]]
    assert logs.error_counts(_errors()).empty


REDIS_OK = {"ping_ms": 0.4, "used_memory": 2 << 20, "maxmemory": 32 << 20,
            "maxmemory_policy": "noeviction", "memory_ratio": 0.06,
            "connected_clients": 8, "maxclients": 100, "clients_ratio": 0.08}
POSTGRES_OK = {"client_backends": 6, "usable": 37, "max_connections": 40,
               "superuser_reserved": 3, "usage_ratio": 0.162}
ERRORS_OK = {"ratio": 0.0, "window": "5m"}


def _with(postgres=POSTGRES_OK, redis=REDIS_OK, errors=ERRORS_OK):
    return diagnose_triage(HEALTHY, _pods("Running"), _errors(), UP, 0.2,
                           postgres=postgres, redis=redis, errors=errors)


def test_healthy_dependencies_open_nothing():
    assert _with() == []


def test_dependencies_behind_a_healthy_api_are_seen():
    full = {**REDIS_OK, "connected_clients": 100, "clients_ratio": 1.0}
    assert [(f.cause, f.evidence["open_next"]) for f in _with(redis=full)] == [
        ("redis-clients-near-limit", "redis/connection-timeout")]
    oom = {**REDIS_OK, "used_memory": 32 << 20, "memory_ratio": 1.0}
    assert _opened(_with(redis=oom)) == ["redis/out-of-memory"]
    slow = {**REDIS_OK, "ping_ms": 450.0}
    assert [f.cause for f in _with(redis=slow)] == ["redis-slow"]
    busy = {**POSTGRES_OK, "client_backends": 35, "usage_ratio": 0.946}
    assert [f.cause for f in _with(postgres=busy)] == ["postgres-near-limit"]
    full_pg = {**POSTGRES_OK, "client_backends": 37, "usage_ratio": 1.0}
    assert [f.cause for f in _with(postgres=full_pg)] == ["postgres-slots-full"]
    failing = {"ratio": 0.051, "window": "5m"}
    [finding] = _with(errors=failing)
    assert finding.cause == "error-rate" and "5.1%" in finding.summary


def test_a_postgres_refusal_for_slots_is_a_symptom_not_a_gap():
    from paracle_nb.errors import ConnectionRefused

    refused = Unavailable("Postgres slots", ConnectionRefused(
        "Postgres at db:5432/paracle refused the connection", target="postgres",
        detail="FATAL:  sorry, too many clients already"))
    findings = _with(postgres=refused)
    assert [f.cause for f in findings] == ["postgres-refusing"]
    assert _opened(findings) == ["database/connection-pool-exhausted"]
