"""Postgres remediation against the lab server: planned, scoped, applied once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paracle_nb.actions_postgres import (
    create_index_concurrently,
    set_max_connections,
    terminate_idle_connections,
    terminate_long_queries,
)
from paracle_nb.remediate import read_audit
from paracle_nb.sandbox import incidents
from paracle_nb.sandbox.postgres import (
    MONITOR_ROLE,
    REMEDIATION_ROLE,
    SRE_ROLE,
    PostgresServer,
)
from paracle_nb.target import Target

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("audit")]


def _target(pg: PostgresServer, role: str = SRE_ROLE) -> Target:
    return Target.from_parameters({
        "environment": "test", "postgres_dsn": pg.dsn(role),
        "postgres_password_file": str(pg.password_file(role)),
        "timeout_seconds": 5.0})


def _backends(pg: PostgresServer) -> list[tuple[Any, ...]]:
    """Every backend but the query's own: pid, type, application, state."""
    with pg.admin_connect("paracle") as conn:
        return conn.execute(
            "SELECT pid, backend_type, application_name, state FROM "
            "pg_stat_activity WHERE pid <> pg_backend_pid() ORDER BY pid").fetchall()



@pytest.fixture()
def idle_sessions(postgres_server: PostgresServer) -> Iterator[dict[str, Any]]:
    api = incidents.idle_connections(postgres_server, "paracle-api", n=4)
    other = incidents.idle_connections(postgres_server, "billing", n=2)
    time.sleep(1.2)  # older than the plans' 1 s
    try:
        yield {"api": api, "other": other}
    finally:
        api.release()
        other.release()


def _wait_gone(pg: PostgresServer, pids: set[int]) -> set[int]:
    for _ in range(50):
        left = {row[0] for row in _backends(pg)} & pids
        if not left:
            return left
        time.sleep(0.1)
    return left


def test_planning_changes_nothing_and_lists_only_scoped_idle_sessions(
        postgres_server: PostgresServer, idle_sessions: dict[str, Any]) -> None:
    before = _backends(postgres_server)
    plan = terminate_idle_connections(_target(postgres_server), "1s",
                                      application="paracle-api")
    assert _backends(postgres_server) == before
    assert sorted(plan.changes["pid"]) == sorted(idle_sessions["api"].backend_pids)
    assert set(plan.changes["application"]) == {"paracle-api"}
    assert plan.id == terminate_idle_connections(
        _target(postgres_server), "1s", application="paracle-api").id


def test_applying_ends_exactly_the_planned_sessions(
        postgres_server: PostgresServer, idle_sessions: dict[str, Any],
        audit: Path) -> None:
    target = _target(postgres_server)
    plan = terminate_idle_connections(target, "1s", application="paracle-api")
    planned = set(idle_sessions["api"].backend_pids)
    others = {row[0] for row in _backends(postgres_server)} - planned

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "applied", result.finding.summary
    assert set(result.record["applied"]["ended"]) == planned
    assert not _wait_gone(postgres_server, planned)
    # Billing's sessions, background workers: all still there.
    assert others <= {row[0] for row in _backends(postgres_server)}
    assert result.finding.cause == "remediation-applied"
    [record] = read_audit(audit)
    assert record["plan_id"] == plan.id and record["outcome"] == "applied"
    assert record["who"] and record["host"] and record["planned"]
    assert record["target"]["postgres"].startswith("postgresql://")
    assert postgres_server.password(SRE_ROLE) not in audit.read_text()


def test_a_plan_is_applied_once(postgres_server: PostgresServer,
                                idle_sessions: dict[str, Any]) -> None:
    plan = terminate_idle_connections(_target(postgres_server), "1s",
                                      application="paracle-api")
    assert plan.apply(confirm=plan.id).outcome == "applied"
    again = plan.apply(confirm=plan.id)
    assert again.outcome == "already-applied"


def test_a_batch_run_without_confirmation_changes_nothing(
        postgres_server: PostgresServer, idle_sessions: dict[str, Any],
        audit: Path) -> None:
    before = _backends(postgres_server)
    plan = terminate_idle_connections(_target(postgres_server), "1s",
                                      application="paracle-api")
    result = plan.apply()
    assert result.outcome == "not-confirmed"
    assert "-p apply " + plan.id in result.finding.summary
    assert _backends(postgres_server) == before
    assert plan.apply(confirm="0000000000").outcome == "not-confirmed"
    assert _backends(postgres_server) == before


def test_a_plan_that_changed_since_shown_is_reshown_not_applied(
        postgres_server: PostgresServer, idle_sessions: dict[str, Any]) -> None:
    plan = terminate_idle_connections(_target(postgres_server), "1s",
                                      application="paracle-api")
    woke = idle_sessions["api"].sessions[0]
    woke.execute("SELECT 1")  # one session is no longer idle for 1 s
    before = _backends(postgres_server)

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "changed"
    assert result.fresh is not None and result.fresh.id != plan.id
    assert {row[0] for row in before} == {row[0] for row in
                                          _backends(postgres_server)}


def test_terminations_never_touch_own_or_non_client_backends(
        postgres_server: PostgresServer, idle_sessions: dict[str, Any]) -> None:
    plan = terminate_idle_connections(_target(postgres_server), "1s")
    planned = set(plan.changes["pid"])
    kinds = {row[0]: row[1] for row in _backends(postgres_server)}
    assert planned and all(kinds[pid] == "client backend" for pid in planned)
    non_client = {pid for pid, kind in kinds.items() if kind != "client backend"}
    assert non_client  # autovacuum launcher, checkpointer, ...

    assert plan.apply(confirm=plan.id).outcome == "applied"
    assert non_client <= {row[0] for row in _backends(postgres_server)}


def test_the_read_only_role_is_refused_with_a_finding(
        postgres_server: PostgresServer, idle_sessions: dict[str, Any]) -> None:
    plan = terminate_idle_connections(_target(postgres_server, MONITOR_ROLE), "1s",
                                      application="paracle-api")
    before = _backends(postgres_server)
    result = plan.apply(confirm=plan.id)
    assert result.outcome == "forbidden"
    assert result.finding.severity.value == "critical"
    assert "pg_signal_backend" in result.finding.summary
    assert {r[0] for r in before} == {r[0] for r in _backends(postgres_server)}


def test_the_remediation_role_may_end_sessions(
        postgres_server: PostgresServer, idle_sessions: dict[str, Any]) -> None:
    plan = terminate_idle_connections(_target(postgres_server, REMEDIATION_ROLE),
                                      "1s", application="billing")
    result = plan.apply(confirm=plan.id)
    assert result.outcome == "applied", result.finding.summary
    assert set(result.record["applied"]["ended"]) == set(
        idle_sessions["other"].backend_pids)


def test_long_queries_are_cancelled_and_their_sessions_kept(
        postgres_server: PostgresServer) -> None:
    conn = postgres_server.connect(application_name="paracle-api")
    errors: list[BaseException] = []

    def sleep() -> None:
        try:
            conn.execute("SELECT pg_sleep(20)")
        except Exception as exc:
            errors.append(exc)

    runner = threading.Thread(target=sleep)
    runner.start()
    try:
        time.sleep(1.3)
        plan = terminate_long_queries(_target(postgres_server), "1s",
                                      application="paracle-api", cancel_only=True)
        assert list(plan.changes["pid"]) == [conn.info.backend_pid]
        result = plan.apply(confirm=plan.id)
        runner.join(10)
        assert result.outcome == "applied", result.finding.summary
        assert errors and "cancel" in str(errors[0]).lower()
        assert conn.execute("SELECT 1").fetchone() == (1,)  # session kept
    finally:
        runner.join(10)
        conn.close()


@pytest.fixture()
def small_table(postgres_server: PostgresServer) -> Iterator[str]:
    with postgres_server.admin_connect("paracle") as conn:
        conn.execute("DROP TABLE IF EXISTS remediation_t")
        conn.execute("CREATE TABLE remediation_t AS SELECT g AS a, g % 7 AS b "
                     "FROM generate_series(1, 5000) g")
        conn.commit()
    yield "remediation_t"
    with postgres_server.admin_connect("paracle") as conn:
        conn.execute("DROP TABLE IF EXISTS remediation_t")
        conn.commit()


def test_create_index_concurrently_builds_a_valid_index(
        postgres_server: PostgresServer, small_table: str) -> None:
    target = _target(postgres_server)
    plan = create_index_concurrently(target, small_table, ["b", "a"])
    assert len(plan.changes) == 1
    result = plan.apply(confirm=plan.id)
    assert result.outcome == "applied", result.finding.summary
    assert result.finding.evidence["after"]["state"] == "valid"
    assert create_index_concurrently(target, small_table, ["b", "a"]).empty


def test_an_invalid_index_left_behind_is_reported_and_rebuilt(
        postgres_server: PostgresServer, small_table: str) -> None:
    target = _target(postgres_server)
    with postgres_server.admin_connect("paracle") as conn:
        conn.execute("CREATE INDEX idx_remediation_t_b ON remediation_t (b)")
        conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                     "'idx_remediation_t_b'::regclass")
        conn.commit()
    plan = create_index_concurrently(target, small_table, ["b"])
    assert plan.changes.iloc[0]["before"] == "invalid"
    assert any("INVALID" in note for note in plan.notes)
    result = plan.apply(confirm=plan.id)
    assert result.outcome == "applied", result.finding.summary
    assert result.finding.evidence["after"]["state"] == "valid"


def test_max_connections_is_written_and_the_restart_called_out(
        postgres_server: PostgresServer) -> None:
    target = _target(postgres_server)
    try:
        plan = set_max_connections(target, 60)
        assert plan.changes.iloc[0]["before"] == 40
        result = plan.apply(confirm=plan.id)
        assert result.finding.cause == "restart-required"
        assert result.finding.evidence["after"] == {"running": 40,
                                                    "pending_restart": True}
    finally:
        with postgres_server.admin_connect() as conn:
            conn.autocommit = True
            conn.execute("ALTER SYSTEM RESET max_connections")
            conn.execute("SELECT pg_reload_conf()")


def test_max_connections_needs_a_superuser(postgres_server: PostgresServer) -> None:
    plan = set_max_connections(_target(postgres_server, REMEDIATION_ROLE), 60)
    result = plan.apply(confirm=plan.id)
    assert result.outcome == "forbidden"
    assert "superuser" in result.finding.summary
