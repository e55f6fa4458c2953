"""A throwaway PostgreSQL server shaped like Paracle's production database.

Each :class:`PostgresServer` gets a fresh data directory copied from one
prepared template per process, listens on 127.0.0.1 only, and holds the
roles the runbooks meet in production: ``paracle`` (the API's role),
``paracle_sre`` (break-glass superuser) and ``paracle_monitor``. The
template already has the roles, the database and pg_stat_statements, so a
server only needs fresh passwords: copying beats initdb plus setup.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from paracle_nb.errors import MissingServerBinary, SandboxError
from paracle_nb.sandbox import procs

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

#: Roles created in every lab server, with the attributes they get.
APP_ROLE = "paracle"
SRE_ROLE = "paracle_sre"
MONITOR_ROLE = "paracle_monitor"
# The runbooks' roles as deploy/postgres/roles.sql makes them: read-only
# diagnosis (MONITOR_ROLE) and remediation, which may also end sessions.
REMEDIATION_ROLE = "paracle_remediate"
DATABASE = "paracle"
BOOTSTRAP_SUPERUSER = "postgres"

BINDIR_ENV = "PARACLE_NB_PG_BINDIR"
TEMPLATE_ENV = "PARACLE_NB_PG_TEMPLATE"

_INSTALL_HINT = (
    "install PostgreSQL server binaries (Debian/Ubuntu: apt-get install "
    "postgresql-15; conda: conda install -c conda-forge postgresql), or point "
    f"{BINDIR_ENV} at the directory holding initdb, pg_ctl and postgres"
)
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_START_ATTEMPTS = 5
_TEMPLATE_MARKER = "paracle-nb-template"
_ROLE_ATTRIBUTES = {
    APP_ROLE: "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE",
    SRE_ROLE: "LOGIN SUPERUSER",
    MONITOR_ROLE: "LOGIN NOSUPERUSER IN ROLE pg_monitor",
    REMEDIATION_ROLE: "LOGIN NOSUPERUSER IN ROLE pg_monitor, pg_signal_backend",
}

_template_lock = threading.Lock()
_template: Path | None = None


@functools.cache
def postgres_bindir() -> Path:
    """Return the directory of initdb/pg_ctl/postgres, newest version first.

    ``PARACLE_NB_PG_BINDIR`` wins; otherwise ``pg_config --bindir``, PATH
    and ``/usr/lib/postgresql/*/bin`` are compared by ``pg_ctl --version``.
    """
    override = os.environ.get(BINDIR_ENV)
    if override:
        if _has_server_binaries(Path(override)):
            return Path(override)
        raise MissingServerBinary(
            f"{BINDIR_ENV}={override} lacks initdb, pg_ctl or postgres; "
            + _INSTALL_HINT
        )

    candidates: set[Path] = set()
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        if done.returncode == 0 and done.stdout.strip():
            candidates.add(Path(done.stdout.strip()))
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        candidates.add(Path(pg_ctl).resolve().parent)
    candidates.update(Path("/usr/lib/postgresql").glob("*/bin"))

    usable = [path for path in candidates if _has_server_binaries(path)]
    if not usable:
        raise MissingServerBinary(
            "PostgreSQL server binaries not found; " + _INSTALL_HINT
        )
    newest = max(usable, key=lambda p: procs.binary_version(p / "pg_ctl"))
    logger.debug("using PostgreSQL binaries in %s", newest)
    return newest


def template_data_dir() -> Path:
    """Return the prepared data directory servers are copied from.

    Made once per process; with ``PARACLE_NB_PG_TEMPLATE`` set, that
    directory holds it and survives the process, so later runs skip
    initdb and setup entirely.
    """
    global _template
    with _template_lock:
        if _template is not None and (_template / _TEMPLATE_MARKER).is_file():
            return _template

        persistent = os.environ.get(TEMPLATE_ENV)
        if persistent:
            data = Path(persistent).resolve()
            with procs.file_lock(data.with_name(data.name + ".lock")):
                _ensure_template(data)
        else:
            root = procs.make_work_dir("paracle-nb-pg-template-")
            procs.register_started(
                "PostgreSQL template", functools.partial(shutil.rmtree, root, True)
            )
            data = root / "data"
            _ensure_template(data)

        _template = data
        return data


class PostgresServer(procs.LabServer):
    """A lab PostgreSQL server on 127.0.0.1 with Paracle's roles and database.

    >>> with PostgresServer(max_connections=20) as pg:  # doctest: +SKIP
    ...     with pg.connect() as conn:
    ...         conn.execute("SELECT 1").fetchone()
    (1,)
    """

    host = procs.LOOPBACK

    def __init__(
        self,
        max_connections: int = 40,
        superuser_reserved_connections: int = 3,
        base_dir: Path | str | None = None,
    ) -> None:
        if superuser_reserved_connections >= max_connections:
            raise SandboxError(
                "superuser_reserved_connections must be below max_connections"
            )
        self.max_connections = max_connections
        self.superuser_reserved_connections = superuser_reserved_connections
        self.base_dir = base_dir
        self.port = 0
        self.pid = 0
        self.work_dir: Path | None = None
        self._passwords: dict[str, str] = {}
        self._token: int | None = None

    def __repr__(self) -> str:
        state = f"port={self.port} pid={self.pid}" if self.pid else "stopped"
        return f"<PostgresServer {self.host} {state}>"

    @property
    def data_dir(self) -> Path:
        """The server's data directory (inside its private work dir)."""
        return self._work_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The unix socket directory, reachable only by the server's OS user."""
        return self._work_dir / "socket"

    @property
    def log_file(self) -> Path:
        """The server log, inside the data directory."""
        return self.data_dir / "server.log"

    @property
    def _work_dir(self) -> Path:
        if self.work_dir is None:
            raise SandboxError("the PostgreSQL server was never started")
        return self.work_dir

    def start(self) -> PostgresServer:
        """Copy the template, start the server, set fresh passwords; returns self."""
        if self.pid:
            return self
        template = template_data_dir()
        started = time.monotonic()

        # A private work dir: data, socket and password files live inside.
        self.work_dir = procs.make_work_dir("paracle-nb-pg-", self.base_dir)
        self._token = procs.register_started(
            f"PostgreSQL lab server in {self.work_dir}", self.stop
        )
        try:
            procs.copy_tree(template, self.data_dir)
            self.socket_dir.mkdir(mode=0o700)
            procs.chown_to_server_user(self.socket_dir)
            self._write_hba()
            self.port = _pg_ctl_start(
                self.data_dir,
                self.socket_dir,
                self._settings(),
                cwd=self._work_dir,
            )
            self.pid = _postmaster_pid(self.data_dir)
            self._set_passwords()
        except BaseException:
            self.stop()
            raise

        logger.info(
            "PostgreSQL lab server on %s:%d (PID %d) ready in %.0f ms",
            self.host,
            self.port,
            self.pid,
            (time.monotonic() - started) * 1000,
        )
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown, then signals) and delete its files."""
        if self.work_dir is None:
            return

        # A start that failed half-way may still have left a postmaster.
        if not self.pid and (self.data_dir / "postmaster.pid").is_file():
            self.pid = _postmaster_pid(self.data_dir)
        if self.pid:
            _pg_ctl_stop(self.data_dir, self.pid, cwd=self.work_dir)
            logger.info("PostgreSQL lab server on port %d stopped", self.port)

        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir = None
        self.pid = 0
        if self._token is not None:
            procs.unregister_started(self._token)
            self._token = None

    def dsn(self, role: str = APP_ROLE, dbname: str = DATABASE) -> str:
        """Return a libpq URI for ``role``, without its password."""
        return f"postgresql://{role}@{self.host}:{self.port}/{dbname}"

    def password(self, role: str = APP_ROLE) -> str:
        """Return ``role``'s password, for the lab's own use; never log it."""
        try:
            return self._passwords[role]
        except KeyError:
            raise SandboxError(
                f"no password for role {role!r}; lab roles are "
                f"{', '.join(sorted(self._passwords))}"
            ) from None

    def password_file(self, role: str = APP_ROLE) -> Path:
        """Return a 0600 file holding only ``role``'s password."""
        path = self._work_dir / "secrets" / f"{role}.password"
        if not path.is_file():
            raise SandboxError(f"no password file for role {role!r}")
        return path

    def connect(
        self,
        role: str = APP_ROLE,
        application_name: str = "paracle-api",
        autocommit: bool = True,
        *,
        dbname: str = DATABASE,
        connect_timeout: int = 5,
        **kwargs: Any,
    ) -> psycopg.Connection[Any]:
        """Open a TCP connection as ``role`` with its password; caller closes."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=role,
            password=self.password(role),
            dbname=dbname,
            application_name=application_name,
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            gssencmode="disable",
            sslmode="disable",
            **kwargs,
        )

    def admin_connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """Connect as the bootstrap superuser over the unix socket (lab setup)."""
        return _socket_connect(self.socket_dir, self.port, dbname)

    def _write_hba(self) -> None:
        """Password auth over TCP; the socket maps only us to ``postgres``."""
        hba = (
            "# paracle-nb lab server\n"
            f"local all {BOOTSTRAP_SUPERUSER} peer map=lab\n"
            "host  all all 127.0.0.1/32 scram-sha-256\n"
        )
        users = {procs.current_os_user(), procs.server_user_name()}
        ident = "".join(f"lab {user} {BOOTSTRAP_SUPERUSER}\n" for user in users)
        for name, text in (("pg_hba.conf", hba), ("pg_ident.conf", ident)):
            path = self.data_dir / name
            path.write_text(text)
            path.chmod(0o600)
            procs.chown_to_server_user(path)

    def _settings(self) -> list[tuple[str, object]]:
        return _server_settings(
            self.host, self.max_connections, self.superuser_reserved_connections
        )

    def _set_passwords(self) -> None:
        """Give the template's roles fresh random passwords, hashed client-side.

        Only the SCRAM verifier travels, and utility statements are not
        tracked in this session, so pg_stat_statements never shows them.
        """
        self._passwords = {role: secrets.token_urlsafe(24) for role in _ROLE_ATTRIBUTES}
        with _socket_connect(
            self.socket_dir, self.port, "postgres", untracked=True
        ) as conn:
            for role, password in self._passwords.items():
                verifier = conn.pgconn.encrypt_password(
                    password.encode(), role.encode(), b"scram-sha-256"
                )
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(verifier.decode())
                    )
                )
        self._write_password_files()

    def _write_password_files(self) -> None:
        secrets_dir = self._work_dir / "secrets"
        secrets_dir.mkdir(mode=0o700)
        for role, password in self._passwords.items():
            procs.write_private(secrets_dir / f"{role}.password", password)


def _bin(name: str) -> Path:
    return postgres_bindir() / name


def _has_server_binaries(directory: Path) -> bool:
    return all(
        (directory / name).is_file() and os.access(directory / name, os.X_OK)
        for name in _SERVER_BINARIES
    )


def _server_settings(
    listen: str, max_connections: int, reserved: int
) -> list[tuple[str, object]]:
    return [
        ("listen_addresses", listen),
        ("unix_socket_permissions", "0700"),
        ("shared_preload_libraries", "pg_stat_statements"),
        ("max_connections", max_connections),
        ("superuser_reserved_connections", reserved),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("pg_stat_statements.track", "all"),
        ("track_activity_query_size", 4096),
        ("log_min_duration_statement", -1),
    ]


def _pg_ctl_start(
    data_dir: Path,
    socket_dir: Path,
    settings: list[tuple[str, object]],
    *,
    cwd: Path,
) -> int:
    """Run ``pg_ctl -w start`` on a free port, retrying collisions; return it."""
    log_file = data_dir / "server.log"
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = procs.free_port()
        options = " ".join(
            [
                f"-p {port}",
                f"-k {shlex.quote(str(socket_dir))}",
                *(f"-c {key}={value}" for key, value in settings),
            ]
        )
        done = procs.run_as_server_user(
            [
                _bin("pg_ctl"),
                *("-D", data_dir, "-l", log_file, "-o", options),
                *("-w", "-t", "30", "start"),
            ],
            cwd=cwd,
        )
        if done.returncode == 0:
            return port

        log_tail = procs.log_tail(log_file)
        if "already in use" in log_tail and attempt < _START_ATTEMPTS:
            logger.debug("port %d taken meanwhile; retrying", port)
            continue
        if "pg_stat_statements" in log_tail:
            raise MissingServerBinary(
                "pg_stat_statements is missing from this PostgreSQL "
                "installation; install the contrib modules (Debian: "
                "postgresql-15; conda-forge: postgresql)",
                target=str(data_dir),
                detail=log_tail,
            )
        raise SandboxError(
            "PostgreSQL did not start",
            target=f"{procs.LOOPBACK}:{port}",
            step="pg_ctl start",
            detail=log_tail or done.stderr.strip(),
        )
    raise AssertionError("unreachable")


def _pg_ctl_stop(data_dir: Path, pid: int, *, cwd: Path) -> None:
    """Fast shutdown with ``pg_ctl``; signal the postmaster if that fails."""
    done = procs.run_as_server_user(
        [_bin("pg_ctl"), "-D", data_dir, "-m", "fast", "-w", "stop"],
        cwd=cwd,
        timeout=30,
    )
    if done.returncode != 0:
        logger.warning("pg_ctl stop failed; signalling PID %d", pid)
    procs.stop_pid(pid, expect="postgres")


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def _socket_connect(
    socket_dir: Path, port: int, dbname: str, *, untracked: bool = False
) -> psycopg.Connection[Any]:
    options = "-c pg_stat_statements.track_utility=off" if untracked else ""
    return psycopg.connect(
        host=str(socket_dir),
        port=port,
        user=BOOTSTRAP_SUPERUSER,
        dbname=dbname,
        autocommit=True,
        connect_timeout=5,
        application_name="paracle-nb-lab",
        options=options,
    )


def _ensure_template(data: Path) -> None:
    """Make ``data`` a prepared template unless it already is one."""
    if (data / _TEMPLATE_MARKER).is_file():
        _check_template_version(data)
        return
    if data.exists() and any(data.iterdir()):
        raise SandboxError(
            f"not empty and not a paracle-nb template; empty it or unset "
            f"{TEMPLATE_ENV}",
            target=str(data),
        )

    started = time.monotonic()
    data.mkdir(parents=True, exist_ok=True)
    _initdb(data)
    _create_roles(data)
    (data / _TEMPLATE_MARKER).write_text(
        (data / "PG_VERSION").read_text().strip() + "\n"
    )
    logger.info(
        "PostgreSQL template prepared in %.0f ms", (time.monotonic() - started) * 1000
    )


def _initdb(data: Path) -> None:
    """Initialise ``data`` (fast: no fsync, trust, C locale)."""
    data.chmod(0o700)
    procs.chown_to_server_user(data)

    done = procs.run_as_server_user(
        [
            _bin("initdb"),
            *("-D", data, "-U", BOOTSTRAP_SUPERUSER, "-A", "trust"),
            *("-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"),
        ],
        cwd=data.parent,
        timeout=120,
    )
    if done.returncode != 0:
        raise SandboxError(
            "initdb failed for the lab's template data directory",
            target=str(data),
            step="initdb",
            detail=done.stderr.strip(),
        )


def _create_roles(data: Path) -> None:
    """Start the template once, socket only, to add roles, database, extension.

    The roles get no password here; each server sets its own.
    """
    work = procs.make_work_dir("paracle-nb-pg-setup-")
    socket_dir = work / "socket"
    socket_dir.mkdir(mode=0o700)
    procs.chown_to_server_user(socket_dir)
    try:
        port = _pg_ctl_start(data, socket_dir, _server_settings("", 10, 3), cwd=work)
        try:
            with _socket_connect(socket_dir, port, "postgres", untracked=True) as conn:
                for role, attributes in _ROLE_ATTRIBUTES.items():
                    conn.execute(
                        sql.SQL("CREATE ROLE {} {}").format(
                            sql.Identifier(role), sql.SQL(attributes)
                        )
                    )
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(DATABASE), sql.Identifier(APP_ROLE)
                    )
                )
            with _socket_connect(socket_dir, port, DATABASE, untracked=True) as conn:
                conn.execute("CREATE EXTENSION pg_stat_statements")
        finally:
            _pg_ctl_stop(data, _postmaster_pid(data), cwd=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # Servers start with empty statistics and an empty log.
    for leftover in [data / "server.log", data / "postmaster.opts"]:
        leftover.unlink(missing_ok=True)
    for stats in (data / "pg_stat").iterdir():
        stats.unlink()


def _check_template_version(data: Path) -> None:
    wanted = procs.binary_version(_bin("pg_ctl"))
    have = (data / "PG_VERSION").read_text().strip()
    if wanted and str(wanted[0]) != have:
        raise SandboxError(
            f"template data directory is PostgreSQL {have} but the binaries are "
            f"{wanted[0]}; empty it or unset {TEMPLATE_ENV}",
            target=str(data),
        )
