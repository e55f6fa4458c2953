"""Read helpers for slow queries: what runs now, what ran slowly, what scans.

They take a session from :func:`paracle_nb.postgres.connect` (read-only,
with a ``statement_timeout``). ``EXPLAIN ANALYZE`` runs the statement it
explains, so :func:`explain_statement` runs it inside a read-only
transaction that is always rolled back.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from paracle_nb.errors import ParacleError, PermissionDenied, TargetTimeout
from paracle_nb.postgres import _query, answer_within

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

log = logging.getLogger(__name__)

ACTIVE_COLUMNS = ["pid", "application", "role", "state", "wait_event_type",
                  "wait_event", "duration_s", "blocked_by", "query_id", "query"]
WAIT_COLUMNS = ["waiting_pid", "waiting_application", "lock_type", "lock_mode",
                "waited_s", "waiting_query", "blocking_pid", "blocking_application",
                "blocking_state", "blocking_state_age_s", "blocking_xact_age_s",
                "blocking_backend_type", "blocking_query"]
STATEMENT_COLUMNS = ["queryid", "role", "calls", "mean_ms", "total_ms", "max_ms",
                     "rows", "shared_blks_hit", "shared_blks_read", "query"]
TABLE_COLUMNS = ["table", "rows", "seq_scan", "seq_tup_read", "idx_scan",
                 "rows_per_seq_scan", "large"]

# Utility statements keep their literals (ALTER ROLE ... PASSWORD '...').
_PASSWORD = re.compile(r"(\bpassword\s*=?\s*)('(?:[^']|'')*'|[^\s']+)", re.I)


def scrub_passwords(text: Any) -> Any:
    """Return query text with any password literal replaced by ``'***'``."""
    if not isinstance(text, str):
        return text
    return _PASSWORD.sub(lambda m: m.group(1) + "'***'", text)


def _scrubbed(rows: list[dict[str, Any]], *columns: str) -> list[dict[str, Any]]:
    for row in rows:
        for column in columns:
            row[column] = scrub_passwords(row.get(column))
    return rows


def active_queries(conn: psycopg.Connection[Any]) -> pd.DataFrame:
    """Return the active queries of client backends, longest-running first.

    The runbook's own session is left out. ``blocked_by`` lists the PIDs
    whose locks the query waits for (``pg_blocking_pids``).
    """
    import pandas as pd

    rows = _query(conn, """
        SELECT pid, coalesce(nullif(application_name, ''), '(none)') AS application,
               usename AS role, state, wait_event_type, wait_event,
               extract(epoch FROM now() - query_start)::float AS duration_s,
               CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid)
                    ELSE '{}'::int[] END AS blocked_by,
               query_id, query
          FROM pg_stat_activity
         WHERE state = 'active' AND backend_type = 'client backend'
           AND pid <> pg_backend_pid()
         ORDER BY duration_s DESC
    """)
    return pd.DataFrame(_scrubbed(rows, "query"), columns=ACTIVE_COLUMNS)


def lock_waits(conn: psycopg.Connection[Any]) -> pd.DataFrame:
    """Return one row per session waiting on a lock and per session it waits for.

    With the lock it wants, how long it has waited, and the blocker's state
    and ages (an ``idle in transaction`` blocker holds its locks until its
    client commits or is ended).
    """
    import pandas as pd

    rows = _query(conn, """
        SELECT w.pid AS waiting_pid,
               coalesce(nullif(w.application_name, ''), '(none)')
                   AS waiting_application,
               l.locktype AS lock_type, l.mode AS lock_mode,
               extract(epoch FROM now() - w.query_start)::float AS waited_s,
               left(w.query, 200) AS waiting_query,
               b.pid AS blocking_pid,
               coalesce(nullif(b.application_name, ''), '(none)')
                   AS blocking_application,
               coalesce(b.state, 'unknown') AS blocking_state,
               extract(epoch FROM now() - b.state_change)::float
                   AS blocking_state_age_s,
               extract(epoch FROM now() - b.xact_start)::float
                   AS blocking_xact_age_s,
               b.backend_type AS blocking_backend_type,
               left(b.query, 200) AS blocking_query
          FROM pg_stat_activity w
          CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocker(pid)
          JOIN pg_stat_activity b ON b.pid = blocker.pid
          LEFT JOIN LATERAL (
                SELECT locktype, mode FROM pg_locks
                 WHERE pid = w.pid AND NOT granted LIMIT 1) l ON true
         WHERE w.wait_event_type = 'Lock' AND w.pid <> pg_backend_pid()
         ORDER BY waited_s DESC, w.pid, b.pid
    """)
    return pd.DataFrame(_scrubbed(rows, "waiting_query", "blocking_query"),
                        columns=WAIT_COLUMNS)


def slow_statements(conn: psycopg.Connection[Any], slow_ms: float, *,
                    limit: int = 10) -> pd.DataFrame:
    """Return the statements with the highest mean time from pg_stat_statements.

    The ``limit`` slowest of this database, each marked ``slow`` when its
    mean is over ``slow_ms``. EXPLAIN statements (runbooks' own) and
    statements nested in functions are left out.
    """
    import pandas as pd
    import psycopg

    toplevel = "AND s.toplevel" if conn.info.server_version >= 140000 else ""
    try:
        rows = _query(conn, f"""
            SELECT s.queryid, r.rolname AS role, s.calls,
                   s.mean_exec_time AS mean_ms, s.total_exec_time AS total_ms,
                   s.max_exec_time AS max_ms, s.rows,
                   s.shared_blks_hit, s.shared_blks_read, s.query
              FROM pg_stat_statements s
              LEFT JOIN pg_roles r ON r.oid = s.userid
             WHERE s.dbid = (SELECT oid FROM pg_database
                              WHERE datname = current_database())
               {toplevel}
               AND s.query !~* '^\\s*explain\\M'
             ORDER BY s.mean_exec_time DESC
             LIMIT %s
        """, [limit])
    except (psycopg.errors.UndefinedTable,
            psycopg.errors.ObjectNotInPrerequisiteState) as exc:
        raise ParacleError(
            "pg_stat_statements is not available in this database "
            "(needs shared_preload_libraries and CREATE EXTENSION)",
            target="postgres", detail=str(exc).strip().splitlines()[0]) from None

    frame = pd.DataFrame(_scrubbed(rows, "query"), columns=STATEMENT_COLUMNS)
    frame["slow"] = frame["mean_ms"] > slow_ms
    return frame


def table_scans(conn: psycopg.Connection[Any], large_table_rows: int
                ) -> pd.DataFrame:
    """Return sequential and index scans per table, most rows read first.

    ``large`` marks tables of at least ``large_table_rows`` live rows;
    ``rows_per_seq_scan`` near ``rows`` means each scan read the table.
    """
    import pandas as pd

    rows = _query(conn, """
        SELECT CASE WHEN schemaname = 'public' THEN relname
                    ELSE schemaname || '.' || relname END AS "table",
               n_live_tup AS rows, seq_scan, seq_tup_read,
               coalesce(idx_scan, 0) AS idx_scan
          FROM pg_stat_user_tables
         ORDER BY seq_tup_read DESC, relname
    """)
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS[:5])
    frame["rows_per_seq_scan"] = [
        round(read / scans) if scans else 0
        for read, scans in zip(frame["seq_tup_read"], frame["seq_scan"],
                               strict=True)]
    frame["large"] = frame["rows"] >= large_table_rows
    return frame


def explain_statement(conn: psycopg.Connection[Any], statement: str, *,
                      timeout_ms: int) -> dict[str, Any]:
    """Return ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` of one statement.

    The statement really runs: inside a read-only transaction that is
    rolled back, with ``timeout_ms`` as its statement timeout.
    """
    import psycopg
    from psycopg import sql

    text = statement.strip().rstrip(";").strip()
    if ";" in _without_literals(text):
        raise ParacleError("only one statement can be explained", target="postgres")
    explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + sql.SQL(text)

    log.debug("explaining a statement of %d characters", len(text))
    try:
        # statement_timeout is the server's: bound the transaction here too.
        with answer_within(conn, timeout_ms / 1000), \
                conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
                sql.Literal(int(timeout_ms))))
            cur.execute(explain)
            row = cur.fetchone()
    except psycopg.errors.QueryCanceled:
        raise TargetTimeout(f"EXPLAIN ANALYZE ran longer than {timeout_ms} ms "
                            "and was cancelled", target="postgres") from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied("the statement could not be explained: the "
                               "runbook's role may not read the table",
                               target="postgres",
                               detail=str(exc).strip().splitlines()[0]) from None
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError):
            raise
        raise ParacleError("the statement could not be explained",
                           target="postgres",
                           detail=str(exc).strip().splitlines()[0]) from None
    if row is None:
        raise ParacleError("EXPLAIN returned no plan", target="postgres")
    document = row[0]
    return dict(document[0] if isinstance(document, list) else document)


def explain_chosen(conn: psycopg.Connection[Any], chosen: dict[str, Any], *,
                   timeout_ms: int) -> dict[str, Any] | None:
    """Return the plan of the statement :func:`choose_statement` picked, if any.

    (``paracle_nb.diagnosis.slow_queries.choose_statement``.)
    """
    if not chosen.get("statement"):
        return None
    return explain_statement(conn, chosen["statement"], timeout_ms=timeout_ms)


def _without_literals(text: str) -> str:
    """Return SQL text with quoted strings and identifiers blanked out."""
    return re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", "''", text)
