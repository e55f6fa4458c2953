"""Paracle's tables in the lab database, with data big enough to matter.

``agents`` and ``executions`` are what the API reads on every request. The
indexes the guide recommends (``agents(created_at)``,
``executions(agent_id, status)``) are left out on purpose: the API's page
of an agent's recent failed executions then scans the whole executions
table twice, which is the slow-query incident.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg import sql

from paracle_nb.sandbox.postgres import APP_ROLE, PostgresServer

log = logging.getLogger(__name__)

TABLES = """
CREATE TABLE IF NOT EXISTS agents (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    owner       text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    id          bigint NOT NULL,
    agent_id    bigint NOT NULL,
    status      text NOT NULL,
    provider    text NOT NULL,
    tokens      integer NOT NULL,
    created_at  timestamptz NOT NULL,
    payload     text NOT NULL
);
"""

MISSING_INDEXES = {
    "idx_agents_created_at": "agents (created_at)",
    "idx_executions_agent_status": "executions (agent_id, status)",
}

#: The API's page of an agent's most recent failed executions, with the
#: total for the pager. Without ``executions(agent_id, status)`` each of
#: its two parts reads every row of the table.
RECENT_FAILED_EXECUTIONS = sql.SQL("""\
SELECT e.id, e.status, e.provider, e.tokens, e.created_at,
       (SELECT count(*) FROM executions t
         WHERE t.agent_id = {agent} AND t.status = 'failed') AS failed_total
  FROM executions e
 WHERE e.agent_id = {agent} AND e.status = 'failed'
 ORDER BY e.created_at DESC
 LIMIT 20""")

# Statuses cycle per agent, so every agent has failed executions.
_STATUSES = "ARRAY['succeeded','succeeded','succeeded','failed','running']"


def seed_schema(pg: PostgresServer, *, agents: int = 2_000,
                executions: int = 600_000) -> dict[str, int]:
    """Create and fill the tables (once per server); return row counts.

    The statistics of the seeding itself (its INSERTs, its scans) are reset
    afterwards, so a fresh lab shows a healthy database.
    """
    started = time.monotonic()
    with pg.connect(APP_ROLE, application_name="paracle-migrate") as conn:
        conn.execute(TABLES)
        counted = conn.execute("SELECT count(*) FROM executions").fetchone()
        have = int(counted[0]) if counted else 0
        if have < executions:
            _fill(conn, agents, have, executions)
    reset_statistics(pg)
    log.info("schema seeded in %.1fs", time.monotonic() - started)
    return {"agents": agents, "executions": executions}


def _fill(conn: psycopg.Connection[Any], agents: int, have: int,
          executions: int) -> None:
    conn.execute(
        "INSERT INTO agents SELECT g, 'agent-' || g, 'team-' || (g %% 40),"
        " now() - g * interval '1 hour' FROM generate_series(1, %s) g"
        " ON CONFLICT DO NOTHING", [agents])
    conn.execute(
        "INSERT INTO executions SELECT g, 1 + (g * 7919) %% %s,"
        f" ({_STATUSES})[1 + (g / %s) %% 5],"
        " (ARRAY['openai','anthropic'])[1 + g %% 2],"
        " 200 + g %% 3000, now() - g * interval '1 second',"
        " repeat(md5(g::text), 4)"
        " FROM generate_series(%s::bigint, %s::bigint) g",
        [agents, agents, have + 1, executions])

    # A bulk load builds its primary key once, after the rows are in.
    has_key = conn.execute(
        "SELECT 1 FROM pg_constraint WHERE conname = 'executions_pkey'").fetchone()
    if not has_key:
        conn.execute("ALTER TABLE executions ADD CONSTRAINT executions_pkey"
                     " PRIMARY KEY (id)")


def reset_statistics(pg: PostgresServer) -> None:
    """Lab only: forget statement and table statistics of the app database.

    Row counts are table statistics too; ANALYZE, untracked, brings them
    back, so ``pg_stat_user_tables`` still knows how big each table is.
    """
    with pg.admin_connect("paracle") as conn:
        conn.execute("SET pg_stat_statements.track_utility = off")
        conn.execute("SELECT pg_stat_reset()")
        conn.execute("ANALYZE agents")
        conn.execute("ANALYZE executions")
        conn.execute("SELECT pg_stat_statements_reset()")


def recent_failed_executions(agent_id: int) -> sql.Composed:
    """Return the API's slow statement for one agent, with literal values."""
    return RECENT_FAILED_EXECUTIONS.format(agent=sql.Literal(agent_id))
