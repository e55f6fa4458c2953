"""Why are database queries slow: a missing index, lock waits, or a runaway?"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import available, clip_text
from paracle_nb.units import format_duration

if TYPE_CHECKING:
    import pandas as pd

# Statements EXPLAIN ANALYZE may run again: reads only.
_READ_START = re.compile(r"^\s*(select|with|values|table)\b", re.I)
_WRITES = re.compile(r"\b(insert|update|delete|merge|for\s+(no\s+key\s+)?update|"
                     r"for\s+(key\s+)?share|into)\b", re.I)
_PLACEHOLDER = re.compile(r"\$\d+")
# Server functions whose effect (or wait) ANALYZE would repeat.
# Shortcoming: a user-defined function with effects outside the database
# (a wrapper around dblink, say) is not recognised; the read-only
# transaction stops only writes to this database.
_SIDE_EFFECTS = re.compile(
    r"\b(pg_sleep\w*|pg_terminate_backend|pg_cancel_backend|pg_advisory\w*|"
    r"pg_try_advisory\w*|pg_notify|pg_reload_conf|set_config|dblink\w*|lo_\w+|"
    r"pg_read_\w*file|nextval|setval)\s*\(", re.I)
_COLUMN_OP = re.compile(
    r"(?:\b\w+\.)?\b([a-z_][a-z0-9_$]*)\)?\s*"
    r"(=\s*any\b|=|<>|!=|<=|>=|<|>|~~\*?|!~~\*?|\bis\b|\bin\b)", re.I)
_NOT_COLUMNS = {"and", "or", "not", "any", "all", "null", "true", "false",
                "text", "integer", "bigint", "numeric", "interval", "timestamp",
                "timestamptz", "date", "boolean", "now", "current_date"}


def _literals_blanked(text: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", text)


def statement_refusal(statement: str) -> str | None:
    """Return why a statement must not be run by EXPLAIN ANALYZE, or None."""
    bare = _literals_blanked(statement)
    if not _READ_START.match(bare) or _WRITES.search(bare):
        return "it is not a plain read, and EXPLAIN ANALYZE would execute it"
    if _PLACEHOLDER.search(bare):
        return ("it has $n placeholders (bound parameters): there are no values "
                "to run it with, and PostgreSQL 15 has no EXPLAIN (GENERIC_PLAN)")
    called = _SIDE_EFFECTS.search(bare)
    if called:
        return (f"it calls {called.group(1)}(), which EXPLAIN ANALYZE would run "
                "again")
    return None


def choose_statement(active: Any, explain_query: str, application: str, *,
                     max_age_s: float) -> dict[str, Any]:
    """Return the statement to explain, or why there is none.

    The ``explain_query`` parameter wins; otherwise the longest-running
    active query of ``application`` that is a plain read with literal
    values, not waiting on a lock, and younger than ``max_age_s`` (an older
    one would keep EXPLAIN ANALYZE busy as long as it has been running).
    """
    chosen: dict[str, Any] = {"statement": None, "source": None, "pid": None,
                              "query_id": None, "duration_s": None,
                              "skipped": None, "requested": bool(explain_query.strip())}
    if chosen["requested"]:
        refusal = statement_refusal(explain_query)
        if refusal:
            return {**chosen, "skipped": f"the explain_query parameter: {refusal}"}
        return {**chosen, "statement": explain_query.strip(), "source": "parameter"}
    if not available(active):
        return {**chosen, "skipped": "active queries are unavailable"}

    mine = active[active["application"] == application]
    if mine.empty:
        return {**chosen, "skipped": f"no active query of {application}"}
    reasons = []
    for row in mine.itertuples():
        refusal = _candidate_refusal(row, max_age_s)
        if refusal is None:
            return {**chosen, "statement": row.query, "source": "active query",
                    "pid": int(row.pid), "query_id": _int_or_none(row.query_id),
                    "duration_s": round(float(row.duration_s), 3)}
        reasons.append(f"pid {row.pid}: {refusal}")
    return {**chosen, "skipped": f"no active query of {application} can be "
                                 f"explained ({'; '.join(reasons[:3])})"}


def _candidate_refusal(row: Any, max_age_s: float) -> str | None:
    if row.wait_event_type == "Lock":
        return "it waits on a lock, and EXPLAIN ANALYZE would wait too"
    refusal = statement_refusal(str(row.query))
    if refusal:
        return refusal
    if row.duration_s > max_age_s:
        return (f"it has run for {format_duration(row.duration_s)}; EXPLAIN "
                "ANALYZE would run as long")
    return None


def _int_or_none(value: Any) -> int | None:
    return None if value is None or value != value else int(value)


def filter_columns(filter_text: str | None) -> list[str]:
    """Return the columns a plan's Filter compares, equality first.

    >>> filter_columns("((agent_id = 42) AND (status = 'failed'::text))")
    ['agent_id', 'status']
    """
    if not filter_text:
        return []
    equal: list[str] = []
    ranged: list[str] = []
    for match in _COLUMN_OP.finditer(_literals_blanked(filter_text)):
        column, operator = match.group(1), match.group(2).lower()
        if column.lower() in _NOT_COLUMNS:
            continue
        bucket = equal if operator.startswith(("=", "is", "in")) else ranged
        if column not in equal and column not in ranged:
            bucket.append(column)
    return equal + ranged


def plan_nodes(plan: Any) -> pd.DataFrame:
    """Return the nodes of an EXPLAIN (ANALYZE, BUFFERS) plan, top first."""
    import pandas as pd

    columns = ["depth", "node_type", "relation", "alias", "filter",
               "filter_columns", "actual_ms", "loops", "actual_rows",
               "rows_removed_by_filter", "shared_hit", "shared_read"]
    rows: list[dict[str, Any]] = []
    if available(plan) and plan and "Plan" in plan:
        _walk(plan["Plan"], 0, rows)
    return pd.DataFrame(rows, columns=columns)


def _walk(node: dict[str, Any], depth: int, rows: list[dict[str, Any]]) -> None:
    rows.append({
        "depth": depth,
        "node_type": node.get("Node Type"),
        "relation": node.get("Relation Name"),
        "alias": node.get("Alias"),
        "filter": node.get("Filter"),
        "filter_columns": filter_columns(node.get("Filter")),
        "actual_ms": node.get("Actual Total Time"),
        "loops": node.get("Actual Loops"),
        "actual_rows": node.get("Actual Rows"),
        "rows_removed_by_filter": node.get("Rows Removed by Filter"),
        "shared_hit": node.get("Shared Hit Blocks"),
        "shared_read": node.get("Shared Read Blocks"),
    })
    for child in node.get("Plans", []):
        _walk(child, depth + 1, rows)


def diagnose_slow_queries(active: Any, waits: Any, statements: Any, tables: Any,
                          chosen: Any, plan: Any, *, application: str,
                          slow_ms: float, long_query_s: float,
                          lock_wait_s: float) -> list[Finding]:
    """Return findings: lock contention, long-running queries, missing index."""
    findings = []
    contention = _lock_contention(waits, lock_wait_s)
    if contention:
        findings.append(contention)
    long_running = _long_running(active, long_query_s)
    if long_running:
        findings.append(long_running)
    findings.extend(_slow_statements(statements, tables, chosen, plan, slow_ms))

    if available(chosen) and chosen["skipped"] and (
            chosen["requested"] or _worth_explaining(active, statements,
                                                     application)):
        findings.append(Finding(
            "explain-skipped", Severity.INFO,
            f"No statement was explained: {chosen['skipped']}.",
            {"reason": chosen["skipped"]}, step="Explain a slow statement"))
    return findings


def _worth_explaining(active: Any, statements: Any, application: str) -> bool:
    slow = available(statements) and bool(statements["slow"].any())
    busy = available(active) and bool((active["application"] == application).any())
    return slow or busy


def _lock_contention(waits: Any, lock_wait_s: float) -> Finding | None:
    if not available(waits) or waits.empty:
        return None
    waiting = waits[waits["waited_s"] >= lock_wait_s]
    if waiting.empty:
        return None

    waiting_pids = sorted({int(p) for p in waiting["waiting_pid"]})
    # The root blocker waits for nobody; the others queue behind it.
    roots = [int(p) for p in waiting["blocking_pid"] if int(p) not in waiting_pids]
    ranked = Counter(roots or [int(p) for p in waiting["blocking_pid"]])
    blocker = ranked.most_common(1)[0][0]
    direct = waiting[waiting["blocking_pid"] == blocker]
    row = direct.iloc[0]
    # The lock the queue is really about: the one the holder's direct waiters want.
    lock_types = Counter(str(t) for t in direct["lock_type"].dropna())

    evidence: dict[str, Any] = {
        "waiting_pids": waiting_pids,
        "waiting": len(waiting_pids),
        "waiting_applications": sorted(set(waiting["waiting_application"])),
        "blocking_pid": blocker,
        "blocking_pids": sorted(ranked),
        "lock_type": lock_types.most_common(1)[0][0] if lock_types else None,
        "lock_mode": row["lock_mode"],
        "lock_types": sorted({str(t) for t in waiting["lock_type"].dropna()}),
        "max_wait_s": round(float(waiting["waited_s"].max()), 1),
        "blocker_state": row["blocking_state"],
        "blocker_state_age_s": _rounded(row["blocking_state_age_s"]),
        "blocker_xact_age_s": _rounded(row["blocking_xact_age_s"]),
        "blocker_application": row["blocking_application"],
        "blocker_backend_type": row["blocking_backend_type"],
        "blocker_query": str(row["blocking_query"])[:200],
    }
    idle_holder = str(row["blocking_state"]).startswith("idle in transaction")
    state = (f"{row['blocking_state']} for "
             f"{format_duration(row['blocking_state_age_s'])}")
    summary = (f"{len(waiting_pids)} session(s) wait on a {evidence['lock_type']} "
               f"lock held by pid {blocker} ({row['blocking_application']}, "
               f"{state}); longest wait {format_duration(evidence['max_wait_s'])}.")
    if idle_holder:
        summary += " The holder does nothing: its client never ended the transaction."
    return Finding("lock-contention",
                   Severity.CRITICAL if idle_holder else Severity.WARNING,
                   summary, evidence, step="Check lock waits")


def _rounded(value: Any) -> float | None:
    return None if value is None or value != value else round(float(value), 1)


def _long_running(active: Any, long_query_s: float) -> Finding | None:
    if not available(active) or active.empty:
        return None
    # A query waiting on a lock is a victim; lock contention names its cause.
    running = active[(active["duration_s"] >= long_query_s)
                     & (active["wait_event_type"] != "Lock")]
    if running.empty:
        return None
    top = running.iloc[0]
    evidence = {
        "pid": int(top["pid"]),
        "duration_s": round(float(top["duration_s"]), 1),
        "application": top["application"],
        "role": top["role"],
        "wait_event": top["wait_event"],
        "query": " ".join(str(top["query"]).split())[:200],
        "long_running": len(running),
        "pids": [int(p) for p in running["pid"]],
        "threshold_s": long_query_s,
    }
    summary = (f"{len(running)} query(ies) running longer than "
               f"{format_duration(long_query_s)}; the longest, pid {top['pid']} "
               f"of {top['application']}, for "
               f"{format_duration(evidence['duration_s'])}: "
               f"`{clip_text(evidence['query'], 80)}`")
    return Finding("long-running-query", Severity.WARNING, summary, evidence,
                   step="Check active queries")


def _slow_statements(statements: Any, tables: Any, chosen: Any, plan: Any,
                     slow_ms: float) -> list[Finding]:
    if not available(statements) or statements.empty:
        return []
    slow = statements[statements["slow"]]
    if slow.empty:
        return []
    missing = _missing_index(statements, slow, tables, chosen, plan, slow_ms)
    if missing:
        return [missing]
    top = slow.iloc[0]
    evidence = {"slow_statements": len(slow), "slow_ms": slow_ms,
                "mean_ms": round(float(top["mean_ms"]), 1),
                "calls": int(top["calls"]), "statement": _head(top["query"])}
    return [Finding(
        "slow-statements", Severity.WARNING,
        f"{len(slow)} statement(s) average over {slow_ms:g} ms, the slowest "
        f"{evidence['mean_ms']} ms over {evidence['calls']} calls; no sequential "
        "scan of a large table explains it.", evidence,
        step="Check slow statements")]


def _missing_index(statements: pd.DataFrame, slow: pd.DataFrame, tables: Any,
                   chosen: Any, plan: Any, slow_ms: float) -> Finding | None:
    if not available(tables) or tables.empty:
        return None
    large = tables[tables["large"] & (tables["seq_scan"] > 0)]
    if large.empty:
        return None

    scan, statement = _explained_scan(statements, large, chosen, plan, slow_ms)
    if scan is None:
        statement, table = _statement_reading(slow, large)
        if statement is None:
            return None
    else:
        table = str(scan["relation"])
    stats = large[large["table"] == table].iloc[0]

    evidence: dict[str, Any] = {
        "table": table,
        "rows": int(stats["rows"]),
        "seq_scan": int(stats["seq_scan"]),
        "seq_tup_read": int(stats["seq_tup_read"]),
        "idx_scan": int(stats["idx_scan"]),
        "filter_columns": list(scan["filter_columns"]) if scan is not None else None,
        "statement": _head(statement["query"]),
        "queryid": _int_or_none(statement["queryid"]),
        "mean_ms": round(float(statement["mean_ms"]), 1),
        "calls": int(statement["calls"]),
        "slow_ms": slow_ms,
    }
    if scan is not None:
        evidence.update({
            "plan_node": scan["node_type"],
            "plan_actual_ms": round(float(scan["actual_ms"]), 1),
            "plan_loops": int(scan["loops"]),
            "rows_removed_by_filter": _int_or_none(scan["rows_removed_by_filter"]),
            "execution_ms": round(float(plan.get("Execution Time", 0.0)), 1),
            "explained_pid": chosen.get("pid"),
        })
        columns = ", ".join(evidence["filter_columns"]) or "its filter"
        where = f"filtering on {columns}"
    else:
        where = "(no plan: EXPLAIN was skipped)"
    summary = (f"A slow statement ({evidence['mean_ms']} ms on average over "
               f"{evidence['calls']} calls) reads {table} ({evidence['rows']} rows) "
               f"by sequential scan {where}; {table} was scanned whole "
               f"{evidence['seq_scan']} times. An index would serve it.")
    return Finding("missing-index", Severity.WARNING, summary, evidence,
                   step="Check sequential scans")


def _explained_scan(statements: pd.DataFrame, large: pd.DataFrame, chosen: Any,
                    plan: Any, slow_ms: float) -> tuple[Any, Any]:
    """Return the plan's costliest Seq Scan of a large table and its statement."""
    nodes = plan_nodes(plan)
    if nodes.empty:
        return None, None
    scans = nodes[(nodes["node_type"] == "Seq Scan")
                  & nodes["relation"].isin(set(large["table"]))]
    if scans.empty:
        return None, None

    query_id = chosen.get("query_id") if available(chosen) else None
    same = statements[statements["queryid"] == query_id] if query_id else \
        statements.iloc[0:0]
    if not same.empty and same.iloc[0]["mean_ms"] > slow_ms:
        statement = same.iloc[0]
    else:
        statement, _ = _statement_reading(statements[statements["slow"]],
                                          large[large["table"].isin(
                                              set(scans["relation"]))])
    if statement is None:
        return None, None
    return scans.sort_values("actual_ms", ascending=False).iloc[0], statement


def _statement_reading(slow: pd.DataFrame, large: pd.DataFrame
                       ) -> tuple[Any, str | None]:
    """Return the slowest statement naming a large table, and that table."""
    for row in slow.itertuples():
        for table in large["table"]:
            name = str(table).rsplit(".", 1)[-1]
            if re.search(rf"\b{re.escape(name)}\b", str(row.query), re.I):
                return slow.loc[row.Index], str(table)
    return None, None


def _head(query: Any, limit: int = 200) -> str:
    return " ".join(str(query).split())[:limit]


def describe_active(active: Any, application: str) -> str:
    """Return one sentence on what is running now."""
    if not available(active):
        return "Active queries unavailable."
    if active.empty:
        return "No query is running right now (besides this runbook's)."
    mine = int((active["application"] == application).sum())
    waiting = int((active["wait_event_type"] == "Lock").sum())
    return (f"{len(active)} active query(ies), {mine} of {application}; the "
            f"longest has run for {format_duration(active['duration_s'].iloc[0])}; "
            f"{waiting} waiting on a lock.")


def describe_waits(waits: Any) -> str:
    """Return one sentence on lock waits."""
    if not available(waits):
        return "Lock waits unavailable."
    if waits.empty:
        return "No session waits on a lock."
    return (f"{waits['waiting_pid'].nunique()} session(s) wait on locks held by "
            f"pid(s) {', '.join(str(p) for p in sorted(set(waits['blocking_pid'])))}.")


def describe_statements(statements: Any, slow_ms: float) -> str:
    """Return one sentence on the slowest statements."""
    if not available(statements):
        return "Statement statistics unavailable."
    slow = int(statements["slow"].sum()) if not statements.empty else 0
    if not slow:
        return f"No statement averages over {slow_ms:g} ms."
    top = statements.iloc[0]
    return (f"{slow} statement(s) average over {slow_ms:g} ms; the slowest "
            f"{top['mean_ms']:.0f} ms over {int(top['calls'])} calls.")


def describe_tables(tables: Any) -> str:
    """Return one sentence on sequential scans of large tables."""
    if not available(tables):
        return "Table statistics unavailable."
    scanned = tables[tables["large"] & (tables["seq_scan"] > 0)]
    if scanned.empty:
        return "No large table has been read by sequential scan."
    top = scanned.iloc[0]
    return (f"{len(scanned)} large table(s) read by sequential scan; {top['table']} "
            f"({int(top['rows'])} rows) {int(top['seq_scan'])} times, "
            f"{int(top['idx_scan'])} index scans.")


def describe_plan(chosen: Any, plan: Any) -> str:
    """Return one sentence on the explained statement and its plan."""
    if not available(chosen):
        return "No statement chosen."
    if chosen["skipped"]:
        return f"Not explained: {chosen['skipped']}."
    if not available(plan) or not plan:
        return "EXPLAIN ANALYZE did not return a plan."
    nodes = plan_nodes(plan)
    scans = nodes[nodes["node_type"] == "Seq Scan"]
    source = (f"pid {chosen['pid']}'s query" if chosen["pid"] else
              "the explain_query parameter")
    text = (f"Plan of {source}: {plan.get('Execution Time', 0):.0f} ms "
            f"(rolled back).")
    if not scans.empty:
        relations = ", ".join(sorted(set(str(r) for r in scans["relation"])))
        text += f" {len(scans)} sequential scan(s) of {relations}."
    return text
