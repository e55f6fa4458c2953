"""Postgres remediation that can be applied: the safe form of the guide's SQL.

The guide's ``pg_terminate_backend`` over every backend idle for five
minutes also hits replication, autovacuum and the session running it.
Here each termination plan lists the exact client backends (pid and start
time), and applying it ends only those that still match every filter at
that moment: ``backend_type = 'client backend'``, not this session, the
given database, application and user, and still idle or running for as
long as planned.

Each plan reads the target when it is made and again when it is applied
(``replan``); planning never writes.
"""

from __future__ import annotations

import logging
from typing import Any

from paracle_nb import postgres
from paracle_nb.actions import Plan, _frame
from paracle_nb.actions_database import index_name, quote_identifier
from paracle_nb.errors import ParacleError, ParameterError, PermissionDenied
from paracle_nb.findings import Finding, Severity
from paracle_nb.target import Target
from paracle_nb.units import format_duration, parse_duration

log = logging.getLogger(__name__)

SIGNAL_ROLE = ("needs a role with pg_signal_backend (the remediation role, "
               "see deploy/postgres/roles.sql); the read-only runbook role "
               "cannot end sessions.")

# The scope of a termination plan: client backends only, never this
# session, in the given state for long enough, of the given application,
# role and database (each None: any).
_SCOPE = """
           backend_type = 'client backend'
       AND pid <> pg_backend_pid()
       AND {state}
       AND {since} < now() - make_interval(secs => %(older)s)
       AND (%(application)s::text IS NULL OR application_name = %(application)s)
       AND (%(role)s::text IS NULL OR usename = %(role)s)
       AND (%(database)s::text IS NULL OR datname = %(database)s)
"""

_CANDIDATES = """
    SELECT pid, backend_start::text AS backend_start,
           usename AS role, datname AS database,
           coalesce(nullif(application_name, ''), '(none)') AS application,
           client_addr::text AS client_addr, state,
           extract(epoch FROM now() - {since})::float AS age_s,
           left(query, 120) AS query
      FROM pg_stat_activity
     WHERE""" + _SCOPE + """
     ORDER BY {since}
"""

# Applying re-checks every filter of the plan, per planned backend: a pid
# reused by a new session, or a session that woke up, is left alone.
_APPLY = """
    SELECT pid, {function}(pid) AS done
      FROM pg_stat_activity
     WHERE (pid, backend_start::text) IN
           (SELECT * FROM unnest(%(pids)s::int[], %(starts)s::text[]))
       AND""" + _SCOPE

_IDLE = "state IN ('idle', 'idle in transaction', 'idle in transaction (aborted)')"
_ACTIVE = "state = 'active'"

_COLUMNS = ["pid", "backend_start", "role", "database", "application",
            "client_addr", "state", "age", "query"]


def _filters(older_than: str, application: str | None, role: str | None,
             database: str | None) -> dict[str, Any]:
    seconds = parse_duration(older_than)
    if seconds <= 0:
        raise ParameterError(f"older_than must be above zero, got {older_than!r}")
    return {"older": seconds, "application": application or None,
            "role": role or None, "database": database or None}


def _sessions(target: Target, state: str, since: str,
              filters: dict[str, Any]) -> list[dict[str, Any]]:
    with postgres.connect(target) as conn:
        rows = postgres._query(conn, _CANDIDATES.format(state=state, since=since),
                               filters)
    for row in rows:
        row["age"] = format_duration(row.pop("age_s"))
    return rows


def _scope(filters: dict[str, Any]) -> str:
    parts = [f"{name} {filters[key]!r}" for key, name in
             (("application", "application"), ("role", "user"),
              ("database", "database")) if filters[key]]
    return ", ".join(parts) or "any application, user and database"


def terminate_idle_connections(target: Target, older_than: str = "10min",
                               application: str | None = None,
                               role: str | None = None,
                               database: str | None = None) -> Plan:
    """Plan ending client sessions idle for longer than ``older_than``.

    >>> plan = terminate_idle_connections(target, "10min",  # doctest: +SKIP
    ...                                   application="paracle-api")
    >>> plan.apply()  # asks for the plan id
    """
    filters = _filters(older_than, application, role, database)
    rows = _sessions(target, _IDLE, "state_change", filters)
    notes = [f"Client sessions of {_scope(filters)} idle for at least "
             f"{format_duration(filters['older'])}; never this session, "
             "replication, autovacuum or background workers.",
             "An 'idle in transaction' session's transaction is rolled back; "
             "the application's pool reconnects.",
             "Applying ends only the sessions listed that are still idle and "
             "still the same backend (pid and start time)."]
    return _termination_plan(
        target, f"terminate {len(rows)} idle session(s) of {_scope(filters)}",
        rows, notes, "postgres.terminate_idle", "pg_terminate_backend",
        lambda: terminate_idle_connections(target, older_than, application,
                                           role, database),
        _IDLE, "state_change", filters)


def terminate_long_queries(target: Target, longer_than: str = "5min",
                           application: str | None = None,
                           role: str | None = None, database: str | None = None,
                           cancel_only: bool = False) -> Plan:
    """Plan ending (or, with ``cancel_only``, cancelling) long-running queries."""
    filters = _filters(longer_than, application, role, database)
    rows = _sessions(target, _ACTIVE, "query_start", filters)
    verb = "cancel" if cancel_only else "terminate"
    function = "pg_cancel_backend" if cancel_only else "pg_terminate_backend"
    notes = [f"Queries of {_scope(filters)} running for at least "
             f"{format_duration(filters['older'])}; client backends only.",
             "Cancelling stops the query and keeps the session; terminating "
             "ends the session and rolls back its transaction."]
    return _termination_plan(
        target, f"{verb} {len(rows)} query(ies) running over "
                f"{format_duration(filters['older'])}",
        rows, notes, f"postgres.{verb}_long_queries", function,
        lambda: terminate_long_queries(target, longer_than, application, role,
                                       database, cancel_only),
        _ACTIVE, "query_start", filters)


def terminate_backends(target: Target, reasons: dict[int, str]) -> Plan:
    """Plan ending the client backends a diagnosis named, pid -> why.

    The slow-queries runbook names a blocker or a runaway query; the plan
    lists it only while it is the same client backend, never autovacuum,
    replication or this session.
    """
    with postgres.connect(target) as conn:
        rows = postgres._query(conn, """
            SELECT pid, backend_start::text AS backend_start,
                   usename AS role, datname AS database,
                   coalesce(nullif(application_name, ''), '(none)') AS application,
                   client_addr::text AS client_addr, state,
                   extract(epoch FROM now() - coalesce(xact_start, query_start,
                                                       backend_start))::float
                       AS age_s,
                   left(query, 120) AS query
              FROM pg_stat_activity
             WHERE pid = ANY(%s) AND backend_type = 'client backend'
               AND pid <> pg_backend_pid()
             ORDER BY pid""", [list(reasons)])
    for row in rows:
        row["age"] = format_duration(row.pop("age_s"))
        row["why"] = reasons[row["pid"]]
    skipped = sorted(set(reasons) - {r["pid"] for r in rows})
    notes = ["Ending a session rolls back its open transaction; its client sees "
             "an error and must retry. pg_cancel_backend(pid) cancels only the "
             "query (terminate_long_queries(..., cancel_only=True)).",
             "Client backends only: never autovacuum, replication or background "
             "workers; applying checks it again, with the backend's start time."]
    if skipped:
        notes.append(f"Not listed (gone, or not a client backend): {skipped}.")
    filters = {"older": 0.0, "application": None, "role": None, "database": None}
    return _termination_plan(
        target, f"terminate {len(rows)} backend(s) named by the diagnosis", rows,
        notes, "postgres.terminate_backends", "pg_terminate_backend",
        lambda: terminate_backends(target, reasons),
        "state IS NOT NULL", "backend_start", filters,
        columns=[*_COLUMNS, "why"])


def _termination_plan(target: Target, title: str, rows: list[dict[str, Any]],
                      notes: list[str], kind: str, function: str,
                      replan: Any, state: str, since: str,
                      filters: dict[str, Any],
                      columns: list[str] = _COLUMNS) -> Plan:
    pids = ", ".join(str(r["pid"]) for r in rows) or "NULL"
    command = (f"SELECT pid, {function}(pid) FROM pg_stat_activity\n"
               f" WHERE pid IN ({pids})\n"
               "   AND backend_type = 'client backend'\n"
               "   AND pid <> pg_backend_pid();")
    sql = _APPLY.format(function=function, state=state, since=since)

    def execute(plan: Plan) -> dict[str, Any]:
        params = {**filters, "pids": [r["pid"] for r in rows],
                  "starts": [r["backend_start"] for r in rows]}
        with postgres.connect(target) as conn:
            done = postgres._query(conn, sql, params)
        return {"ended": sorted(r["pid"] for r in done if r["done"]),
                "not_ended": sorted(r["pid"] for r in done if not r["done"]),
                "gone_or_changed": sorted({r["pid"] for r in rows}
                                          - {r["pid"] for r in done})}

    def verify(plan: Plan, applied: dict[str, Any]) -> Finding:
        import time

        planned = {r["pid"] for r in rows}
        still = planned
        for _ in range(20):  # a terminated backend takes a moment to exit
            with postgres.connect(target) as conn:
                left = postgres._query(
                    conn, "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)",
                    [list(planned)])
                limits = postgres.connection_limits(conn)
            still = {r["pid"] for r in left} & set(applied["ended"])
            if not still:
                break
            time.sleep(0.1)
        ok = not still and not applied["not_ended"]
        return Finding(
            "remediation-applied" if ok else "remediation-incomplete",
            Severity.INFO if ok else Severity.WARNING,
            f"Ended {len(applied['ended'])} of {len(rows)} planned backend(s); "
            f"{limits['client_backends']} client connections of "
            f"{limits['max_connections']} now."
            + (f" Still there: {sorted(still)}." if still else ""),
            {**applied, "after": {"client_backends": limits["client_backends"],
                                  "max_connections": limits["max_connections"],
                                  "still_present": sorted(still)}})

    return Plan(title, _frame([{**r} for r in rows], columns), command, notes,
                kind=kind, target=target, executor=execute, verifier=verify,
                replan=replan, key_columns=["pid", "backend_start"],
                needs=SIGNAL_ROLE)


def create_index_concurrently(target: Target, table: str, columns: list[str],
                              name: str | None = None) -> Plan:
    """Plan ``CREATE INDEX CONCURRENTLY`` (outside any transaction).

    A failed build leaves an INVALID index; applying reports it with the
    command that drops it. An index already covering these columns (valid)
    makes the plan empty.
    """
    if not columns:
        raise ParameterError("create_index_concurrently needs at least one column")
    name = name or index_name(table, columns)
    qualified = ".".join(quote_identifier(p) for p in table.split("."))
    column_list = ", ".join(quote_identifier(c) for c in columns)
    existing = _index_state(target, name, table, columns)
    rows = [] if existing.get("covering") else [{
        "table": table, "index": name, "columns": ", ".join(columns),
        "before": existing.get("state", "no index"), "after": "valid index"}]
    statement = f"CREATE INDEX CONCURRENTLY {quote_identifier(name)} " \
                f"ON {qualified} ({column_list})"
    notes = ["Runs outside a transaction block, in autocommit; it does not block "
             "writes but waits for running transactions.",
             "If it fails, the INVALID index left behind is reported with the "
             "DROP INDEX CONCURRENTLY that removes it."]
    if existing.get("covering"):
        notes.insert(0, f"Index {existing['covering']} already covers "
                        f"({', '.join(columns)}): nothing to create.")
    if existing.get("state") == "invalid":
        notes.insert(0, f"An INVALID index {name} exists from an earlier "
                        "attempt: it is dropped first.")

    def execute(plan: Plan) -> dict[str, Any]:
        with postgres.connect(target, read_only=False,
                              statement_timeout_ms=_BUILD_TIMEOUT_MS) as conn:
            try:
                with postgres.answer_within(conn, _BUILD_TIMEOUT_MS / 1000):
                    if existing.get("state") == "invalid":
                        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS "
                                     f"{quote_identifier(name)}")
                    conn.execute(statement)
            except Exception as exc:
                import psycopg

                if isinstance(exc, psycopg.errors.InsufficientPrivilege):
                    raise PermissionDenied(f"Postgres refused: {exc}".strip(),
                                           target="postgres") from None
                state = _index_state(target, name, table, columns).get("state")
                left = (f"; it left an INVALID index {name}: DROP INDEX "
                        f"CONCURRENTLY {quote_identifier(name)}"
                        if state == "invalid" else "")
                raise ParacleError(f"CREATE INDEX CONCURRENTLY failed: "
                                   f"{str(exc).strip().splitlines()[0]}{left}",
                                   target="postgres") from None
        return {"index": name, "statement": statement}

    def verify(plan: Plan, applied: dict[str, Any]) -> Finding:
        state = _index_state(target, name, table, columns)
        valid = state.get("state") == "valid"
        return Finding("remediation-applied" if valid else "remediation-incomplete",
                       Severity.INFO if valid else Severity.CRITICAL,
                       f"Index {name} on {table} is {state.get('state')}"
                       + (f" ({state.get('size')})." if valid else "."),
                       {**applied, "after": state})

    return Plan(f"create index {name} on {table}",
                _frame(rows, ["table", "index", "columns", "before", "after"]),
                statement + ";", notes, kind="postgres.create_index",
                target=target, executor=execute, verifier=verify,
                replan=lambda: create_index_concurrently(target, table, columns,
                                                         name),
                needs="needs CREATE on the table's schema and ownership of the "
                      "table (the remediation role).")


# An index build may take minutes: its own statement timeout, not the read one.
_BUILD_TIMEOUT_MS = 30 * 60 * 1000


def _index_state(target: Target, name: str, table: str,
                 columns: list[str]) -> dict[str, Any]:
    """Return whether ``name`` exists (valid/invalid) and any covering index."""
    with postgres.connect(target) as conn:
        own = postgres._query(conn, """
            SELECT i.indisvalid AS valid,
                   pg_size_pretty(pg_relation_size(c.oid)) AS size
              FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
             WHERE c.relname = %s""", [name])
        covering = postgres._query(conn, """
            SELECT c.relname AS index
              FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = to_regclass(%s) AND i.indisvalid
               AND (SELECT array_agg(a.attname::text ORDER BY k.n)
                      FROM unnest(i.indkey[0:%s - 1]) WITH ORDINALITY k(attnum, n)
                      JOIN pg_attribute a ON a.attrelid = i.indrelid
                                         AND a.attnum = k.attnum) = %s::text[]
             LIMIT 1""", [table, len(columns), columns])
    state: dict[str, Any] = {"state": "no index"}
    if own:
        state = {"state": "valid" if own[0]["valid"] else "invalid",
                 "size": own[0]["size"]}
    if covering:
        state["covering"] = covering[0]["index"]
    return state


def set_max_connections(target: Target, new_max: int) -> Plan:
    """Plan ``ALTER SYSTEM SET max_connections``; it needs a restart to apply."""
    with postgres.connect(target) as conn:
        setting = postgres._query(conn, """
            SELECT setting::int AS running, pending_restart
              FROM pg_settings WHERE name = 'max_connections'""")[0]
    if new_max <= 0:
        raise ParameterError(f"max_connections must be above 0, got {new_max}")
    rows = [] if new_max == setting["running"] else [{
        "setting": "max_connections", "before": setting["running"],
        "after": int(new_max), "takes effect": "after a restart"}]
    notes = ["ALTER SYSTEM writes postgresql.auto.conf; the running server keeps "
             "its value until restarted (a short outage): plan the restart.",
             "Each connection costs memory: PgBouncer in front of the database "
             "is usually the better fix.",
             "Managed databases (RDS, Cloud SQL) refuse ALTER SYSTEM: change the "
             "parameter group instead."]

    def execute(plan: Plan) -> dict[str, Any]:
        import psycopg

        with postgres.connect(target, read_only=False) as conn, \
                postgres.answer_within(conn, target.timeout_seconds):
            try:
                conn.execute(f"ALTER SYSTEM SET max_connections = {int(new_max)}")
            except psycopg.errors.InsufficientPrivilege as exc:
                raise PermissionDenied(f"Postgres refused ALTER SYSTEM: "
                                f"{str(exc).strip()}", target="postgres") from None
            conn.execute("SELECT pg_reload_conf()")
        return {"max_connections": int(new_max)}

    def verify(plan: Plan, applied: dict[str, Any]) -> Finding:
        with postgres.connect(target) as conn:
            after = postgres._query(conn, """
                SELECT setting::int AS running, pending_restart
                  FROM pg_settings WHERE name = 'max_connections'""")[0]
        return Finding("restart-required", Severity.WARNING,
                       f"max_connections is set to {new_max} in postgresql.auto.conf;"
                       f" the server still runs with {after['running']} until it "
                       "is restarted.", {**applied, "after": after})

    return Plan(f"set max_connections to {new_max} (restart needed)",
                _frame(rows, ["setting", "before", "after", "takes effect"]),
                f"ALTER SYSTEM SET max_connections = {int(new_max)};\n"
                "-- then restart Postgres", notes, kind="postgres.max_connections",
                target=target, executor=execute, verifier=verify,
                replan=lambda: set_max_connections(target, new_max),
                key_columns=["setting", "before", "after"],
                needs="needs a superuser (ALTER SYSTEM).")
