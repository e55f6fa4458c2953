"""Remediation through papermill: shown first, applied only by id, audited.

A batch run applies nothing unless started with ``-p apply <id>`` of a
plan an earlier run showed; a plan the target no longer matches is not
applied. Checked on the lab's pool exhaustion: the idle sessions of the
API are the plan.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from paracle_nb import run
from paracle_nb.remediate import plans_from_notebook, read_audit
from paracle_nb.sandbox.lab import Lab

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

RUNBOOK = "database/connection-pool-exhausted"


def _api_sessions(lab: Lab) -> set[int]:
    with lab.postgres.admin_connect("paracle") as conn:
        return {row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = "
            "'paracle-api' AND backend_type = 'client backend'")}


def _run(lab: Lab, artifacts: Path, **overrides: Any) -> run.RunResult:
    result = run.run(RUNBOOK, lab.parameters_file,
                     {"idle_older_than": "1s", **overrides}, artifacts=artifacts)
    assert result.failed is None, result.failed
    return result


def _terminate_plan(result: run.RunResult) -> dict[str, Any]:
    plans = plans_from_notebook(json.loads(result.notebook.read_text()))
    [plan] = [p for p in plans if p["kind"] == "postgres.terminate_idle"]
    return plan


def test_a_batch_run_applies_only_the_plan_it_was_started_with(
        lab: Lab, artifacts: Path) -> None:
    with lab.incident("pool-exhausted"):
        before = _api_sessions(lab)
        shown = _run(lab, artifacts)
        # The remediation cells ran and planned; nothing changed.
        assert _api_sessions(lab) == before
        plan = _terminate_plan(shown)
        assert plan["applicable"] and plan["outcome"] == "not applied"
        assert plan["changes"] >= 12
        assert not (artifacts / "audit.jsonl").exists()

        applied = _run(lab, artifacts, apply=plan["id"])
        after = _api_sessions(lab)

        assert _terminate_plan(applied)["outcome"] == "applied"
        finding = applied.verdict.finding("remediation-applied")
        assert finding is not None and finding.evidence["plan_id"] == plan["id"]
        assert len(before - after) == plan["changes"]
        [record] = read_audit(artifacts / "audit.jsonl")
        assert record["plan_id"] == plan["id"] and record["outcome"] == "applied"
        assert record["runbook"] == RUNBOOK
        assert (applied.folder / "audit.jsonl").read_text().strip()
        assert plan["id"] in applied.html.read_text()

        # The same id again: those sessions are gone, so the plan now is
        # another one, shown and not applied.
        again = _run(lab, artifacts, apply=plan["id"])
        assert again.verdict.finding("remediation-plan-changed") is not None
        assert _api_sessions(lab) == after
        first, second = read_audit(artifacts / "audit.jsonl")
        assert (first["outcome"], second["outcome"]) == ("applied", "unknown-plan")
        assert second["plan_id"] == plan["id"]


def _deployment(lab: Lab) -> dict[str, Any]:
    from paracle_nb.sandbox.lab import NAMESPACE

    return json.loads(json.dumps(lab.kube.store.get("Deployment", NAMESPACE,
                                                    "paracle-api")))


def _redis_state(lab: Lab) -> tuple[int, dict[Any, Any]]:
    client = lab.redis.client()
    try:
        return int(client.dbsize()), dict(client.config_get("*"))
    finally:
        client.close()


def test_remediation_cells_of_a_batch_run_change_nothing_without_apply(
        lab: Lab, artifacts: Path) -> None:
    with lab.incident("redis-oom"):
        before = _redis_state(lab)
        result = run.run("redis/out-of-memory", lab.parameters_file,
                         artifacts=artifacts)
        assert result.failed is None, result.failed
        plans = plans_from_notebook(json.loads(result.notebook.read_text()))
        assert any(p["kind"].startswith("redis.") and p["applicable"]
                   for p in plans), plans
        assert _redis_state(lab) == before
    with lab.incident("pending-node-selector"):
        before_deployment = _deployment(lab)
        result = run.run("kubernetes/pods-not-scheduling", lab.parameters_file,
                         artifacts=artifacts)
        assert result.failed is None, result.failed
        assert _deployment(lab) == before_deployment
    assert not (artifacts / "audit.jsonl").exists()


def test_a_forbidden_apply_is_a_finding_in_the_artifact(
        lab: Lab, artifacts: Path) -> None:
    from paracle_nb.sandbox.lab import NAMESPACE

    with lab.incident("pending-node-selector"):
        shown = run.run("kubernetes/pods-not-scheduling", lab.parameters_file,
                        artifacts=artifacts)
        plans = plans_from_notebook(json.loads(shown.notebook.read_text()))
        [plan] = [p for p in plans if p["applicable"]]
        before = _deployment(lab)
        lab.kube.fail(rf"/namespaces/{NAMESPACE}/deployments/paracle-api$", 403,
                      method="PATCH")
        try:
            result = run.run("kubernetes/pods-not-scheduling", lab.parameters_file,
                             {"apply": plan["id"]}, artifacts=artifacts)
        finally:
            lab.kube.fail_clear()
        assert _deployment(lab) == before

    assert result.failed is None, result.failed
    finding = result.verdict.finding("remediation-forbidden")
    assert finding is not None and finding.severity.value == "critical"
    assert "paracle-nb-remediate" in finding.summary
    [record] = read_audit(artifacts / "audit.jsonl")
    assert record["outcome"] == "forbidden"
    assert "Traceback" not in result.html.read_text()


def test_the_read_only_role_diagnoses_and_names_what_needs_more(
        lab: Lab, artifacts: Path, tmp_path: Path) -> None:
    import yaml

    from paracle_nb.sandbox.postgres import MONITOR_ROLE

    parameters = {**lab.parameters,
                  "postgres_dsn": lab.postgres.dsn(MONITOR_ROLE),
                  "postgres_password_file": str(
                      lab.postgres.password_file(MONITOR_ROLE))}
    path = tmp_path / "read-only.yaml"
    path.write_text(yaml.safe_dump(parameters))
    with lab.incident("slow-queries"):
        result = run.run("database/slow-queries", path, artifacts=artifacts)

    assert result.failed is None, result.failed
    assert "missing-index" in result.verdict.causes
    refused = result.verdict.finding("forbidden")
    assert refused is not None and refused.step == "Explain a slow statement"
    assert "deploy/postgres/roles.sql" in refused.summary


@pytest.mark.parametrize("pattern, shown", [
    ("*", "FLUSHDB"),
    ("**", "refused"),
])
def test_a_catch_all_delete_pattern_is_a_flush_plan_or_a_refusal_never_a_crash(
        lab: Lab, artifacts: Path, pattern: str, shown: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    from paracle_nb.cli import print_result

    with lab.incident("redis-oom"):
        before = _redis_state(lab)
        result = run.run("redis/out-of-memory", lab.parameters_file,
                         {"delete_pattern": pattern}, artifacts=artifacts)
        assert _redis_state(lab) == before

    assert result.failed is None, result.failed
    titles = [p["title"] for p in
              plans_from_notebook(json.loads(result.notebook.read_text()))]
    assert any(shown in title for title in titles), titles
    print_result(result)
    printed = capsys.readouterr().out
    assert "(apply a plan: run again with -p apply <id>)" in printed
    assert any(f"plan {p['id']}" in printed for p in plans_from_notebook(
        json.loads(result.notebook.read_text())) if p["applicable"])
