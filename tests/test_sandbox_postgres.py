"""The lab's PostgreSQL server, its process plumbing, and the pool incident."""

from __future__ import annotations

import stat
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from paracle_nb.errors import MissingServerBinary, SandboxError
from paracle_nb.sandbox import procs
from paracle_nb.sandbox.incidents import (
    RESERVED_SLOTS_REFUSAL,
    TOO_MANY_CLIENTS,
    exhaust_connections,
    idle_connections,
)
from paracle_nb.sandbox.postgres import PostgresServer, postgres_bindir

servers = pytest.mark.servers


def _app_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def _states(pg: PostgresServer, application: str) -> dict[str, int]:
    with pg.connect("paracle_sre", "test-observer") as conn:
        rows = conn.execute(
            "SELECT state, count(*) FROM pg_stat_activity"
            " WHERE application_name = %s GROUP BY state",
            [application],
        ).fetchall()
    return dict(rows)


def test_free_port_is_loopback_and_never_a_default() -> None:
    port = procs.free_port()
    assert port not in procs.DEFAULT_PORTS
    assert procs.port_is_free(port)
    with pytest.raises(SandboxError):
        procs.free_port("0.0.0.0")


def test_wait_for_gives_up_at_the_deadline() -> None:
    with pytest.raises(SandboxError, match="waiting for nothing"):
        procs.wait_for(lambda: False, timeout=0.1, what="nothing")
    assert procs.wait_for(lambda: 7, timeout=0.1, what="a number") == 7


def test_stop_pid_stops_a_process_we_started() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        # Until the child has exec'd, /proc shows our own command line.
        procs.wait_for(lambda: "sleep" in (procs.pid_command(child.pid) or ""),
                       timeout=10.0, what="sleep to start")
        assert procs.stop_pid(child.pid, grace=2.0, expect="sleep")
        assert not procs.pid_alive(child.pid)
    finally:
        procs.stop_child(child)


def test_bindir_override_that_lacks_binaries_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PARACLE_NB_PG_BINDIR", str(tmp_path))
    postgres_bindir.cache_clear()
    try:
        with pytest.raises(MissingServerBinary, match="apt-get install postgresql"):
            postgres_bindir()
    finally:
        monkeypatch.delenv("PARACLE_NB_PG_BINDIR")
        postgres_bindir.cache_clear()


@servers
def test_two_servers_from_one_template_start_and_stop_cleanly() -> None:
    first = PostgresServer(max_connections=15, superuser_reserved_connections=2)
    second = PostgresServer(max_connections=15, superuser_reserved_connections=2)
    with first, second:
        assert first.port != second.port
        assert first.data_dir != second.data_dir
        for pg in (first, second):
            assert procs.pid_alive(pg.pid)
            assert procs.port_accepts(pg.port)
            with pg.connect() as conn:
                row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
            assert row is not None
        running = [(pg.pid, pg.port, pg.work_dir) for pg in (first, second)]

    for pid, port, work_dir in running:
        assert not procs.pid_alive(pid)
        assert procs.port_is_free(port)
        assert work_dir is not None and not work_dir.exists()


@servers
def test_settings_are_as_asked(postgres_server: PostgresServer) -> None:
    with postgres_server.connect("paracle_monitor") as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                [
                    [
                        "max_connections",
                        "superuser_reserved_connections",
                        "listen_addresses",
                        "shared_preload_libraries",
                    ]
                ],
            ).fetchall()
        )
    assert settings == {
        "max_connections": "40",
        "superuser_reserved_connections": "3",
        "listen_addresses": "127.0.0.1",
        "shared_preload_libraries": "pg_stat_statements",
    }


@servers
def test_roles_have_production_attributes(postgres_server: PostgresServer) -> None:
    with postgres_server.connect("paracle_sre") as conn:
        roles = {
            name: (superuser, login, monitor)
            for name, superuser, login, monitor in conn.execute(
                "SELECT rolname, rolsuper, rolcanlogin,"
                " pg_has_role(rolname, 'pg_monitor', 'MEMBER')"
                " FROM pg_roles WHERE rolname LIKE 'paracle%'"
            )
        }
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'paracle'"
        ).fetchone()
    assert roles["paracle"] == (False, True, False)
    assert roles["paracle_sre"] == (True, True, True)
    assert roles["paracle_monitor"] == (False, True, True)
    assert owner == ("paracle",)


@servers
def test_tcp_requires_the_password(postgres_server: PostgresServer) -> None:
    pg = postgres_server
    assert ":" not in pg.dsn("paracle").split("@")[0].removeprefix("postgresql://")

    for password in ("not-the-password", None):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(
                host=pg.host,
                port=pg.port,
                user="paracle",
                dbname="paracle",
                password=password,
                connect_timeout=5,
                passfile="/dev/null",
            ).close()

    path = pg.password_file("paracle")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with psycopg.connect(pg.dsn("paracle"), password=path.read_text()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("paracle",)


@servers
def test_pg_stat_statements_sees_application_queries(
    postgres_server: PostgresServer,
) -> None:
    marker = uuid.uuid4().hex
    with postgres_server.connect() as conn:
        # Statements are grouped by a query id that ignores constants and
        # aliases; a fresh table gives this one an id of its own.
        conn.execute(f"CREATE TEMP TABLE probe_{marker} (x int)")
        conn.execute(f"SELECT x FROM probe_{marker}")
        with postgres_server.connect("paracle_monitor") as monitor:
            calls = monitor.execute(
                "SELECT sum(calls) FROM pg_stat_statements WHERE query LIKE %s",
                [f"SELECT x FROM probe_{marker}%"],
            ).fetchone()
    assert calls == (1,)


@servers
def test_flood_is_refused_and_visible_to_the_sre(
    postgres_server: PostgresServer,
) -> None:
    pg = postgres_server
    app = _app_name()

    with exhaust_connections(pg, application=app, idle_in_transaction=12) as flood:
        assert flood.refusal is not None
        assert RESERVED_SLOTS_REFUSAL in flood.refusal
        assert flood.refusal.startswith("FATAL: ")
        assert flood.by_state["idle in transaction"] == 12
        assert flood.by_state["idle"] == flood.held - 12

        # The break-glass role still gets in, through a reserved slot.
        assert _states(pg, app) == flood.by_state
        with pg.connect("paracle_sre", "test-observer") as conn:
            clients = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend'"
            ).fetchone()
        assert clients == (pg.max_connections - pg.superuser_reserved_connections + 1,)

    assert flood.held == 0
    assert _states(pg, app) == {}
    with pg.connect(application_name=app) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@servers
def test_filling_reserved_slots_refuses_even_the_sre(
    postgres_server: PostgresServer,
) -> None:
    pg = postgres_server
    app = _app_name()

    with exhaust_connections(pg, application=app, fill_reserved=True) as flood:
        assert flood.refusal is not None and TOO_MANY_CLIENTS in flood.refusal
        assert flood.superuser_sessions >= pg.superuser_reserved_connections
        with pytest.raises(psycopg.OperationalError, match=TOO_MANY_CLIENTS):
            pg.connect("paracle_sre", "test-observer").close()

    assert _states(pg, app) == {}


@servers
def test_idle_baseline_looks_healthy(postgres_server: PostgresServer) -> None:
    app = _app_name()
    with idle_connections(postgres_server, app, n=4) as baseline:
        assert baseline.refusal is None
        assert baseline.by_state == {"idle": 4}
        assert _states(postgres_server, app) == {"idle": 4}
    assert _states(postgres_server, app) == {}
