"""The slow-queries runbook, run by papermill, names each cause on the real lab.

The lab's Postgres has Paracle's tables without the index the guide adds;
each incident runs real sessions of the API and is healed after its test.
"""

import json

import psycopg
import pytest

from paracle_nb import postgres, postgres_queries, run
from paracle_nb.errors import ParacleError
from paracle_nb.sandbox import db_incidents, schema
from paracle_nb.target import Target

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

RUNBOOK = "database/slow-queries"
CAUSES = {"missing-index", "lock-contention", "long-running-query",
          "slow-statements"}


def _run(lab, artifacts, **overrides):
    result = run.run(RUNBOOK, lab.parameters_file, overrides, artifacts=artifacts)
    assert result.failed is None, result.failed
    notebook = json.loads(result.notebook.read_text())
    assert notebook["metadata"]["paracle"]["verdict"] == result.verdict.to_dict()
    written = b"".join(p.read_bytes() for p in result.folder.iterdir())
    for role in ("paracle", "paracle_sre"):
        assert lab.postgres.password(role).encode() not in written
    return result


def _indexes(lab):
    with lab.postgres.connect("paracle_sre", "test-observer") as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'executions'"))


def _target(lab):
    return Target.from_parameters(lab.parameters)


def test_healthy_lab_has_no_slow_query(lab, artifacts):
    result = _run(lab, artifacts)

    assert not result.verdict.problem, result.verdict.to_dict()
    assert result.verdict.cause is None
    assert 'alt="slowest statements"' in result.html.read_text()


def test_missing_index_is_named_with_table_columns_and_times(lab, artifacts):
    with lab.incident("slow-queries") as sessions:
        result = _run(lab, artifacts)
        client_mean = sessions.mean_ms

    assert result.verdict.causes == ["missing-index"]
    evidence = result.verdict.finding("missing-index").evidence
    assert evidence["table"] == "executions"
    assert evidence["rows"] == 600_000
    assert evidence["filter_columns"] == ["agent_id", "status"]
    assert evidence["plan_node"] == "Seq Scan"
    assert evidence["plan_actual_ms"] > 0
    assert evidence["rows_removed_by_filter"] > 100_000
    assert evidence["idx_scan"] == 0
    # Each call scans the table twice (the page and its total).
    assert evidence["seq_scan"] >= 2 * evidence["calls"] > 0
    assert evidence["mean_ms"] > 100 and client_mean > 100
    assert evidence["statement"].startswith("SELECT e.id, e.status")

    html = result.html.read_text()
    assert "data:image/png;base64" in html and 'alt="slowest statements"' in html
    assert "CREATE INDEX CONCURRENTLY idx_executions_agent_id_status" in html
    # Diagnosis created nothing: the index is only planned.
    assert _indexes(lab) == ["executions_pkey"]


def _status(lab, execution_id):
    with lab.postgres.connect("paracle_sre", "test-observer") as conn:
        return conn.execute("SELECT status FROM executions WHERE id = %s",
                            [execution_id]).fetchone()[0]


def test_lock_contention_names_blocker_and_waiters(lab, artifacts):
    before = _status(lab, db_incidents.LOCKED_EXECUTION)
    with lab.incident("lock-contention") as held:
        result = _run(lab, artifacts)

    assert result.verdict.causes == ["lock-contention"]
    evidence = result.verdict.finding("lock-contention").evidence
    assert evidence["blocking_pid"] == held.blocker_pid
    assert evidence["waiting_pids"] == sorted(held.waiting_pids)
    assert evidence["lock_type"] == "transactionid"
    assert evidence["lock_mode"] == "ShareLock"
    assert evidence["blocker_state"] == "idle in transaction"
    assert evidence["blocker_state_age_s"] >= 2
    assert evidence["max_wait_s"] >= 2
    assert f"WHERE pid IN ({held.blocker_pid})" in result.html.read_text()

    # Everything the incident did was rolled back.
    assert _status(lab, held.row_id) == before


def test_long_running_query_is_named_with_pid_and_duration(lab, artifacts):
    with lab.incident("long-running-query") as report:
        result = _run(lab, artifacts, long_query_older_than="1s")

    assert result.verdict.causes == ["long-running-query"]
    evidence = result.verdict.finding("long-running-query").evidence
    assert evidence["pid"] == report.pid
    assert evidence["duration_s"] >= 2
    assert evidence["application"] == "paracle-api"
    assert evidence["wait_event"] == "PgSleep"
    assert "pg_sleep" in evidence["query"]
    skipped = result.verdict.finding("explain-skipped")
    assert skipped is not None and "pg_sleep()" in skipped.summary
    assert f"WHERE pid IN ({report.pid})" in result.html.read_text()


def test_healed_lab_is_healthy_again(lab, artifacts):
    with lab.incident("slow-queries"):
        pass
    result = _run(lab, artifacts, long_query_older_than="1s")
    assert result.verdict.causes == []
    assert not CAUSES & {f.cause for f in result.verdict.findings}


def test_explain_query_with_placeholders_is_skipped_and_says_why(lab, artifacts):
    result = _run(lab, artifacts,
                  explain_query="SELECT * FROM executions WHERE agent_id = $1")

    assert result.verdict.causes == []
    skipped = result.verdict.finding("explain-skipped")
    assert skipped is not None and "GENERIC_PLAN" in skipped.summary


def test_explain_runs_reads_in_a_rolled_back_transaction(lab):
    statement = schema.recent_failed_executions(7).as_string()
    with postgres.connect(_target(lab)) as conn:
        plan = postgres_queries.explain_statement(conn, statement, timeout_ms=5000)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with pytest.raises(ParacleError, match="could not be explained"):
            postgres_queries.explain_statement(
                conn, "UPDATE executions SET status = 'x' WHERE id = 1",
                timeout_ms=5000)
    assert plan["Plan"]["Node Type"] == "Limit"
    assert plan["Execution Time"] > 0
    assert _indexes(lab) == ["executions_pkey"]
