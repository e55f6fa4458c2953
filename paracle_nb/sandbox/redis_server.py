"""A throwaway Redis server shaped like Paracle's cache and session store.

Listens on 127.0.0.1 only, requires a random password, persists nothing,
and has a small ``maxmemory`` so out-of-memory incidents take a second.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from paracle_nb.errors import MissingServerBinary, SandboxError
from paracle_nb.redis import quiet_handshake
from paracle_nb.sandbox import procs

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "install Redis (Debian/Ubuntu: apt-get install redis-server; "
    "conda: conda install -c conda-forge redis-server)"
)
_START_ATTEMPTS = 5


def redis_server_binary() -> Path:
    """Return the ``redis-server`` executable on PATH, or say what to install."""
    found = procs.find_binary("redis-server")
    if found is None:
        raise MissingServerBinary("redis-server not found on PATH; " + _INSTALL_HINT)
    return found


class RedisServer(procs.LabServer):
    """A lab Redis server on 127.0.0.1 with a password and a memory limit.

    >>> with RedisServer(maxmemory="16mb") as rs:  # doctest: +SKIP
    ...     client = rs.client()
    ...     client.ping()
    True
    """

    host = procs.LOOPBACK

    def __init__(
        self,
        maxmemory: str = "32mb",
        maxmemory_policy: str = "noeviction",
        maxclients: int = 10000,
        base_dir: Path | str | None = None,
    ) -> None:
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.maxclients = maxclients
        self.base_dir = base_dir
        self.port = 0
        self.work_dir: Path | None = None
        self._password = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._token: int | None = None
        # Redis 7 refuses DEBUG unless allowed; the slow-Redis incident needs it.
        self._allow_debug = False

    def __repr__(self) -> str:
        state = f"port={self.port} pid={self.pid}" if self._proc else "stopped"
        return f"<RedisServer {self.host} {state}>"

    @property
    def pid(self) -> int:
        """PID of the ``redis-server`` process we spawned (0 when stopped)."""
        return self._proc.pid if self._proc else 0

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0, without the password."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def password(self) -> str:
        """The ``requirepass`` password, for the lab's own use; never log it."""
        if not self._password:
            raise SandboxError("the Redis server was never started")
        return self._password

    @property
    def password_file(self) -> Path:
        """A 0600 file holding only the password."""
        return self._dir / "password"

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self._dir / "redis.log"

    @property
    def _dir(self) -> Path:
        if self.work_dir is None:
            raise SandboxError("the Redis server was never started")
        return self.work_dir

    def start(self) -> RedisServer:
        """Write a config, spawn ``redis-server`` and wait for PING; returns self."""
        if self._proc is not None:
            return self
        binary = redis_server_binary()
        started = time.monotonic()

        # Private dir: config and password file hold the secret.
        self.work_dir = procs.make_work_dir("paracle-nb-redis-", self.base_dir)
        self.work_dir.chmod(0o700)
        self._token = procs.register_started(
            f"Redis lab server in {self.work_dir}", self.stop
        )
        self._password = secrets.token_urlsafe(24)
        procs.write_private(self.password_file, self._password)
        self._allow_debug = procs.binary_version(binary) >= (7,)
        try:
            self._spawn(binary)
        except BaseException:
            self.stop()
            raise

        logger.info(
            "Redis lab server on %s:%d (PID %d) ready in %.0f ms",
            self.host,
            self.port,
            self.pid,
            (time.monotonic() - started) * 1000,
        )
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and delete its files."""
        if self._proc is not None:
            procs.stop_child(self._proc)
            logger.info("Redis lab server on port %d stopped", self.port)
            self._proc = None
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None
        if self._token is not None:
            procs.unregister_started(self._token)
            self._token = None

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return an authenticated client with socket timeouts; caller closes."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "password": self.password,
            "decode_responses": False,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
        }
        options.update(quiet_handshake())
        options.update(kwargs)
        return redis.Redis(**options)

    def _spawn(self, binary: Path) -> None:
        """Start on a free port, retrying when the port was taken meanwhile."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = procs.free_port()
            config = self._dir / "redis.conf"
            procs.write_private(config, self._config(port))

            self._proc = subprocess.Popen(
                [str(binary), str(config)],
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.port = port
            try:
                procs.wait_for(self._answers_ping, timeout=10.0, what="Redis PING")
                return
            except _ServerExited:
                pass

            log_tail = procs.log_tail(self.log_file)
            self._proc = None
            if "already in use" in log_tail and attempt < _START_ATTEMPTS:
                logger.debug("port %d taken meanwhile; retrying", port)
                continue
            raise SandboxError(
                "redis-server did not start",
                target=f"{self.host}:{port}",
                detail=log_tail,
            )

    def _answers_ping(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            raise _ServerExited
        client = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False
        finally:
            client.close()

    def _config(self, port: int) -> str:
        settings = [
            ("bind", self.host),
            ("port", str(port)),
            ("protected-mode", "yes"),
            ("daemonize", "no"),
            ("save", '""'),
            ("appendonly", "no"),
            ("requirepass", self._password),
            ("maxmemory", self.maxmemory),
            ("maxmemory-policy", self.maxmemory_policy),
            ("maxclients", str(self.maxclients)),
            ("dir", str(self._dir)),
            ("logfile", str(self.log_file)),
        ]
        if self._allow_debug:
            settings.append(("enable-debug-command", "local"))
        return "".join(f"{key} {value}\n" for key, value in settings)


class _ServerExited(Exception):
    """redis-server exited while we waited for it to answer."""
