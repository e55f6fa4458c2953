"""Each runbook, run by papermill against the lab, names its incident's cause.

The lab's servers are real (Postgres, Redis, our Kubernetes API); every
incident is reproduced for real and healed after its test.
"""

import json

import pytest
import yaml
from outputs import SHOWN_PLAN

from paracle_nb import run

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

MI = 2**20
RUNBOOKS = ["api/pods-crashing", "database/connection-pool-exhausted",
            "redis/out-of-memory"]


def _run(lab, name, artifacts, **overrides):
    result = run.run(name, lab.parameters_file, overrides, artifacts=artifacts)
    assert result.failed is None, result.failed
    return result


def _assert_artifact(result, lab):
    assert result.notebook.exists() and result.html.exists()
    assert not list(result.folder.parent.glob(".*.partial"))
    notebook = json.loads(result.notebook.read_text())
    assert notebook["metadata"]["paracle"]["verdict"] == result.verdict.to_dict()
    assert json.loads((result.folder / "verdict.json").read_text())["runbook"]
    written = b"".join(p.read_bytes() for p in result.folder.iterdir())
    for secret in (lab.postgres.password("paracle_sre"), lab.redis.password):
        assert secret.encode() not in written


@pytest.mark.parametrize("name", RUNBOOKS)
def test_healthy_lab_has_no_problem(lab, artifacts, name):
    result = _run(lab, name, artifacts)
    assert not result.verdict.problem, result.verdict.to_dict()
    assert result.verdict.cause is None
    assert not SHOWN_PLAN.search(result.html.read_text())
    _assert_artifact(result, lab)


def test_crashloop_oom_is_named(lab, artifacts):
    with lab.incident("crashloop-oom"):
        result = _run(lab, "api/pods-crashing", artifacts)

    assert result.verdict.causes == ["oom-killed"]
    evidence = result.verdict.finding("oom-killed").evidence
    assert evidence["container"] == "api"
    assert sorted(evidence["restarts"].values()) == [7, 9, 12]
    assert evidence["max_restarts"] == 12
    assert evidence["memory_limit_bytes"] == 512 * MI
    assert evidence["last_exit_code"] == 137
    assert evidence["peak_memory_bytes"] > 0.9 * 512 * MI
    assert "data:image/png;base64" in result.html.read_text()
    _assert_artifact(result, lab)


def test_pool_exhaustion_is_named_with_holder_and_limit(lab, artifacts):
    with lab.incident("pool-exhausted") as held:
        result = _run(lab, "database/connection-pool-exhausted", artifacts)

    assert "remaining connection slots are reserved" in held.refusal
    assert result.verdict.causes == ["connection-pool-exhausted"]
    evidence = result.verdict.finding("connection-pool-exhausted").evidence
    assert evidence["max_connections"] == 40
    assert evidence["superuser_reserved"] == 3
    assert evidence["held_by_application"] == {"paracle-api": 37}
    assert evidence["application_by_state"]["idle in transaction"] == 12
    assert evidence["available_to_applications"] == 0
    page = result.html.read_text()
    assert "data:image/png;base64" in page
    assert "DB_POOL_SIZE" in page and "kubectl --context paracle-sandbox" in page
    assert "-- Target: postgres postgresql://paracle_sre@127.0.0.1" in page
    _assert_artifact(result, lab)


def test_refusal_of_every_slot_is_itself_the_finding(lab, artifacts):
    with lab.incident("pool-exhausted-all-slots"):
        result = _run(lab, "database/connection-pool-exhausted", artifacts)

    finding = result.verdict.finding("connection-pool-exhausted")
    assert finding is not None
    assert "too many clients already" in finding.evidence["server_message"]
    _assert_artifact(result, lab)


def test_redis_oom_is_named_with_memory_and_prefixes(lab, artifacts):
    with lab.incident("redis-oom") as oom:
        result = _run(lab, "redis/out-of-memory", artifacts)

    assert result.verdict.causes == ["redis-out-of-memory"]
    evidence = result.verdict.finding("redis-out-of-memory").evidence
    assert evidence["maxmemory"] == 32 * MI
    assert evidence["used_memory"] >= 0.98 * 32 * MI
    assert evidence["maxmemory_policy"] == "noeviction"
    assert evidence["oom_rejected_writes"] >= oom.rejected
    prefixes = [p["prefix"] for p in evidence["largest_prefixes"]]
    assert prefixes[0] == "cache:" and {"session:", "ratelimit:"} <= set(prefixes)
    page = result.html.read_text()
    assert "delete keys matching cache:*" in page and "FLUSHDB" not in page.replace(
        "never FLUSHDB", "")
    assert "may evict any key, including those without TTL: cache:" in page
    _assert_artifact(result, lab)


def test_unreachable_targets_become_findings_not_crashes(lab, artifacts, tmp_path):
    from paracle_nb.sandbox import procs

    params = yaml.safe_load(lab.parameters_file.read_text())
    closed = procs.free_port()
    params["postgres_dsn"] = f"postgresql://paracle_sre@127.0.0.1:{closed}/paracle"
    params["redis_url"] = f"redis://127.0.0.1:{closed}/0"
    params["timeout_seconds"] = 2.0
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(params))

    for name in ("database/connection-pool-exhausted", "redis/out-of-memory"):
        result = run.run(name, broken, artifacts=artifacts)
        assert result.failed is None
        finding = result.verdict.finding("target-unreachable")
        assert finding is not None and finding.step == "Connect"
        assert str(closed) in finding.summary
        assert result.html.exists()
