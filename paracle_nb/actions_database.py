"""Remediation of slow queries, planned: an index to add, backends to end.

Plans name exactly the table and columns, or the PIDs, the findings
proved; they change nothing.
"""

from __future__ import annotations

import re
from typing import Any

from paracle_nb.actions import Plan, _frame
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
