"""Slow-query and Redis-connection rules on hand-built evidence (no servers)."""

import pandas as pd
import pytest

from paracle_nb import actions_database, actions_redis, plots, redis_clients
from paracle_nb.diagnosis import redis_clients as rc
from paracle_nb.diagnosis import slow_queries as sq
from paracle_nb.errors import ConnectionRefused, TargetTimeout
from paracle_nb.findings import Finding, Severity, Verdict
from paracle_nb.postgres_queries import (
    ACTIVE_COLUMNS,
    STATEMENT_COLUMNS,
    WAIT_COLUMNS,
    scrub_passwords,
)
from paracle_nb.runbook import Unavailable

SLOW_SQL = ("SELECT e.id FROM executions e WHERE e.agent_id = 42 "
            "AND e.status = 'failed' ORDER BY e.created_at DESC LIMIT 20")


# --- which statement may be explained ------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("((agent_id = 42) AND (status = 'failed'::text))", ["agent_id", "status"]),
    ("(created_at > (now() - '7 days'::interval))", ["created_at"]),
    ("((e.status = ANY ('{a,b}'::text[])) AND (e.tokens >= 10))",
     ["status", "tokens"]),
    ("((payload ~~ '%x = y%'::text) AND (agent_id = 1))", ["agent_id", "payload"]),
    ("(lower(owner) = 'team-1'::text)", ["owner"]),
    (None, []),
])
def test_filter_columns_puts_equality_first(text, expected):
    assert sq.filter_columns(text) == expected


@pytest.mark.parametrize("statement, refused", [
    (SLOW_SQL, None),
    ("WITH t AS (SELECT 1) SELECT * FROM t", None),
    ("SELECT * FROM agents WHERE name = 'update me; delete'", None),
    ("UPDATE executions SET status = 'x' WHERE id = 1", "not a plain read"),
    ("SELECT * FROM executions WHERE id = 1 FOR UPDATE", "not a plain read"),
    ("WITH d AS (DELETE FROM agents RETURNING id) SELECT * FROM d",
     "not a plain read"),
    ("SELECT * FROM executions WHERE agent_id = $1", "GENERIC_PLAN"),
    ("SELECT count(*) FROM agents, pg_sleep(600)", "pg_sleep()"),
    ("SELECT pg_terminate_backend(123)", "pg_terminate_backend()"),
])
def test_statement_refusal(statement, refused):
    reason = sq.statement_refusal(statement)
    if refused is None:
        assert reason is None
    else:
        assert refused in reason


@pytest.mark.parametrize("text, shown", [
    ("ALTER ROLE paracle PASSWORD 'hunter2'", "ALTER ROLE paracle PASSWORD '***'"),
    ("CREATE USER a WITH password 'it''s'", "CREATE USER a WITH password '***'"),
    ("SELECT dblink_connect('host=db password=s3cret user=x')",
     "SELECT dblink_connect('host=db password='***' user=x')"),
    ("SELECT 1", "SELECT 1"),
])
def test_password_literals_never_leave_the_helpers(text, shown):
    assert scrub_passwords(text) == shown


def _active(rows):
    base = {"application": "paracle-api", "role": "paracle", "state": "active",
            "wait_event_type": None, "wait_event": None, "duration_s": 0.2,
            "blocked_by": [], "query_id": 7, "query": SLOW_SQL}
    return pd.DataFrame([{**base, **r} for r in rows], columns=ACTIVE_COLUMNS)


def test_choose_statement_takes_the_longest_eligible_read():
    active = _active([
        {"pid": 1, "duration_s": 9.0, "wait_event_type": "Lock",
         "query": "SELECT * FROM agents"},
        {"pid": 2, "duration_s": 3.0, "query": "SELECT * FROM agents WHERE id = $1"},
        {"pid": 3, "duration_s": 0.3},
        {"pid": 4, "duration_s": 0.1, "application": "other"},
    ])
    chosen = sq.choose_statement(active, "", "paracle-api", max_age_s=5)
    assert chosen["pid"] == 3 and chosen["statement"] == SLOW_SQL
    assert chosen["query_id"] == 7 and chosen["skipped"] is None


def test_choose_statement_says_why_it_skips():
    old = _active([{"pid": 5, "duration_s": 600.0}])
    chosen = sq.choose_statement(old, "", "paracle-api", max_age_s=5)
    assert chosen["statement"] is None
    assert "pid 5" in chosen["skipped"] and "10m00s" in chosen["skipped"]

    none = sq.choose_statement(_active([]), "", "paracle-api", max_age_s=5)
    assert none["skipped"] == "no active query of paracle-api"

    given = sq.choose_statement(old, "SELECT 1", "paracle-api", max_age_s=5)
    assert given["statement"] == "SELECT 1" and given["source"] == "parameter"


PLAN = {
    "Execution Time": 250.0,
    "Plan": {
        "Node Type": "Limit", "Actual Total Time": 249.0, "Actual Loops": 1,
        "Actual Rows": 20,
        "Plans": [{
            "Node Type": "Seq Scan", "Relation Name": "executions", "Alias": "e",
            "Filter": "((agent_id = 42) AND (status = 'failed'::text))",
            "Actual Total Time": 120.5, "Actual Loops": 1, "Actual Rows": 60,
            "Rows Removed by Filter": 599940, "Shared Hit Blocks": 100,
            "Shared Read Blocks": 15000,
        }],
    },
}


def test_plan_nodes_flattens_the_tree():
    nodes = sq.plan_nodes(PLAN)
    assert list(nodes["node_type"]) == ["Limit", "Seq Scan"]
    scan = nodes.iloc[1]
    assert scan["depth"] == 1 and scan["relation"] == "executions"
    assert scan["filter_columns"] == ["agent_id", "status"]
    assert scan["shared_read"] == 15000
    assert sq.plan_nodes(None).empty


# --- slow-query diagnosis ------------------------------------------------

def _statements(rows, slow_ms=100):
    base = {"queryid": 7, "role": "paracle", "calls": 40, "mean_ms": 240.0,
            "total_ms": 9600.0, "max_ms": 400.0, "rows": 800,
            "shared_blks_hit": 1, "shared_blks_read": 2,
            "query": SLOW_SQL.replace("42", "$1")}
    frame = pd.DataFrame([{**base, **r} for r in rows], columns=STATEMENT_COLUMNS)
    frame["slow"] = frame["mean_ms"] > slow_ms
    return frame


def _tables(rows=600_000, seq_scan=80):
    return pd.DataFrame([
        {"table": "executions", "rows": rows, "seq_scan": seq_scan,
         "seq_tup_read": seq_scan * rows, "idx_scan": 0,
         "rows_per_seq_scan": rows, "large": rows >= 100_000},
        {"table": "agents", "rows": 2000, "seq_scan": 3, "seq_tup_read": 6000,
         "idx_scan": 9, "rows_per_seq_scan": 2000, "large": False}])


def _waits(rows=()):
    return pd.DataFrame(list(rows), columns=WAIT_COLUMNS)


def _diagnose(active=None, waits=None, statements=None, tables=None, chosen=None,
              plan=None, **kw):
    options = {"application": "paracle-api", "slow_ms": 100, "long_query_s": 300,
               "lock_wait_s": 1, **kw}
    active = _active([]) if active is None else active
    chosen = chosen or sq.choose_statement(active, "", "paracle-api", max_age_s=5)
    return sq.diagnose_slow_queries(
        active, _waits() if waits is None else waits,
        _statements([]) if statements is None else statements,
        _tables(seq_scan=0) if tables is None else tables, chosen, plan, **options)


def test_missing_index_names_table_columns_and_statement():
    active = _active([{"pid": 3}])
    [finding] = _diagnose(active=active, statements=_statements([{}]),
                          tables=_tables(), plan=PLAN)
    assert finding.cause == "missing-index"
    ev = finding.evidence
    assert ev["table"] == "executions" and ev["rows"] == 600_000
    assert ev["filter_columns"] == ["agent_id", "status"]
    assert ev["mean_ms"] == 240.0 and ev["calls"] == 40 and ev["queryid"] == 7
    assert ev["plan_node"] == "Seq Scan" and ev["plan_actual_ms"] == 120.5
    assert ev["rows_removed_by_filter"] == 599940 and ev["explained_pid"] == 3


def _problems(findings):
    return [f for f in findings if f.severity != Severity.INFO]


def test_missing_index_without_a_plan_comes_from_the_statement_text():
    findings = _diagnose(statements=_statements([{}]), tables=_tables())
    [finding] = _problems(findings)
    assert finding.cause == "missing-index"
    assert findings[-1].cause == "explain-skipped"
    assert finding.evidence["filter_columns"] is None
    assert "EXPLAIN was skipped" in finding.summary


def test_slow_statement_on_small_tables_is_not_an_index_problem():
    [finding] = _problems(_diagnose(statements=_statements([{}]),
                                    tables=_tables(rows=50_000)))
    assert finding.cause == "slow-statements"
    assert finding.evidence["mean_ms"] == 240.0


def _wait(waiting, blocker, **kw):
    base = {"waiting_pid": waiting, "waiting_application": "paracle-api",
            "lock_type": "transactionid", "lock_mode": "ShareLock",
            "waited_s": 12.0, "waiting_query": "UPDATE ...",
            "blocking_pid": blocker, "blocking_application": "paracle-api",
            "blocking_state": "active", "blocking_state_age_s": 12.0,
            "blocking_xact_age_s": 12.0, "blocking_backend_type": "client backend",
            "blocking_query": "UPDATE ..."}
    return {**base, **kw}


def test_lock_contention_finds_the_root_blocker():
    waits = _waits([
        _wait(11, 10, blocking_state="idle in transaction",
              blocking_state_age_s=30.0, blocking_xact_age_s=31.0),
        _wait(12, 11, lock_type="tuple", lock_mode="ExclusiveLock"),
        _wait(13, 11, lock_type="tuple", lock_mode="ExclusiveLock"),
        _wait(13, 12, lock_type="tuple", lock_mode="ExclusiveLock"),
    ])
    active = _active([{"pid": p, "wait_event_type": "Lock", "duration_s": 400.0}
                      for p in (11, 12, 13)])
    [finding, *_] = _diagnose(active=active, waits=waits)
    assert finding.cause == "lock-contention"
    assert finding.severity == Severity.CRITICAL
    ev = finding.evidence
    assert ev["blocking_pid"] == 10 and ev["waiting_pids"] == [11, 12, 13]
    assert ev["lock_type"] == "transactionid" and ev["lock_mode"] == "ShareLock"
    assert ev["blocker_state"] == "idle in transaction"
    assert ev["blocker_xact_age_s"] == 31.0
    # Sessions waiting on a lock are victims, not long-running queries.
    assert "long-running-query" not in {f.cause for f in _diagnose(
        active=active, waits=waits)}


def test_short_lock_waits_are_not_contention():
    assert _diagnose(waits=_waits([_wait(11, 10, waited_s=0.2)])) == []


def test_long_running_query_names_pid_and_duration():
    active = _active([{"pid": 21, "duration_s": 900.0, "wait_event": "PgSleep",
                       "query": "SELECT pg_sleep(900)"}])
    causes = {f.cause: f for f in _diagnose(active=active)}
    assert causes["long-running-query"].evidence["pid"] == 21
    assert causes["long-running-query"].evidence["duration_s"] == 900.0
    assert causes["explain-skipped"].severity == Severity.INFO


def test_healthy_database_has_no_finding():
    assert _diagnose(statements=_statements([{"mean_ms": 0.4}]),
                     tables=_tables(seq_scan=1)) == []


def test_unavailable_steps_give_no_finding():
    failed = Unavailable("Connect", TargetTimeout("slow", target="postgres"))
    assert sq.diagnose_slow_queries(failed, failed, failed, failed, failed, failed,
                                    application="a", slow_ms=100,
                                    long_query_s=1, lock_wait_s=1) == []


# --- plans for the database ----------------------------------------------

def test_index_plan_uses_the_named_columns_and_says_how_to_undo():
    finding = Finding("missing-index", Severity.WARNING, "",
                      {"table": "executions", "filter_columns": ["agent_id",
                                                                 "status"],
                       "rows": 600_000, "mean_ms": 240.0})
    plan = actions_database.plan_create_index(finding)
    assert plan.command.startswith(
        "CREATE INDEX CONCURRENTLY idx_executions_agent_id_status\n"
        "    ON executions (agent_id, status);")
    assert "DROP INDEX CONCURRENTLY IF EXISTS" in plan.command
    assert any("transaction block" in n for n in plan.notes)
    assert actions_database.plan_create_index(None).empty
    assert actions_database.quote_identifier("Weird Name") == '"Weird Name"'
    assert len(actions_database.index_name("t", ["c" * 80])) == 63


def test_terminate_plan_lists_only_client_backends_it_proved():
    verdict = Verdict("database/slow-queries", [
        Finding("lock-contention", Severity.CRITICAL, "",
                {"blocking_pid": 10, "blocker_application": "paracle-api",
                 "blocker_state": "idle in transaction", "waiting": 3,
                 "blocker_xact_age_s": 31.0,
                 "blocker_backend_type": "client backend"}),
        Finding("long-running-query", Severity.WARNING, "",
                {"pid": 21, "application": "paracle-api", "duration_s": 900.0}),
    ])
    plan = actions_database.plan_terminate_backends(verdict)
    assert list(plan.changes["pid"]) == [10, 21]
    assert "WHERE pid IN (10, 21)" in plan.command
    assert "backend_type = 'client backend'" in plan.command
    assert "pid <> pg_backend_pid()" in plan.command

    vacuum = Verdict("x", [Finding("lock-contention", Severity.WARNING, "",
                                   {"blocking_pid": 5, "waiting": 1,
                                    "blocker_backend_type": "autovacuum worker"})])
    assert actions_database.plan_terminate_backends(vacuum).empty
    assert actions_database.plan_terminate_backends(Verdict("x")).empty


# --- Redis connections ---------------------------------------------------

def _clients(groups):
    rows, serial = [], 0
    for name, host, count, idle in groups:
        for _ in range(count):
            serial += 1
            rows.append({"id": serial, "name": name, "addr": f"{host}:{serial}",
                         "host": host, "age_s": idle + 1, "idle_s": idle, "db": 0,
                         "cmd": "ping", "flags": "N"})
    return pd.DataFrame(rows, columns=redis_clients.CLIENT_COLUMNS)


def _limits(connected, maxclients=10_000, timeout=0):
    return {"connected_clients": connected, "blocked_clients": 0,
            "maxclients": maxclients, "timeout_s": timeout,
            "config_readable": timeout is not None,
            "usage_ratio": round(connected / maxclients, 3)}


def _samples(pings=(0.2,) * 5, connect=(1.5,) * 5, errors=None):
    rows = [{"sample": i + 1, "connect_ping_ms": c, "ping_ms": p, "error": None}
            for i, (p, c) in enumerate(zip(pings, connect, strict=True))]
    for error in errors or []:
        rows.append({"sample": len(rows) + 1, "connect_ping_ms": None,
                     "ping_ms": None, "error": error})
    return pd.DataFrame(rows)


def _redis(limits, clients, samples=None, rejected=0, connected="client", **kw):
    options = {"idle_older_than_s": 300.0, "idle_clients_warn": 20,
               "slow_ms": 50.0, **kw}
    return rc.diagnose_clients(connected, limits, {"rejected_connections": rejected,
                                                   "total_connections_received": 9},
                               clients, _samples() if samples is None else samples,
                               **options)


def test_clients_are_grouped_by_name_host_and_idle_time():
    clients = _clients([("worker", "10.0.0.5", 3, 400.0), ("worker", "10.0.0.6", 1,
                                                           2.0), ("api", "10.0.0.7",
                                                                  2, 30.0)])
    grouped = redis_clients.clients_by_name(clients, idle_older_than_s=60)
    first = grouped.iloc[0]
    assert (first["name"], first["host"], first["clients"]) == ("worker",
                                                                "10.0.0.5", 3)
    assert first["idle >5m"] == 3 and first["idle_over_threshold"] == 3
    assert grouped.set_index("host").loc["10.0.0.7", "idle 10s-1m"] == 2
    assert redis_clients._host("[::1]:6379") == "[::1]"


def test_full_redis_names_limit_refusals_and_holder():
    clients = _clients([("paracle-api-worker", "10.0.0.5", 63, 4.0)])
    samples = _samples((), (), errors=[rc.MAX_CLIENTS_MARKER] * 5)
    [finding] = _redis(_limits(64, 64), clients, samples, rejected=6)
    assert finding.cause == "redis-max-clients"
    assert finding.severity == Severity.CRITICAL
    ev = finding.evidence
    assert (ev["connected_clients"], ev["maxclients"]) == (64, 64)
    assert ev["rejected_connections"] == 6 and ev["refused_samples"] == 5
    assert ev["top_client_name"] == "paracle-api-worker"
    assert ev["top_client_count"] == 63 and ev["top_client_host"] == "10.0.0.5"


def test_refusal_of_the_runbook_is_the_finding():
    refused = Unavailable("Connect", ConnectionRefused(
        "refused", target="redis", detail="max number of clients reached"))
    [finding] = _redis(refused, refused, connected=refused)
    assert finding.cause == "redis-max-clients"
    assert finding.evidence["inspected"] is False


def test_past_refusals_below_the_limit_are_a_warning():
    [finding] = _redis(_limits(10), _clients([("api", "h", 9, 1.0)]), rejected=3)
    assert finding.severity == Severity.WARNING
    assert finding.evidence["rejected_connections"] == 3


def test_idle_clients_count_only_when_never_closed():
    clients = _clients([("paracle-api-worker", "10.0.0.5", 30, 900.0)])
    [finding] = _redis(_limits(31), clients)
    assert finding.cause == "redis-idle-connections"
    assert finding.evidence["idle_clients"] == 30
    assert finding.evidence["timeout_s"] == 0
    assert _redis(_limits(31, timeout=300), clients) == []


def test_slow_redis_needs_slow_answers():
    slow = _samples(pings=(0.3, 201.0, 202.0, 0.2, 200.0),
                    connect=(600.0, 400.0, 380.0, 590.0, 410.0))
    [finding] = _redis(_limits(3), _clients([]), slow)
    assert finding.cause == "redis-slow"
    assert finding.evidence["median_connect_ping_ms"] == 410.0
    assert finding.evidence["median_ping_ms"] == 200.0


def test_healthy_redis_has_no_finding():
    assert _redis(_limits(5), _clients([("api", "h", 4, 1.0)])) == []


def test_redis_plans_show_before_and_after():
    limits = _limits(64, 64)
    assert actions_redis.plan_maxclients(limits).command == \
        "CONFIG SET maxclients 10000"
    timeout = actions_redis.plan_client_timeout(limits, 300)
    assert timeout.changes.iloc[0].to_dict() == {"setting": "timeout",
                                                 "before": 0, "after": 300}
    grouped = redis_clients.clients_by_name(
        _clients([("paracle-api-worker", "h", 63, 1.0), ("api", "h", 2, 1.0)]), 60)
    pooling = actions_redis.plan_connection_pooling(grouped, 50)
    assert list(pooling.changes["name"]) == ["paracle-api-worker"]
    assert "max_connections=50" in pooling.command


def test_plots_render_with_placeholders_in_labels():
    statements = _statements([{}, {"queryid": 8, "mean_ms": 3.0,
                                   "query": "SELECT $1 AND $2"}])
    assert plots.statements_plot(statements, 100).png().startswith(b"\x89PNG")
    grouped = redis_clients.clients_by_name(_clients([("w$x", "h", 5, 1.0)]), 60)
    plot = plots.redis_clients_plot(grouped, _limits(6, 64))
    assert plot.png().startswith(b"\x89PNG")
