"""Reproduce Redis connection incidents on the lab Redis, for real.

A client flood up to ``maxclients`` (Redis refuses the next one), idle
connections nobody closes, and a Redis so busy that every client waits.
Each incident saves the settings it changes and puts them back on stop.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from typing import Any

import redis

from paracle_nb.errors import SandboxError
from paracle_nb.sandbox.redis_server import RedisServer

log = logging.getLogger(__name__)

WORKER_NAME = "paracle-api-worker"
MAX_CLIENTS_REFUSAL = "max number of clients reached"


def _command(*args: str) -> bytes:
    """Encode one command in RESP, as any client sends it."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@dataclasses.dataclass
class HeldClients:
    """Raw client connections the lab holds open, idle, as a leaky pool would."""

    rs: RedisServer
    name: str
    settings: dict[str, str]
    sockets: list[socket.socket] = dataclasses.field(default_factory=list)
    refusal: str | None = None
    maxclients: int | None = None
    opened_at: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def held(self) -> int:
        """Number of connections held open."""
        return len(self.sockets)

    def open_one(self, timeout: float = 5.0) -> str | None:
        """Open one named connection; return Redis's refusal if it refused."""
        sock = socket.create_connection((self.rs.host, self.rs.port),
                                        timeout=timeout)
        try:
            sock.sendall(_command("AUTH", self.rs.password)
                         + _command("CLIENT", "SETNAME", self.name))
        except OSError:
            pass  # a refused client may be closed before it is heard
        answer = _read_replies(sock, 2)
        if answer.startswith(b"+OK\r\n+OK\r\n"):
            self.sockets.append(sock)
            return None
        sock.close()
        text = answer.decode(errors="replace").strip().lstrip("-")
        if MAX_CLIENTS_REFUSAL not in text:
            raise SandboxError("Redis refused a lab client, but not for lack of "
                               "slots", target=self.rs.url, detail=text or "EOF")
        return text

    def close(self, count: int | None = None) -> None:
        """Close ``count`` connections (all by default), newest first."""
        for _ in range(len(self.sockets) if count is None else count):
            self.sockets.pop().close()

    def stop(self) -> None:
        """Close every connection and restore the settings changed."""
        self.close()
        restore_settings(self.rs, self.settings)
        log.info("released %s clients; restored %s", self.name,
                 ", ".join(self.settings))


def _read_replies(sock: socket.socket, count: int) -> bytes:
    data = b""
    try:
        while data.count(b"\r\n") < count:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def _save_settings(client: redis.Redis, names: tuple[str, ...]) -> dict[str, str]:
    saved = {}
    for name in names:
        value = dict(client.config_get(name)).get(name)
        saved[name] = value.decode() if isinstance(value, bytes) else str(value)
    return saved


def restore_settings(rs: RedisServer, settings: dict[str, str]) -> None:
    """Lab only: put settings back and reset the stats the incident left."""
    client = rs.client()
    try:
        for name, value in settings.items():
            client.config_set(name, value)
        client.config_resetstat()
    finally:
        client.close()


def flood_clients(rs: RedisServer, *, maxclients: int = 64,
                  name: str = WORKER_NAME, leave_free: int = 1) -> HeldClients:
    """Lower maxclients, open idle clients until Redis refuses one, free a few.

    Redis counts the refusal in ``rejected_connections``. With
    ``leave_free=1`` exactly one slot is free afterwards (for a runbook);
    with 0, every slot stays taken.
    """
    client = rs.client()
    try:
        settings = _save_settings(client, ("maxclients", "timeout"))
        client.config_set("maxclients", maxclients)
    finally:
        client.close()

    held = HeldClients(rs, name, settings, maxclients=maxclients)
    try:
        for _ in range(maxclients + 1):
            held.refusal = held.open_one()
            if held.refusal:
                break
        if not held.refusal:
            raise SandboxError(f"Redis accepted {maxclients + 1} clients with "
                               f"maxclients {maxclients}", target=rs.url)
        held.close(leave_free)
        # The freed slots count once Redis has seen those clients go.
        time.sleep(0.1)
    except BaseException:
        held.stop()
        raise
    log.info("Redis refused client %d (%s); holding %d", held.held + leave_free + 1,
             held.refusal, held.held)
    return held


def idle_clients(rs: RedisServer, *, count: int = 30, name: str = WORKER_NAME,
                 idle_for: float = 3.0) -> HeldClients:
    """Open ``count`` clients that never send another command, with timeout 0.

    Returns once they have been idle for ``idle_for`` seconds.
    """
    client = rs.client()
    try:
        settings = _save_settings(client, ("timeout",))
        client.config_set("timeout", 0)
    finally:
        client.close()

    held = HeldClients(rs, name, settings)
    try:
        for _ in range(count):
            refusal = held.open_one()
            if refusal:
                raise SandboxError("Redis refused an idle client", target=rs.url,
                                   detail=refusal)
    except BaseException:
        held.stop()
        raise
    time.sleep(idle_for)
    log.info("%d idle %s clients open for %.0f s", held.held, name, idle_for)
    return held


@dataclasses.dataclass
class SlowRedis:
    """Threads keeping Redis busy with DEBUG SLEEP, so every client waits."""

    rs: RedisServer
    sleep_s: float
    sleepers: int
    stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    threads: list[threading.Thread] = dataclasses.field(default_factory=list)
    commands: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def sleep_ms(self) -> float:
        return self.sleep_s * 1000

    def stop(self) -> None:
        """End the threads; each finishes its current sleep first."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=10.0 + self.sleep_s * self.sleepers)
        log.info("Redis no longer held busy (%d DEBUG SLEEP sent)", self.commands)


def slow_redis(rs: RedisServer, *, sleep_s: float = 0.1, sleepers: int = 2,
               max_seconds: float = 900.0) -> SlowRedis:
    """Keep Redis busy: ``sleepers`` clients send ``DEBUG SLEEP`` back to back.

    Redis runs commands one at a time, so while one sleeps every other
    client waits; with two sleepers there is always one queued, and a
    command waits about ``sleepers * sleep_s``. Bounded by ``max_seconds``.
    """
    slow = SlowRedis(rs, sleep_s, sleepers)
    probe = rs.client()
    try:
        probe.execute_command("DEBUG", "SLEEP", "0")
    except redis.ResponseError as exc:
        raise SandboxError("Redis refuses DEBUG; the lab's redis.conf needs "
                           "enable-debug-command local", target=rs.url,
                           detail=str(exc)) from None
    finally:
        probe.close()

    deadline = time.monotonic() + max_seconds
    for _ in range(sleepers):
        client = rs.client(socket_timeout=5.0 + sleep_s * sleepers,
                           client_name="lab-busy")
        thread = threading.Thread(target=_sleep_loop, args=(slow, client, deadline),
                                  name="lab-redis-busy", daemon=True)
        slow.threads.append(thread)
        thread.start()
    time.sleep(sleep_s)
    log.info("Redis held busy: %d clients sending DEBUG SLEEP %.2f", sleepers,
             sleep_s)
    return slow


def _sleep_loop(slow: SlowRedis, client: redis.Redis, deadline: float) -> None:
    try:
        while not slow.stopping.is_set() and time.monotonic() < deadline:
            client.execute_command("DEBUG", "SLEEP", str(slow.sleep_s))
            slow.commands += 1
    except redis.RedisError as exc:
        if not slow.stopping.is_set():
            log.warning("lab DEBUG SLEEP loop failed: %s", exc)
            slow.errors.append(str(exc))
    finally:
        client.close()


# Lab incidents: (put the lab into it, take the lab out of it).

def start_max_clients(lab: Any, **options: Any) -> HeldClients:
    """Redis at maxclients, one slot left (for the runbook)."""
    return flood_clients(lab.redis, **{"leave_free": 1, **options})


def start_max_clients_full(lab: Any, **options: Any) -> HeldClients:
    """Redis at maxclients, no slot left: the runbook is refused too."""
    return flood_clients(lab.redis, **{"leave_free": 0, **options})


def start_idle_connections(lab: Any, **options: Any) -> HeldClients:
    """Thirty clients sit idle and, with timeout 0, are never closed."""
    return idle_clients(lab.redis, **options)


def start_slow(lab: Any, **options: Any) -> SlowRedis:
    """Redis is held busy by DEBUG SLEEP: every client waits."""
    return slow_redis(lab.redis, **options)


def stop(lab: Any, incident: HeldClients | SlowRedis) -> None:
    """Take the lab's Redis out of an incident of this module."""
    incident.stop()
