"""Remediation of slow queries, planned: an index to add, backends to end.

Plans name exactly the table and columns, or the PIDs, the findings
proved; they change nothing.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from paracle_nb import kube
from paracle_nb.actions import Plan, Plans, _frame, plan_set_env
from paracle_nb.errors import ParameterError
from paracle_nb.runbook import available
from paracle_nb.target import Target
from paracle_nb.units import format_duration

_SIMPLE_NAME = re.compile(r"[a-z_][a-z0-9_$]*")
_PG_NAME_LIMIT = 63


def quote_identifier(name: str) -> str:
    """Return ``name`` as SQL writes it: bare when it can be, quoted otherwise."""
    if _SIMPLE_NAME.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def index_name(table: str, columns: list[str]) -> str:
    """Return ``idx_<table>_<columns>``, cut to PostgreSQL's 63 characters."""
    bare = table.rsplit(".", 1)[-1]
    return "_".join(["idx", bare, *columns])[:_PG_NAME_LIMIT]


def plan_create_index(finding: Any) -> Plan:
    """Plan ``CREATE INDEX CONCURRENTLY`` on the columns a finding named.

    ``finding`` is the verdict's ``missing-index`` finding (or None).
    """
    columns = ["table", "index", "columns", "before", "after"]
    evidence = finding.evidence if finding is not None else {}
    table, filter_columns = evidence.get("table"), evidence.get("filter_columns")
    if not table or not filter_columns:
        notes = ["No missing index proven with its columns: explain the slow "
                 "statement (explain_query) to name them."] if table else []
        return Plan("create an index", _frame([], columns), "-- nothing", notes)

    name = index_name(table, filter_columns)
    qualified = ".".join(quote_identifier(p) for p in table.split("."))
    column_list = ", ".join(quote_identifier(c) for c in filter_columns)
    rows = [{
        "table": table,
        "index": name,
        "columns": ", ".join(filter_columns),
        "before": f"sequential scan of {evidence.get('rows', '?')} rows, "
                  f"{evidence.get('mean_ms', '?')} ms on average",
        "after": "index scan of the matching rows",
    }]
    command = (
        f"CREATE INDEX CONCURRENTLY {quote_identifier(name)}\n"
        f"    ON {qualified} ({column_list});\n"
        f"-- if it fails, it leaves an INVALID index; drop that before retrying:\n"
        f"-- DROP INDEX CONCURRENTLY IF EXISTS {quote_identifier(name)};")
    notes = [
        "CONCURRENTLY cannot run inside a transaction block: run it on its "
        "own, in autocommit (not between BEGIN and COMMIT).",
        "It does not block writes, but takes longer and waits for running "
        "transactions to finish (an 'idle in transaction' session stalls it).",
        "If it fails or is cancelled, the index stays behind marked INVALID "
        "and still slows writes: DROP INDEX CONCURRENTLY it, then retry.",
        "Equality columns come first; check the plan afterwards with "
        "EXPLAIN (ANALYZE, BUFFERS).",
    ]
    return Plan(f"create index {name} on {table}", _frame(rows, columns), command,
                notes)


def plan_terminate_backends(verdict: Any) -> Plan:
    """Plan ending the blocking and long-running backends the verdict named.

    Client backends only: never autovacuum, replication or the runbook's
    own session, which the command's WHERE clause enforces as well.
    """
    columns = ["pid", "application", "state", "why", "for"]
    rows, skipped = _backends_to_end(verdict)
    pids = ", ".join(str(r["pid"]) for r in rows) or "NULL"
    command = (
        "SELECT pid, application_name, pg_terminate_backend(pid)\n"
        "  FROM pg_stat_activity\n"
        f" WHERE pid IN ({pids})\n"
        "   AND backend_type = 'client backend'\n"
        "   AND pid <> pg_backend_pid();")
    notes = [
        "Ending a session rolls back its open transaction; its client sees "
        "an error and must retry.",
        "For a long query whose session should stay, pg_cancel_backend(pid) "
        "cancels only the query.",
        "Never autovacuum, replication or background workers: only client "
        "backends are listed, and the command checks it again.",
    ]
    notes.extend(skipped)
    title = f"terminate {len(rows)} backend(s)" if rows else "terminate backends"
    return Plan(title, _frame(rows, columns), command if rows else "-- nothing",
                notes if rows else skipped)


def _backends_to_end(verdict: Any) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    if verdict is None:
        return rows, skipped

    lock = verdict.finding("lock-contention")
    if lock is not None:
        ev = lock.evidence
        if ev.get("blocker_backend_type", "client backend") == "client backend":
            rows.append({"pid": ev["blocking_pid"],
                         "application": ev.get("blocker_application"),
                         "state": ev.get("blocker_state"),
                         "why": f"blocks {ev.get('waiting', '?')} session(s)",
                         "for": format_duration(ev.get("blocker_xact_age_s"))})
        else:
            skipped.append(f"pid {ev['blocking_pid']} blocks others but is a "
                           f"{ev['blocker_backend_type']}: not ended here.")

    long_running = verdict.finding("long-running-query")
    if long_running is not None:
        ev = long_running.evidence
        if all(r["pid"] != ev["pid"] for r in rows):
            rows.append({"pid": ev["pid"], "application": ev.get("application"),
                         "state": "active", "why": "long-running query",
                         "for": format_duration(ev.get("duration_s"))})
    return rows, skipped


def plan_terminate_idle(sessions: Any, application: str,
                        older_than_s: float) -> Plan:
    """Plan ending idle sessions of one application older than a threshold."""
    columns = ["pid", "role", "application", "state", "idle_for"]
    if not available(sessions) or sessions.empty:
        return Plan("terminate idle sessions", _frame([], columns), "-- nothing")
    idle = sessions[(sessions["application"] == application)
                    & sessions["state"].str.startswith("idle")
                    & (sessions["state_age_s"] >= older_than_s)]
    rows = [{"pid": int(r.pid), "role": r.role, "application": r.application,
             "state": r.state, "idle_for": format_duration(r.state_age_s)}
            for r in idle.itertuples()]
    if not rows:
        return _nothing_idle_for_long(sessions, application, older_than_s, columns)
    pids = ", ".join(str(r["pid"]) for r in rows) or "NULL"
    command = (
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity\n"
        f" WHERE pid IN ({pids})\n"
        "   AND backend_type = 'client backend'\n"
        f"   AND application_name = '{application.replace(chr(39), '')}'\n"
        "   AND state LIKE 'idle%';")
    notes = [f"Only client sessions of {application!r} idle for at least "
             f"{format_duration(older_than_s)}; never replication, autovacuum "
             "or background workers.",
             "The application's pool reconnects; in-flight transactions of "
             "'idle in transaction' sessions are rolled back."]
    return Plan(f"terminate {len(rows)} idle session(s) of {application}",
                _frame(rows, columns), command, notes)


def plan_max_connections(limits: Any, new_max: int) -> Plan:
    """Plan raising max_connections; says that it needs a restart."""
    current = limits["max_connections"] if available(limits) else None
    if current is not None and new_max <= current:
        raise ParameterError(f"new max_connections {new_max} is not above the "
                             f"current {current}")
    changes = _frame([{"setting": "max_connections", "before": current,
                       "after": new_max}], ["setting", "before", "after"])
    notes = ["Takes effect only after a Postgres restart (a short outage).",
             "Each connection costs memory (work_mem, buffers): a pooler "
             "(PgBouncer) is usually the better fix."]
    return Plan("raise max_connections", changes,
                f"ALTER SYSTEM SET max_connections = {int(new_max)};", notes)


def _nothing_idle_for_long(sessions: Any, application: str, older_than_s: float,
                           columns: list[str]) -> Plan:
    """An empty plan that says what is idle, and for how long."""
    mine = sessions[(sessions["application"] == application)
                    & sessions["state"].str.startswith("idle")]
    notes = [f"No session of {application!r} has been idle for "
             f"{format_duration(older_than_s)}."]
    if not mine.empty:
        notes.append(f"{len(mine)} are idle for up to "
                     f"{format_duration(mine['state_age_s'].max())}: lower "
                     "`idle_older_than` to include them, after checking that the "
                     "application's pool will reconnect.")
    return Plan("terminate idle sessions: none old enough", _frame([], columns),
                "-- nothing to terminate", notes)


def plan_reduce_pool(target: Target, limits: Any, deployment: str,
                     container: str = "api", headroom: float = 0.8) -> Plan:
    """Plan a per-pod pool size whose total fits in the usable slots."""
    spec = kube.get_deployment(target, deployment)
    replicas = max(1, int(spec["spec"].get("replicas") or 1))
    usable = limits["max_connections"] - limits["superuser_reserved"]
    budget = max(replicas, int(usable * headroom))
    size = max(1, budget * 4 // (5 * replicas))
    overflow = max(0, budget // replicas - size)
    plan = plan_set_env(target, deployment, container,
                        {"DB_POOL_SIZE": str(size), "DB_MAX_OVERFLOW": str(overflow)})
    plan.notes.append(f"{replicas} replicas x ({size} + {overflow}) = "
                      f"{replicas * (size + overflow)} connections at most, within "
                      f"{headroom:.0%} of the {usable} usable slots.")
    return plan


def plan_get_in(limits: Any, deployment: str, target: Target) -> Plan:
    """When every slot is taken: how to reach the database at all."""
    command = shlex.join(["kubectl", "scale", f"deployment/{deployment}",
                          "--replicas=1", "-n", target.namespace])
    notes = ["Nobody can connect to look, this runbook included.",
             "A superuser session can still use the reserved slots, if any are "
             "left: run this runbook with a superuser DSN.",
             "Otherwise free slots at the source: scaling the API down closes "
             "its pods' pools (a partial outage, but the database answers again)."]
    return Plan("get a connection back", _frame([], ["object", "field", "before",
                                                     "after"]), command, notes)


def pool_plans(verdict: Any, target: Target, *, sessions: Any, limits: Any,
               application: str, idle_older_than_s: float, new_max_connections: int,
               deployment: str) -> Plans:
    """Return the guide's fixes for what the pool runbook found.

    The idle-session and max_connections plans read the target again and
    can be applied; when the database cannot be read now, the plan from
    the sessions seen earlier is shown, to be run by hand.
    """
    from paracle_nb import actions_postgres
    from paracle_nb.errors import ParacleError

    plans = Plans()
    found = verdict.finding("connection-pool-exhausted") or verdict.finding(
        "connection-pool-near-limit")
    if found is None:
        return plans
    if not found.evidence.get("max_connections"):
        plans.append(plan_get_in(limits, deployment, target))
        return plans
    try:
        plans.append(actions_postgres.terminate_idle_connections(
            target, f"{idle_older_than_s:g}s", application=application))
    except ParacleError as exc:
        fallback = plan_terminate_idle(sessions, application, idle_older_than_s)
        fallback.notes.append(f"Could not re-read the sessions ({exc}): "
                              "run the command by hand after checking them.")
        plans.append(fallback)
    plans.append(plan_reduce_pool(target, limits, deployment))
    plans.append(plan_pgbouncer(target, limits, deployment))
    if new_max_connections > (limits["max_connections"] if available(limits) else 0):
        try:
            plans.append(actions_postgres.set_max_connections(
                target, new_max_connections))
        except ParacleError:
            plans.append(plan_max_connections(limits, new_max_connections))
    return plans


PGBOUNCER_INI = """\
[databases]
{database} = host={host} port={port} dbname={database}

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_client_conn}
server_idle_timeout = 600"""


def plan_pgbouncer(target: Target, limits: Any, deployment: str,
                   headroom: float = 0.5) -> Plan:
    """Plan PgBouncer in front of the database: the guide's lasting fix.

    Shown, never applied: it is a new deployment and a changed
    DATABASE_URL. The lab measures what it does (sandbox/pgbouncer.py).
    """
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(target.postgres_dsn or "")
    usable = (limits["max_connections"] - limits["superuser_reserved"]
              if available(limits) else 100)
    pool_size = max(2, int(usable * headroom))
    rows: list[dict[str, Any]] = [{"object": "pgbouncer", "field": "default_pool_size",
             "before": "(no pooler)", "after": pool_size},
            {"object": f"deployment/{deployment}", "field": "DATABASE_URL host",
             "before": parts.get("host", "?"), "after": "pgbouncer:6432"}]
    command = PGBOUNCER_INI.format(database=parts.get("dbname", "paracle"),
                                   host=parts.get("host", "postgres"),
                                   port=parts.get("port", 5432),
                                   pool_size=pool_size, max_client_conn=2000)
    notes = ["Transaction pooling: many client connections share "
             f"{pool_size} server connections ({headroom:.0%} of the {usable} "
             "usable slots), so scaling the API no longer multiplies them.",
             "Session features do not survive transaction pooling: prepared "
             "statements (psycopg: prepare_threshold=None), SET, advisory "
             "locks, LISTEN.",
             "Point DATABASE_URL in the API's Secret at the pooler, then "
             "restart the deployment."]
    return Plan("put PgBouncer in front of the database",
                _frame(rows, ["object", "field", "before", "after"]), command, notes,
                kind="postgres.pgbouncer", target=target)


def slow_query_plans(verdict: Any, target: Target) -> Plans:
    """Return the slow-queries fixes: the index proven missing, the backends
    that block others or run too long. Applicable where the target answers."""
    from paracle_nb import actions_postgres
    from paracle_nb.errors import ParacleError

    plans = Plans()
    missing = verdict.finding("missing-index")
    evidence = missing.evidence if missing is not None else {}
    if evidence.get("table") and evidence.get("filter_columns"):
        try:
            plans.append(actions_postgres.create_index_concurrently(
                target, evidence["table"], list(evidence["filter_columns"])))
        except ParacleError:
            plans.append(plan_create_index(missing))
    rows, skipped = _backends_to_end(verdict)
    if rows:
        try:
            plan = actions_postgres.terminate_backends(
                target, {int(r["pid"]): str(r["why"]) for r in rows})
            plan.notes.extend(skipped)
            plans.append(plan)
        except ParacleError:
            plans.append(plan_terminate_backends(verdict))
    return plans
