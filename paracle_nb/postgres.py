"""Read helpers for PostgreSQL, through psycopg 3.

Sessions opened here are read-only and carry a ``statement_timeout``, so a
runbook can neither change the database nor hang on it. That timeout is
the server's own, and a frozen backend never applies it: every query is
also watched from the client (:func:`answer_within`). A refusal at
connect time (no free slot) is raised as :class:`ConnectionRefused` with
the server's own message: for the pool-exhaustion runbook it is evidence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from paracle_nb.errors import (
    AuthenticationFailed,
    ConnectionRefused,
    ParameterError,
    PermissionDenied,
    TargetTimeout,
    TargetUnreachable,
)
from paracle_nb.target import Target

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

log = logging.getLogger(__name__)

APPLICATION_NAME = "paracle-nb"

# Messages with which the server refuses a connection for lack of slots.
_NO_SLOT = ("too many clients", "remaining connection slots are reserved",
            "too many connections")

#: Seconds the client waits past a query's own timeout before it cancels
#: the query, and again before it cuts a session the cancel did not free.
ANSWER_GRACE = 1.0

#: Client-side bound of a session opened without ``statement_timeout``.
DEFAULT_ANSWER_SECONDS = 30.0

_STATEMENT_TIMEOUT = re.compile(r"statement_timeout=(\d+)")


def connect(target: Target, *, statement_timeout_ms: int | None = None,
            read_only: bool = True) -> psycopg.Connection[Any]:
    """Open a read-only session to the target's database.

    ``read_only=False`` is for applying a confirmed remediation only
    (:mod:`paracle_nb.actions_postgres`).

    >>> with connect(target) as conn:  # doctest: +SKIP
    ...     connection_limits(conn)
    """
    import psycopg

    if not target.postgres_dsn:
        raise ParameterError("no `postgres_dsn` in the parameters", target="postgres")
    timeout_ms = statement_timeout_ms or int(target.timeout_seconds * 1000)
    options = (f"-c default_transaction_read_only={'on' if read_only else 'off'} "
               f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}")
    password = target.postgres_password.reveal() if target.postgres_password else None
    try:
        return psycopg.connect(
            target.postgres_dsn,
            password=password,
            connect_timeout=max(1, int(target.timeout_seconds)),
            application_name=APPLICATION_NAME,
            options=options,
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        raise _connect_error(exc, target) from None


def _connect_error(exc: Exception, target: Target) -> Exception:
    message = _libpq_reason(str(exc)) or repr(exc)
    where = _where(target.postgres_dsn or "")
    if any(marker in str(exc) for marker in _NO_SLOT):
        return ConnectionRefused(f"Postgres at {where} refused the connection",
                                 target="postgres", detail=_server_line(exc))
    if "timeout expired" in str(exc):
        return TargetTimeout(f"Postgres at {where} did not answer in time",
                             target="postgres")
    if "password authentication failed" in str(exc):
        return AuthenticationFailed(f"Postgres at {where} rejected the credentials",
                                    target="postgres", detail=_server_line(exc))
    return TargetUnreachable(f"Postgres at {where} is unreachable: {message}",
                             target="postgres")


def _libpq_reason(text: str) -> str:
    """Return why libpq failed, e.g. 'Connection refused', without its hints."""
    for line in text.splitlines():
        if "failed:" in line:
            return line.rsplit("failed:", 1)[1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def _server_line(exc: Exception) -> str:
    """Return the FATAL line the server sent, without libpq's prefix."""
    for line in str(exc).splitlines():
        if "FATAL" in line:
            return line[line.index("FATAL"):].strip()
    return str(exc).strip().splitlines()[-1]


def _where(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "(unparsable DSN)"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}" \
           f"/{parts.get('dbname', '')}"


def _query(conn: psycopg.Connection[Any], sql: str, params: Any = None
           ) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    try:
        with answer_within(conn, session_timeout(conn)), \
                conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied("Postgres refused: permission denied",
                               target="postgres",
                               detail=str(exc).strip().splitlines()[0]) from None
    except psycopg.errors.QueryCanceled as exc:
        raise TargetTimeout("query cancelled by statement_timeout",
                            target="postgres", detail=str(exc).strip()) from None
    except psycopg.errors.LockNotAvailable as exc:
        # Checked before OperationalError, its parent: the session is fine.
        raise TargetTimeout("query waited for a lock longer than lock_timeout",
                            target="postgres", detail=str(exc).strip()) from None
    except psycopg.OperationalError as exc:
        raise TargetUnreachable("lost the Postgres session", target="postgres",
                                detail=str(exc).strip()) from None


def session_timeout(conn: psycopg.Connection[Any]) -> float:
    """Return the ``statement_timeout`` the session was opened with, in seconds.

    Read from the options :func:`connect` gave the server, so asking costs
    no round trip to a server that may not answer.
    """
    options = conn.info.get_parameters().get("options", "")
    found = _STATEMENT_TIMEOUT.search(options)
    if found is None or int(found.group(1)) == 0:
        return DEFAULT_ANSWER_SECONDS
    return int(found.group(1)) / 1000


@contextlib.contextmanager
def answer_within(conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
    """Bound the calls made on ``conn`` inside the block, from the client.

    ``ANSWER_GRACE`` seconds after ``seconds``, the running query is
    cancelled; a backend that still does not answer (frozen, its host
    gone) has its session cut, so the blocked call returns. Either way the
    block raises :class:`TargetTimeout`, and a cut session stays unusable.

    >>> with answer_within(conn, 5.0):  # doctest: +SKIP
    ...     conn.execute("SELECT 1")
    """
    import psycopg

    watchdog = _Watchdog(conn, seconds)
    try:
        yield
    except psycopg.Error:
        if not watchdog.fired:
            raise
        raise TargetTimeout(f"query got no answer within {seconds:g}s "
                            f"({watchdog.fired})", target="postgres") from None
    finally:
        watchdog.stop()


class _Watchdog:
    """A thread that cancels, then cuts, a query that outlives its bound.

    ``fired`` says what it did: "" nothing, else "cancelled" or "session
    cut". The lock keeps it from acting on a query that has just ended, or
    on the next one.
    """

    def __init__(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        self.fired = ""
        self._conn = conn
        self._seconds = seconds
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="paracle-postgres-watchdog")
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        if self._done.wait(self._seconds + ANSWER_GRACE):
            return
        with self._lock:
            if self._done.is_set():
                return
            self.fired = "cancelled"
            log.info("Postgres query got no answer within %gs; cancelling it",
                     self._seconds)
            self._cancel()

        if self._done.wait(ANSWER_GRACE):
            return
        with self._lock:
            if self._done.is_set():
                return
            self.fired = "session cut"
            log.info("Postgres did not act on the cancel; cutting the session")
            self._cut()

    def _cancel(self) -> None:
        import psycopg

        try:
            self._conn.cancel_safe(timeout=ANSWER_GRACE)
        except (psycopg.Error, OSError) as exc:
            log.debug("cancel request failed: %s", exc)

    def _cut(self) -> None:
        import psycopg

        # Shutting the socket down (not closing our descriptor, which
        # psycopg owns) wakes the call blocked on it with an error.
        try:
            duplicate = socket.socket(fileno=os.dup(self._conn.fileno()))
        except (psycopg.Error, OSError) as exc:  # already closed
            log.debug("no socket to cut: %s", exc)
            return
        with duplicate:
            with contextlib.suppress(OSError):
                duplicate.shutdown(socket.SHUT_RDWR)


def connection_limits(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Return the slot limits and how many slots are in use right now."""
    rows = _query(conn, """
        SELECT current_setting('max_connections')::int AS max_connections,
               current_setting('superuser_reserved_connections')::int
                   AS superuser_reserved,
               (SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type = 'client backend')::int AS client_backends,
               (SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type <> 'client backend')::int
                   AS background_processes
    """)
    limits = dict(rows[0])
    limits["available_to_applications"] = max(
        0, limits["max_connections"] - limits["superuser_reserved"]
        - limits["client_backends"])
    return limits


def client_sessions(conn: psycopg.Connection[Any]) -> pd.DataFrame:
    """Return every client session except this runbook's own, one row each."""
    import pandas as pd

    rows = _query(conn, """
        SELECT pid, usename AS role, datname AS database,
               coalesce(nullif(application_name, ''), '(none)') AS application,
               client_addr::text AS client_addr,
               coalesce(state, 'unknown') AS state,
               extract(epoch FROM now() - state_change)::float AS state_age_s,
               extract(epoch FROM now() - xact_start)::float AS xact_age_s,
               extract(epoch FROM now() - backend_start)::float AS session_age_s,
               left(query, 200) AS last_query
          FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
         ORDER BY state_change
    """)
    columns = ["pid", "role", "database", "application", "client_addr", "state",
               "state_age_s", "xact_age_s", "session_age_s", "last_query"]
    return pd.DataFrame(rows, columns=columns)


def connections_by_state(sessions: pd.DataFrame) -> pd.DataFrame:
    """Return session counts by application and state, with the oldest age."""
    import pandas as pd

    columns = ["application", "role", "state", "connections", "oldest_state_age_s"]
    if sessions.empty:
        return pd.DataFrame(columns=columns)
    grouped = sessions.groupby(["application", "role", "state"], as_index=False).agg(
        connections=("pid", "count"), oldest_state_age_s=("state_age_s", "max"))
    return grouped.sort_values("connections", ascending=False, ignore_index=True)
