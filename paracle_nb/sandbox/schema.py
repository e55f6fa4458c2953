"""Paracle's tables in the lab database, with data big enough to matter.

``agents`` and ``executions`` are what the API reads on every request. The
indexes the guide recommends (``agents(created_at)``,
``executions(agent_id, status)``) are left out on purpose: a lookup by agent
then scans the whole executions table, which is the slow-query incident.
"""

from __future__ import annotations

import logging
import time

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
    id          bigint PRIMARY KEY,
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


def seed_schema(pg: PostgresServer, *, agents: int = 2_000,
                executions: int = 300_000) -> dict[str, int]:
    """Create and fill the tables (once per server); return row counts."""
    started = time.monotonic()
    with pg.connect(APP_ROLE, application_name="paracle-migrate") as conn:
        conn.execute(TABLES)
        have = conn.execute("SELECT count(*) FROM executions").fetchone()[0]
        if have < executions:
            conn.execute(
                "INSERT INTO agents SELECT g, 'agent-' || g, 'team-' || (g %% 40),"
                " now() - g * interval '1 hour' FROM generate_series(1, %s) g"
                " ON CONFLICT DO NOTHING", [agents])
            conn.execute(
                "INSERT INTO executions SELECT g, 1 + (g * 7919) %% %s,"
                " (ARRAY['succeeded','succeeded','succeeded','failed','running'])"
                "[1 + g %% 5], (ARRAY['openai','anthropic'])[1 + g %% 2],"
                " 200 + g %% 3000, now() - g * interval '1 second',"
                " repeat(md5(g::text), 4)"
                " FROM generate_series(%s::bigint, %s::bigint) g",
                [agents, have + 1, executions])
            conn.execute("ANALYZE agents")
            conn.execute("ANALYZE executions")
    log.info("schema seeded in %.1fs", time.monotonic() - started)
    return {"agents": agents, "executions": executions}
