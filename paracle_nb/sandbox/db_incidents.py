"""Reproduce slow-database incidents on the lab Postgres, for real.

Each incident runs real sessions named like the API's: the statement
missing an index runs over and over; a transaction left open holds a row
lock that others queue behind; a report runs for minutes. Every session
is bounded in time, and stopping cancels what runs, closes every session
and waits for its backend to exit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from paracle_nb.errors import SandboxError
from paracle_nb.sandbox import procs, schema
from paracle_nb.sandbox.postgres import APP_ROLE, SRE_ROLE, PostgresServer

log = logging.getLogger(__name__)

APPLICATION = "paracle-api"

#: The open transaction's row, and what the lock-contention sessions do to it.
LOCKED_EXECUTION = 4242
_HOLD_ROW = "UPDATE executions SET status = 'running' WHERE id = %s"
_WAIT_FOR_ROW = "UPDATE executions SET status = 'failed' WHERE id = %s"

#: A report over every agent that waits before it answers.
REPORT_QUERY = sql.SQL("""\
SELECT a.owner, count(*) AS agents, max(a.created_at) AS newest
  FROM agents a CROSS JOIN pg_sleep({seconds}) AS pause
 GROUP BY a.owner
 ORDER BY agents DESC""")


@dataclasses.dataclass
class Sessions:
    """Lab sessions running statements in threads, until :meth:`stop`."""

    pg: PostgresServer
    application: str
    connections: list[psycopg.Connection[Any]] = dataclasses.field(
        default_factory=list)
    threads: list[threading.Thread] = dataclasses.field(default_factory=list)
    stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    completed: int = 0
    durations_ms: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def pids(self) -> list[int]:
        """Backend PIDs of the sessions (pg_stat_activity.pid)."""
        return [conn.info.backend_pid for conn in self.connections
                if not conn.closed]

    @property
    def mean_ms(self) -> float | None:
        """Mean duration of the statements completed so far, client-side."""
        with self._lock:
            done = list(self.durations_ms)
        return round(sum(done) / len(done), 1) if done else None

    def open(self, role: str = APP_ROLE, *, autocommit: bool = True,
             **options: Any) -> psycopg.Connection[Any]:
        conn = self.pg.connect(role, self.application, autocommit=autocommit,
                               **options)
        self.connections.append(conn)
        return conn

    def run(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, *args),
                                  name=f"lab-{self.application}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _guarded(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        except psycopg.Error as exc:
            if not self.stopping.is_set():
                log.warning("lab session failed: %s", exc)
                with self._lock:
                    self.errors.append(str(exc).strip())

    def record(self, duration_ms: float) -> None:
        with self._lock:
            self.completed += 1
            self.durations_ms.append(duration_ms)

    def stop(self, wait: float = 10.0) -> None:
        """Cancel what runs, close every session, wait for the backends to exit."""
        self.stopping.set()
        pids = self.pids
        for conn in self.connections:
            if not conn.closed:
                conn.cancel_safe(timeout=2.0)
        for thread in self.threads:
            thread.join(timeout=wait)
        for conn in self.connections:
            conn.close()
        if wait and pids:
            procs.wait_for(lambda: not any(procs.pid_alive(p) for p in pids),
                           timeout=wait, what=f"{len(pids)} lab backends to exit")
        log.info("stopped %d lab session(s) of %s", len(pids), self.application)


def slow_queries(pg: PostgresServer, *, sessions: int | None = None,
                 max_queries: int = 5_000, max_seconds: float = 900.0,
                 warm_up: int = 6) -> Sessions:
    """Run the API's unindexed statement from several sessions, over and over.

    Each session sends the statement with literal values (as many drivers
    do), so ``pg_stat_activity`` shows a statement one can EXPLAIN. By
    default three sessions per CPU keep the server busy, as a loaded API
    would, whatever the machine. Returns once ``warm_up`` statements have
    completed, so pg_stat_statements has their times.
    """
    sessions = sessions or busy_sessions()
    schema.reset_statistics(pg)
    lab = Sessions(pg, APPLICATION)
    deadline = time.monotonic() + max_seconds
    try:
        for number in range(sessions):
            lab.run(_repeat_slow_statement, lab, lab.open(), number,
                    max(1, max_queries // sessions), deadline)
        procs.wait_for(lambda: lab.completed >= warm_up or bool(lab.errors),
                       timeout=60.0, what=f"{warm_up} slow statements")
        if lab.errors:
            raise SandboxError("the slow statement failed", detail=lab.errors[0])
    except BaseException:
        lab.stop(wait=5.0)
        raise
    log.info("slow queries running in %d sessions, %.0f ms each so far",
             sessions, lab.mean_ms or 0)
    return lab


def busy_sessions() -> int:
    """Return three sessions per usable CPU, at least 4 and at most 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 2
    return min(16, max(4, 3 * cpus))


def _repeat_slow_statement(lab: Sessions, conn: psycopg.Connection[Any],
                           number: int, count: int, deadline: float) -> None:
    for i in range(count):
        if lab.stopping.is_set() or time.monotonic() > deadline:
            return
        agent = 1 + (number * 397 + i * 31) % 2_000
        started = time.monotonic()
        conn.execute(schema.recent_failed_executions(agent)).fetchall()
        lab.record((time.monotonic() - started) * 1000)


@dataclasses.dataclass
class LockContention:
    """An open transaction holding a row lock, and the sessions queued on it."""

    sessions: Sessions
    blocker_pid: int
    waiting_pids: list[int]
    row_id: int

    def stop(self) -> None:
        self.sessions.stop()


def lock_contention(pg: PostgresServer, *, waiters: int = 3,
                    row_id: int = LOCKED_EXECUTION, waited: float = 2.0,
                    max_seconds: float = 900.0) -> LockContention:
    """Hold a row lock in a transaction left idle; queue ``waiters`` behind it.

    The holder updated the row and never committed (``idle in
    transaction``); the waiters' updates of the same row wait on its lock
    until they time out (``max_seconds``) or the incident is stopped. All of
    it is rolled back: the row is unchanged afterwards. Returns once the
    waiters have waited ``waited`` seconds.
    """
    schema.reset_statistics(pg)
    lab = Sessions(pg, APPLICATION)
    timeout = f"-c lock_timeout={int(max_seconds * 1000)}"
    try:
        holder = lab.open(autocommit=False,
                          options=f"-c idle_in_transaction_session_timeout="
                                  f"{int(max_seconds * 1000)}")
        holder.execute(_HOLD_ROW, [row_id])
        blocker_pid = holder.info.backend_pid

        waiting = []
        for _ in range(waiters):
            conn = lab.open(autocommit=False, options=timeout)
            waiting.append(conn.info.backend_pid)
            lab.run(_update_locked_row, conn, row_id)
        _wait_until_waiting(pg, waiting)
        time.sleep(waited)
    except BaseException:
        lab.stop(wait=5.0)
        raise
    log.info("pid %d holds row %d; pids %s wait on it", blocker_pid, row_id,
             waiting)
    return LockContention(lab, blocker_pid, waiting, row_id)


def _update_locked_row(conn: psycopg.Connection[Any], row_id: int) -> None:
    try:
        conn.execute(_WAIT_FOR_ROW, [row_id])
    finally:
        if not conn.closed:
            conn.rollback()


def _wait_until_waiting(pg: PostgresServer, pids: list[int]) -> None:
    with pg.connect(SRE_ROLE, "paracle-nb-lab") as observer:
        procs.wait_for(
            lambda: _count(observer, "SELECT count(*) FROM pg_stat_activity"
                           " WHERE pid = ANY(%s) AND wait_event_type = 'Lock'",
                           [pids]) == len(pids),
            timeout=10.0, what=f"{len(pids)} sessions to wait on the row lock")


def _count(conn: psycopg.Connection[Any], query: str, params: list[Any]) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


@dataclasses.dataclass
class LongRunningQuery:
    """A report that runs for minutes unless it is cancelled."""

    sessions: Sessions
    pid: int
    seconds: float

    def stop(self) -> None:
        self.sessions.stop()


def long_running_query(pg: PostgresServer, *, seconds: float = 600.0,
                       running: float = 2.0) -> LongRunningQuery:
    """Start a report query that takes ``seconds`` to answer.

    Returns once it has been running for ``running`` seconds.
    """
    schema.reset_statistics(pg)
    lab = Sessions(pg, APPLICATION)
    try:
        conn = lab.open(options=f"-c statement_timeout={int(seconds * 1000) + 5000}")
        lab.run(_run_report, lab, conn, seconds)
        pid = conn.info.backend_pid
        with pg.connect(SRE_ROLE, "paracle-nb-lab") as observer:
            procs.wait_for(
                lambda: _count(observer, "SELECT count(*) FROM pg_stat_activity"
                               " WHERE pid = %s AND state = 'active'"
                               " AND wait_event = 'PgSleep'", [pid]) == 1,
                timeout=10.0, what="the report query to run")
        time.sleep(running)
    except BaseException:
        lab.stop(wait=5.0)
        raise
    log.info("report query running in pid %d for up to %.0f s", pid, seconds)
    return LongRunningQuery(lab, pid, seconds)


def _run_report(lab: Sessions, conn: psycopg.Connection[Any],
                seconds: float) -> None:
    started = time.monotonic()
    report = REPORT_QUERY.format(seconds=sql.Literal(round(seconds, 3)))
    conn.execute(report).fetchall()
    lab.record((time.monotonic() - started) * 1000)


def heal(pg: PostgresServer, incident: Any) -> None:
    """Stop an incident's sessions, then forget the statistics it left."""
    incident.stop()
    schema.reset_statistics(pg)


# Lab incidents: (put the lab into it, take the lab out of it).

def start_slow_queries(lab: Any, **options: Any) -> Sessions:
    """API sessions run an unindexed lookup of executions over and over."""
    return slow_queries(lab.postgres, **options)


def start_lock_contention(lab: Any, **options: Any) -> LockContention:
    """An idle-in-transaction session holds a row lock others wait on."""
    return lock_contention(lab.postgres, **options)


def start_long_running_query(lab: Any, **options: Any) -> LongRunningQuery:
    """One API session runs a statement for minutes."""
    return long_running_query(lab.postgres, **options)


def stop(lab: Any, incident: Sessions | LockContention | LongRunningQuery) -> None:
    """Take the lab's Postgres out of an incident of this module."""
    heal(lab.postgres, incident)
