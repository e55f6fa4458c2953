"""The read helpers against real servers: read-only, bounded, exact."""

import psycopg
import pytest

from paracle_nb import postgres, redis
from paracle_nb.errors import ConnectionRefused, TargetTimeout
from paracle_nb.sandbox import incidents
from paracle_nb.target import Target

pytestmark = pytest.mark.servers


@pytest.fixture()
def pg_target(postgres_server):
    return Target.from_parameters({
        "postgres_dsn": postgres_server.dsn("paracle_sre"),
        "postgres_password_file": str(postgres_server.password_file("paracle_sre")),
        "timeout_seconds": 1.0,
    })


@pytest.fixture()
def redis_target(redis_server):
    return Target.from_parameters({
        "redis_url": redis_server.url,
        "redis_password_file": str(redis_server.password_file),
    })


def test_postgres_session_is_read_only(pg_target):
    with postgres.connect(pg_target) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE should_not_exist (id int)")
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "1s"


def test_postgres_query_past_the_timeout_is_a_timeout(pg_target):
    with postgres.connect(pg_target) as conn:
        with pytest.raises(TargetTimeout, match="statement_timeout"):
            postgres._query(conn, "SELECT pg_sleep(3)")


def test_sessions_exclude_the_runbook_own(pg_target, postgres_server):
    with incidents.idle_connections(postgres_server, "helper-test", n=4):
        with postgres.connect(pg_target) as conn:
            sessions = postgres.client_sessions(conn)
            limits = postgres.connection_limits(conn)
    mine = sessions[sessions["application"] == "helper-test"]
    assert len(mine) == 4 and set(mine["state"]) == {"idle"}
    assert postgres.APPLICATION_NAME not in set(sessions["application"])
    assert limits["max_connections"] == 40 and limits["superuser_reserved"] == 3


def test_wrong_password_is_refused_with_a_clear_message(postgres_server, tmp_path):
    wrong = tmp_path / "pw"
    wrong.write_text("not-the-password")
    target = Target.from_parameters({
        "postgres_dsn": postgres_server.dsn("paracle_sre"),
        "postgres_password_file": str(wrong)})
    with pytest.raises(ConnectionRefused, match="rejected the credentials"):
        postgres.connect(target)


def test_keys_by_prefix_counts_exactly_with_scan(redis_target, redis_server):
    client = redis_server.client()
    try:
        client.flushall()
        written = incidents.seed_redis(redis_server, n=3000)
    finally:
        client.close()

    conn = redis.connect(redis_target)
    try:
        prefixes = redis.keys_by_prefix(redis_target, conn, batch=250)
        memory = redis.memory_info(redis_target, conn)
        stats = redis.eviction_stats(redis_target, conn)
    finally:
        conn.close()
    counts = dict(zip(prefixes["prefix"], prefixes["keys"], strict=True))
    assert counts == written
    assert prefixes["scanned_share"].iloc[0] == 1.0
    assert memory["maxmemory"] == 32 * 2**20
    assert stats["oom_rejected_writes"] == 0
