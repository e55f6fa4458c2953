"""Diagnosis rules on hand-built evidence (pure functions, no servers)."""

import pandas as pd

from paracle_nb.diagnosis.pods import diagnose_pods_crashing, focus_container
from paracle_nb.diagnosis.postgres_pool import diagnose_pool
from paracle_nb.diagnosis.redis_memory import diagnose_memory
from paracle_nb.errors import ConnectionRefused, TargetUnreachable
from paracle_nb.runbook import Runbook, Unavailable
from paracle_nb.target import Target

MI = 2**20


def _containers(rows):
    base = {"state": "running", "reason": None, "ready": True, "restarts": 0,
            "last_reason": None, "last_exit_code": None, "last_finished": None,
            "memory_limit": 512 * MI, "memory_request": 256 * MI, "image": "x"}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_oom_crashloop_names_container_restarts_and_limit():
    containers = _containers([
        {"pod": "p1", "container": "api", "state": "waiting",
         "reason": "CrashLoopBackOff", "ready": False, "restarts": 7,
         "last_reason": "OOMKilled", "last_exit_code": 137},
        {"pod": "p1", "container": "log-shipper"},
        {"pod": "p2", "container": "api", "state": "waiting",
         "reason": "CrashLoopBackOff", "ready": False, "restarts": 12,
         "last_reason": "OOMKilled", "last_exit_code": 137},
    ])
    metrics = pd.DataFrame([{"pod": "p1", "container": "api", "cpu_cores": 0.2,
                             "memory_bytes": 500 * MI}])
    [finding] = diagnose_pods_crashing(containers, metrics)
    assert finding.cause == "oom-killed"
    assert finding.evidence["container"] == "api"
    assert finding.evidence["restarts"] == {"p1": 7, "p2": 12}
    assert finding.evidence["memory_limit_bytes"] == 512 * MI
    assert finding.evidence["peak_memory_bytes"] == 500 * MI
    assert focus_container(containers) == "api"


def test_non_oom_crash_is_a_plain_crashloop():
    containers = _containers([{"pod": "p1", "container": "api", "state": "waiting",
                               "reason": "CrashLoopBackOff", "ready": False,
                               "restarts": 3, "last_reason": "Error",
                               "last_exit_code": 1}])
    [finding] = diagnose_pods_crashing(containers)
    assert finding.cause == "crashloop"
    assert finding.evidence["last_exit_codes"] == [1]


def test_healthy_pods_have_no_finding():
    assert diagnose_pods_crashing(_containers([{"pod": "p", "container": "api"}])) == []


def _limits(used):
    return {"max_connections": 40, "superuser_reserved": 3, "client_backends": used,
            "background_processes": 5,
            "available_to_applications": max(0, 37 - used)}


def _sessions(app_idle, app_txn, other=0):
    rows = ([{"application": "paracle-api", "state": "idle"}] * app_idle
            + [{"application": "paracle-api", "state": "idle in transaction"}]
            * app_txn + [{"application": "worker", "state": "active"}] * other)
    frame = pd.DataFrame(rows)
    frame["pid"] = range(len(frame))
    frame["role"] = "paracle"
    frame["state_age_s"] = 700.0
    return frame


def test_pool_exhausted_names_the_holder():
    [finding] = diagnose_pool(_limits(38), _sessions(25, 12),
                              application="paracle-api", idle_older_than_s=600)
    assert finding.cause == "connection-pool-exhausted"
    assert finding.evidence["held_by_application"] == {"paracle-api": 37}
    assert finding.evidence["application_by_state"] == {
        "idle": 25, "idle in transaction": 12}
    assert finding.evidence["max_connections"] == 40
    assert finding.evidence["idle_older_than_threshold"] == 37


def test_refusal_itself_is_the_finding():
    message = "FATAL:  sorry, too many clients already"
    refused = Unavailable("Connect", ConnectionRefused("refused", detail=message))
    [finding] = diagnose_pool(refused, refused, application="x",
                              idle_older_than_s=1)
    assert finding.cause == "connection-pool-exhausted"
    assert finding.evidence["server_message"] == message


def test_pool_near_limit_and_healthy():
    [near] = diagnose_pool(_limits(32), _sessions(28, 0, 3),
                           application="paracle-api", idle_older_than_s=600)
    assert near.cause == "connection-pool-near-limit"
    assert diagnose_pool(_limits(6), _sessions(5, 0), application="paracle-api",
                         idle_older_than_s=600) == []


def test_unreachable_postgres_is_not_a_pool_diagnosis():
    down = Unavailable("Connect", TargetUnreachable("down"))
    assert diagnose_pool(down, down, application="x", idle_older_than_s=1) == []


def _memory(used, limit=32 * MI, policy="noeviction"):
    return {"used_memory": used, "maxmemory": limit, "maxmemory_policy": policy,
            "usage_ratio": used / limit if limit else None}


def test_redis_full_with_noeviction_is_oom():
    prefixes = pd.DataFrame([
        {"prefix": "cache:", "keys": 9000, "with_ttl": 0, "no_ttl": 9000,
         "bytes": 20 * MI},
        {"prefix": "session:", "keys": 5000, "with_ttl": 5000, "no_ttl": 0,
         "bytes": 8 * MI}])
    stats = {"oom_rejected_writes": 26, "evicted_keys": 0}
    [finding] = diagnose_memory(_memory(33 * MI), stats, prefixes)
    assert finding.cause == "redis-out-of-memory"
    assert finding.evidence["oom_rejected_writes"] == 26
    assert finding.evidence["largest_prefixes"][0]["prefix"] == "cache:"


def test_redis_evicting_near_and_healthy():
    assert diagnose_memory(_memory(32 * MI, policy="allkeys-lru"), None,
                           None)[0].cause == "redis-evicting"
    assert diagnose_memory(_memory(30 * MI), None, None)[0].cause == \
        "redis-memory-near-limit"
    assert diagnose_memory(_memory(2 * MI), None, None) == []


def test_failed_step_becomes_a_finding_and_skips_dependents():
    rb = Runbook("t", Target())

    def boom():
        raise TargetUnreachable("Redis at x is unreachable")

    first = rb.step("Connect", boom)
    second = rb.step("Use it", lambda c: c, first)
    assert second is first
    verdict = rb.conclude([])
    assert [f.cause for f in verdict.findings] == ["target-unreachable"]
    assert verdict.findings[0].evidence["step"] == "Connect"
