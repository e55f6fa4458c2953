"""A real PgBouncer in front of the lab's Postgres, on 127.0.0.1.

The guide's lasting fix for an exhausted pool is a pooler: many client
connections share a few server connections. The lab runs Debian's
PgBouncer in transaction pooling mode so a runbook can show the
connections before and after on the same server.

PgBouncer refuses to run as root; as root the lab runs it as the
``postgres`` user, like the Postgres server itself.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from paracle_nb.errors import MissingServerBinary, SandboxError
from paracle_nb.sandbox import procs
from paracle_nb.sandbox.postgres import APP_ROLE, DATABASE, PostgresServer

log = logging.getLogger(__name__)

_INSTALL_HINT = ("install PgBouncer (Debian/Ubuntu: apt-get install pgbouncer); "
                 "conda-forge has no PgBouncer, so the lab runs without it there")
_START_ATTEMPTS = 5


def pgbouncer_binary() -> Path:
    """Return the pgbouncer binary, or say how to install it."""
    found = procs.find_binary("pgbouncer", [Path("/usr/sbin")])
    if found is None:
        raise MissingServerBinary(f"pgbouncer not found: {_INSTALL_HINT}")
    return found


class PgBouncerServer(procs.LabServer):
    """PgBouncer pooling ``roles`` of a lab Postgres in transaction mode."""

    host = procs.LOOPBACK

    def __init__(self, postgres: PostgresServer, *, pool_size: int = 8,
                 roles: tuple[str, ...] = (APP_ROLE,),
                 max_client_conn: int = 400) -> None:
        self.postgres = postgres
        self.pool_size = pool_size
        self.roles = roles
        self.max_client_conn = max_client_conn
        self.port = 0
        self.work_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._token: int | None = None

    def __repr__(self) -> str:
        state = f"port={self.port} pid={self.pid}" if self._proc else "stopped"
        return f"<PgBouncerServer {self.host} {state}>"

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc else 0

    def dsn(self, role: str = APP_ROLE) -> str:
        """A libpq URI through the pooler, without the password."""
        return f"postgresql://{role}@{self.host}:{self.port}/{DATABASE}"

    def start(self) -> PgBouncerServer:
        """Write the config and user list, start PgBouncer, wait for its port."""
        if self._proc is not None:
            return self
        binary = pgbouncer_binary()
        self.work_dir = procs.make_work_dir("paracle-nb-pgbouncer-")
        self.work_dir.chmod(0o700)
        self._token = procs.register_started(
            f"PgBouncer lab server in {self.work_dir}", self.stop)
        try:
            self._spawn(binary)
        except BaseException:
            self.stop()
            raise
        log.info("PgBouncer on %s:%d (PID %d), pool size %d", self.host,
                 self.port, self.pid, self.pool_size)
        return self

    def stop(self) -> None:
        """Stop PgBouncer by its PID and delete its files."""
        if self._proc is not None:
            procs.stop_child(self._proc)
            self._proc = None
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None
        if self._token is not None:
            procs.unregister_started(self._token)
            self._token = None

    def connect(self, role: str = APP_ROLE, application_name: str = "paracle-api",
                **kwargs: Any) -> Any:
        """Open a client connection through the pooler; caller closes."""
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, user=role, dbname=DATABASE,
            password=self.postgres.password(role), autocommit=True,
            application_name=application_name, connect_timeout=5,
            sslmode="disable", gssencmode="disable", **kwargs)

    def _spawn(self, binary: Path) -> None:
        assert self.work_dir is not None
        users = "".join(f'"{role}" "{self.postgres.password(role)}"\n'
                        for role in self.roles)
        procs.write_private(self.work_dir / "userlist.txt", users)
        # Created by the server user first: a log file created by a failed
        # root start would keep the real start from opening it.
        (self.work_dir / "pgbouncer.log").touch()
        for path in self.work_dir.iterdir():
            procs.chown_to_server_user(path)
        procs.chown_to_server_user(self.work_dir)
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = procs.free_port()
            config = self.work_dir / "pgbouncer.ini"
            procs.write_private(config, self._config(port))
            procs.chown_to_server_user(config)
            self._proc = subprocess.Popen(
                [str(binary), str(config)], cwd=self.work_dir,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
                **procs.as_server_user())
            self.port = port
            try:
                procs.wait_for(lambda: self._answers(), timeout=10.0,
                               what="PgBouncer port")
                return
            except SandboxError:
                tail = procs.log_tail(self.work_dir / "pgbouncer.log")
                procs.stop_child(self._proc)
                self._proc = None
                if "in use" in tail and attempt < _START_ATTEMPTS:
                    continue
                raise SandboxError("pgbouncer did not start",
                                   target=f"{self.host}:{port}", detail=tail) from None

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise SandboxError("pgbouncer exited")
        return procs.port_accepts(self.port)

    def _config(self, port: int) -> str:
        return (
            "[databases]\n"
            f"{DATABASE} = host={self.postgres.host} port={self.postgres.port} "
            f"dbname={DATABASE}\n"
            "[pgbouncer]\n"
            f"listen_addr = {self.host}\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            "auth_file = userlist.txt\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            f"max_client_conn = {self.max_client_conn}\n"
            "server_reset_query =\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            "logfile = pgbouncer.log\n"
            "pidfile = pgbouncer.pid\n"
        )


def pooled_load(server: PgBouncerServer | PostgresServer, clients: int,
                queries: int = 5, query_ms: int = 20) -> dict[str, Any]:
    """Run ``clients`` concurrent clients, each with its own connection.

    All connect first; then each runs ``queries`` short transactions.
    Returns how many clients were served, refused, and the most server
    connections seen meanwhile.
    """
    import threading

    from paracle_nb.sandbox.postgres import PostgresServer

    pg = server if isinstance(server, PostgresServer) else server.postgres
    served, refused = [], []
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        with pg.admin_connect(DATABASE) as conn:
            conn.autocommit = True
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                    "'client backend' AND usename = %s", [APP_ROLE]).fetchone()
                peak[0] = max(peak[0], int(row[0]) if row else 0)
                time.sleep(0.01)

    # Every client connects (or is refused) before any starts its queries,
    # so all of them are there at once however slowly the threads start.
    everyone = threading.Barrier(clients)

    def client(n: int) -> None:
        conn = None
        try:
            conn = server.connect(application_name="paracle-api")
        except Exception as exc:  # a refusal is what the comparison shows
            refused.append(str(exc).strip().splitlines()[0])
        try:
            everyone.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass
        if conn is None:
            return
        with conn:
            for _ in range(queries):
                conn.execute("SELECT pg_sleep(%s)", [query_ms / 1000])
        served.append(n)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stop.set()
    watcher.join(5)
    return {"clients": clients, "served": len(served), "refused": len(refused),
            "refusal": refused[0] if refused else None,
            "peak_server_connections": peak[0]}
