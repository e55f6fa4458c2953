"""A small instrumented HTTP service standing in for the Paracle API.

Per ``POST /v1/agents/run`` it does what the real API does: a Redis cache
read and write (``cache:`` keys with a TTL), a lookup of the agent and its
executions in Postgres, and one call to an LLM provider bounded by
``LLM_TIMEOUT``. A fixed pool of workers serves the requests, so too many
at once queue for real. ``/metrics`` exposes the request histogram, the
request counter, the LLM call histogram and the in-flight gauge on the
service's own registry; ``/health`` checks Postgres and Redis.

Every request writes logfmt lines like the API's, handed to ``log_sink``
together with the pod that "served" it, round-robin over ``pods()``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import itertools
import json
import logging
import queue
import random
import secrets
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psycopg
import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from paracle_nb.errors import SandboxError
from paracle_nb.sandbox import procs, schema

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

RUN_PATH = "/v1/agents/run"
HEALTH_PATH = "/health"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAULTS = ("slow-db",)

# The healthy lookups go by primary key. In the slow-db fault the run also
# reads the agent's recent failed executions (schema.RECENT_FAILED_EXECUTIONS),
# which seq-scans while executions(agent_id, status) has no index.
AGENT_BY_ID = "SELECT id, name, owner FROM agents WHERE id = %s"
EXECUTION_BY_ID = ("SELECT id, status, provider, created_at FROM executions "
                   "WHERE id = %s")

_LLM_PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
# A lab value, not a credential; sent to the lab's providers only.
_LAB_KEY = "lab-key-not-a-secret"


@dataclasses.dataclass
class ApiConfig:
    """The API's settings, named after the env vars the deployment sets."""

    llm_timeout: float = 1.5  # LLM_TIMEOUT, seconds
    default_provider: str = "openai"  # DEFAULT_LLM_PROVIDER
    workers: int = 12  # WORKERS x replicas
    cache_ttl: int = 300  # CACHE_TTL, seconds
    agents: int = 2_000  # agent ids requests pick from
    queue_timeout: float = 30.0  # a request waits this long for a worker
    max_in_flight: int = 512  # beyond this, requests are refused at once


class ApiService(procs.LabServer):
    """The API stand-in on 127.0.0.1; start, fault switches, stop.

    ``connect_db`` opens one Postgres session as the API's role;
    ``redis_client`` is the API's Redis client; ``providers`` maps a
    provider name to its base URL.
    """

    host = procs.LOOPBACK

    def __init__(self, connect_db: Callable[[], psycopg.Connection[Any]],
                 redis_client: redis.Redis, providers: Mapping[str, str], *,
                 config: ApiConfig | None = None,
                 pods: Callable[[], list[str]] | None = None,
                 log_sink: Callable[[str, str], None] | None = None,
                 settings: Callable[[], object] | None = None,
                 api_keys: Callable[[str], str | None] | None = None) -> None:
        self.config = config or ApiConfig()
        self.providers = dict(providers)
        self.faults: set[str] = set()
        self.port = 0
        self.recent_lines: deque[str] = deque(maxlen=2000)
        self._redis = redis_client
        self._db = _SessionPool(connect_db, self.config.workers)
        self._pods = pods or (lambda: ["paracle-api"])
        self._sink = log_sink
        self._raise_hook: Callable[[], object] | None = None
        # Reads and checks the API's settings (its ConfigMap) per request,
        # and the provider key the API holds (its Secret); see live.py.
        self._settings = settings
        self._api_keys = api_keys
        self.in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._workers = threading.BoundedSemaphore(self.config.workers)
        self._next_pod = itertools.count()
        self._random = random.Random(7)
        self._metrics = _Metrics()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"port={self.port}" if self._httpd else "stopped"
        return f"<ApiService {state} faults={sorted(self.faults)}>"

    # -- life cycle --------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``; the service must be started."""
        if self._httpd is None:
            raise SandboxError("the API stand-in is not started", target="api")
        return f"http://{self.host}:{self.port}"

    @property
    def registry(self) -> CollectorRegistry:
        """The service's own metrics registry (what ``/metrics`` exposes)."""
        return self._metrics.registry

    def start(self) -> Self:
        """Listen on a free loopback port (the same one when started again)."""
        if self._httpd is not None:
            return self
        # Started again after a stop, it keeps its port: Prometheus and the
        # runbooks' api_url find it where it was, as a restarted pod.
        self._httpd = _Server((self.host, self.port), self)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"paracle-api-{self.port}", daemon=True)
        self._thread.start()
        log.info("API stand-in on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the service's Postgres and Redis sessions."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
        self._db.close()
        self._redis.close()

    # -- fault switches ----------------------------------------------------

    def set_fault(self, fault: str, on: bool = True) -> None:
        """Switch one of :data:`FAULTS` on or off."""
        if fault not in FAULTS:
            raise SandboxError(f"unknown API fault {fault!r}; known: "
                               f"{', '.join(FAULTS)}")
        (self.faults.add if on else self.faults.discard)(fault)
        log.info("API stand-in: fault %s %s", fault, "on" if on else "off")

    def raise_in_requests(self, hook: Callable[[], object] | None) -> None:
        """Call ``hook`` inside every run request; what it raises becomes a 500.

        The exception is logged with its full traceback, as the API logs
        an unhandled error. ``None`` switches it off.
        """
        self._raise_hook = hook

    # -- one request ---------------------------------------------------------

    def handle_run(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Serve one ``POST /v1/agents/run``: queue for a worker, then work."""
        started = time.monotonic()
        request_id = secrets.token_hex(6)
        lines: list[str] = []
        fields: dict[str, Any] = {}
        with self._in_flight():
            if self.in_flight > self.config.max_in_flight:
                status, answer = 503, {"error": "too many requests in flight"}
            elif not self._workers.acquire(timeout=self.config.queue_timeout):
                status, answer = 503, {"error": "no worker free"}
            else:
                try:
                    status, answer = self._run(body, fields, lines)
                except Exception as exc:  # the API's last-resort handler
                    status, answer = 500, {"error": "internal server error"}
                    lines.append(logfmt(
                        "error", "paracle.api", "unhandled exception",
                        error=f"{type(exc).__name__}: {exc}",
                        request_id=request_id))
                    lines.extend(traceback.format_exc().rstrip("\n").splitlines())
                finally:
                    self._workers.release()
        duration = time.monotonic() - started

        self._metrics.observe("POST", RUN_PATH, status, duration)
        level = "error" if status >= 500 else "info"
        lines.append(logfmt(level, "paracle.api", "request finished",
                            method="POST", path=RUN_PATH, status=status,
                            duration_ms=round(duration * 1000), **fields,
                            request_id=request_id))
        self._emit(lines)
        return status, {**answer, "request_id": request_id}

    def handle_health(self) -> tuple[int, dict[str, Any]]:
        """Serve ``GET /health``: Postgres ``SELECT 1`` and Redis ``PING``."""
        started = time.monotonic()
        checks = {}
        with self._in_flight():
            try:
                with self._db.session() as conn:
                    conn.execute("SELECT 1").fetchone()
                checks["postgres"] = "ok"
            except psycopg.Error as exc:
                checks["postgres"] = _first_line(exc)
            try:
                self._redis.ping()
                checks["redis"] = "ok"
            except redis.RedisError as exc:
                checks["redis"] = _first_line(exc)
        healthy = all(v == "ok" for v in checks.values())
        status = 200 if healthy else 503
        self._metrics.observe("GET", HEALTH_PATH, status, time.monotonic() - started)
        return status, {"status": "ok" if healthy else "unhealthy", "checks": checks}

    def metrics_text(self) -> bytes:
        return generate_latest(self._metrics.registry)

    @contextmanager
    def _in_flight(self) -> Iterator[None]:
        with self._in_flight_lock:
            self.in_flight += 1
        self._metrics.in_flight.inc()
        try:
            yield
        finally:
            self._metrics.in_flight.dec()
            with self._in_flight_lock:
                self.in_flight -= 1

    def _run(self, body: dict[str, Any], fields: dict[str, Any],
             lines: list[str]) -> tuple[int, dict[str, Any]]:
        if self._settings is not None:
            self._settings()
        agent = self._agent_of(body)
        provider = self._provider_of(agent)
        if self._raise_hook is not None:
            self._raise_hook()

        self._redis_call("rate limit", lines, self._count_request, agent)
        self._redis_call("session read", lines, self._redis.get,
                         f"session:agent-{agent}")
        cache_key = f"cache:agent:{agent}"
        cached = self._redis_call("cache read", lines, self._redis.get, cache_key)
        executions = self._lookup(agent)

        fields["llm_provider"] = provider
        llm_started = time.monotonic()
        status, answer, error = self._call_llm(provider)
        llm_duration = time.monotonic() - llm_started
        fields["llm_duration"] = f"{llm_duration:.3f}"
        self._metrics.llm(provider, status, llm_duration)
        if error is not None:
            lines.append(logfmt("error", "paracle.llm", "llm call failed",
                                provider=provider, **error))
            api_status = 504 if status == 0 else 503 if status == 429 else 502
            return api_status, {"error": f"LLM provider {provider}: "
                                         f"{error['error']}"}

        self._redis_call("cache write", lines, self._redis.set, cache_key,
                         json.dumps(answer), ex=self.config.cache_ttl)
        return 200, {"agent_id": agent, "provider": provider,
                     "cached": cached is not None, "executions": executions,
                     "output": answer.get("content", "")}

    def _agent_of(self, body: dict[str, Any]) -> int:
        agent = body.get("agent_id")
        if isinstance(agent, int) and 1 <= agent <= self.config.agents:
            return agent
        return self._random.randint(1, self.config.agents)

    def _provider_of(self, agent: int) -> str:
        """The default provider, except every fourth agent, pinned to another."""
        default = self.config.default_provider
        others = [name for name in self.providers if name != default]
        return others[0] if others and agent % 4 == 0 else default

    def _count_request(self, agent: int) -> None:
        """INCR and EXPIRE the agent's per-minute counter, in one round trip."""
        key = f"ratelimit:agent-{agent}:{int(time.time() // 60)}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 60)
        pipe.execute()

    def _redis_call(self, what: str, lines: list[str], call: Callable[..., Any],
                    *args: Any, **kw: Any) -> Any:
        """Run one Redis call; a failure is logged, the request goes on."""
        try:
            return call(*args, **kw)
        except redis.RedisError as exc:
            lines.append(logfmt("error", "paracle.cache", f"{what} failed",
                                error=_first_line(exc)))
            return None

    def _lookup(self, agent: int) -> int:
        """Read the agent and its executions; return how many rows came back."""
        with self._db.session() as conn:
            rows = conn.execute(AGENT_BY_ID, [agent]).fetchall()
            if "slow-db" in self.faults:
                rows += conn.execute(
                    schema.recent_failed_executions(agent)).fetchall()
            else:
                last = self._random.randint(1, 200_000)
                rows += conn.execute(EXECUTION_BY_ID, [last]).fetchall()
        return len(rows) - 1

    def _call_llm(self, provider: str
                  ) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
        """Return (status, answer, error fields); status 0 when no answer came."""
        timeout = self.config.llm_timeout
        base = urlsplit(self.providers[provider])
        conn = http.client.HTTPConnection(base.hostname or self.host, base.port,
                                          timeout=timeout)
        payload = json.dumps({"model": "lab", "max_tokens": 256, "messages": [
            {"role": "user", "content": "Run the agent."}]})
        key = self._api_keys(provider) if self._api_keys is not None else None
        headers = {"Content-Type": "application/json",
                   "Authorization": f"Bearer {key or _LAB_KEY}"}
        try:
            conn.request("POST", _LLM_PATHS.get(provider, "/v1/complete"),
                         body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except TimeoutError:
            return 0, {}, {"error": f"timed out after {timeout:g}s",
                           "timeout": f"{timeout:g}"}
        except OSError as exc:
            return 0, {}, {"error": f"connection failed: {exc.strerror or exc}"}
        finally:
            conn.close()

        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        if response.status == 200:
            return 200, answer, None
        message = (answer.get("error") or {}).get("message") or response.reason
        error = {"status": response.status, "error": message}
        if response.getheader("Retry-After"):
            error["retry_after"] = response.getheader("Retry-After")
        return response.status, answer, error

    def _emit(self, lines: list[str]) -> None:
        self.recent_lines.extend(lines)
        if self._sink is None:
            return
        pods = self._pods()
        if not pods:
            return
        pod = pods[next(self._next_pod) % len(pods)]
        try:
            self._sink(pod, "\n".join(lines) + "\n")
        except Exception:  # logs are a side effect; never fail the request
            log.debug("could not hand log lines to the sink", exc_info=True)


class _Metrics:
    """The API's Prometheus metrics, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.duration = Histogram(
            "http_request_duration_seconds", "Time to serve an HTTP request.",
            ["method", "handler", "status"], buckets=BUCKETS,
            registry=self.registry)
        self.requests = Counter(
            "http_requests_total", "HTTP requests served.",
            ["method", "handler", "status"], registry=self.registry)
        self.in_flight = Gauge(
            "http_requests_in_flight", "HTTP requests being served or queued.",
            registry=self.registry)
        self.llm_duration = Histogram(
            "llm_request_duration_seconds", "Time of one LLM provider call.",
            ["provider"], buckets=BUCKETS, registry=self.registry)
        self.llm_requests = Counter(
            "llm_requests_total", "LLM provider calls, by answer status "
            "(0: no answer).", ["provider", "status"], registry=self.registry)

    def observe(self, method: str, handler: str, status: int, seconds: float
                ) -> None:
        self.duration.labels(method, handler, str(status)).observe(seconds)
        self.requests.labels(method, handler, str(status)).inc()

    def llm(self, provider: str, status: int, seconds: float) -> None:
        self.llm_duration.labels(provider).observe(seconds)
        self.llm_requests.labels(provider, str(status)).inc()


class _SessionPool:
    """Postgres sessions opened on demand, at most ``size``, reused LIFO."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], size: int
                 ) -> None:
        self._connect = connect
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._slots.acquire(timeout=30):
            raise psycopg.OperationalError("no pooled session free in 30 s")
        conn = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
                with self._lock:
                    self._all.append(conn)
            yield conn
        except psycopg.OperationalError:
            if conn is not None:  # a broken session is not put back
                self._forget(conn)
                conn = None
            raise
        finally:
            if conn is not None:
                self._idle.put(conn)
            self._slots.release()

    def _forget(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        conn.close()

    def close(self) -> None:
        with self._lock:
            sessions, self._all = self._all, []
        for conn in sessions:
            conn.close()
        while not self._idle.empty():
            self._idle.get_nowait()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], service: ApiService) -> None:
        self.service = service
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        service = self.server.service
        if self.path == "/metrics":
            self._send(200, service.metrics_text(), CONTENT_TYPE_LATEST)
        elif self.path.split("?")[0] in (HEALTH_PATH, "/health/ready",
                                         "/health/live"):
            self._json(*service.handle_health())
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        service = self.server.service
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, 1 << 20))
        if self.path.split("?")[0] != RUN_PATH:
            self._json(404, {"error": "not found"})
            return
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            self._json(400, {"error": "body is not JSON"})
            return
        self._json(*service.handle_run(body if isinstance(body, dict) else {}))

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (its own timeout); nothing to answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("api: " + format, *args)


def logfmt(level: str, logger: str, msg: str, **fields: Any) -> str:
    """Return one logfmt line as the API writes it, stamped now (UTC)."""
    now = dt.datetime.now(dt.timezone.utc)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    parts = [f"ts={stamp}", f"level={level}", f"logger={logger}",
             f"msg={_quoted(msg)}"]
    parts += [f"{k}={_quoted(str(v))}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def _quoted(value: str) -> str:
    if value and not any(c in value for c in ' "=\\') and "\n" not in value:
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
