"""A stand-in LLM provider on loopback, with the failures the guide lists.

One :class:`FakeLLMProvider` per provider name (``openai``, ``anthropic``).
Its mode says how it answers every request:

========== ==============================================================
ok         answers after ``latency`` seconds (about 50 ms)
slow       answers after ``slow_seconds``, longer than the API's timeout
rate-limited  429 with ``Retry-After``
invalid-key   401
outage     503 and 502, alternately
========== ==============================================================

Handlers are threads, at most ``max_concurrent`` at a time; a slow answer
waits on the server's stop event, so :meth:`FakeLLMProvider.stop` never
waits for it.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from paracle_nb.errors import SandboxError
from paracle_nb.sandbox import procs

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

MODES = ("ok", "slow", "rate-limited", "invalid-key", "outage")

# status, error type, message: what each failing mode answers.
_ERRORS: dict[str, tuple[int, str, str]] = {
    "rate-limited": (429, "rate_limit_error", "Rate limit exceeded"),
    "invalid-key": (401, "authentication_error", "Invalid API key"),
    "outage": (503, "overloaded_error", "Service unavailable"),
}


class FakeLLMProvider(procs.LabServer):
    """An LLM provider's HTTP API on 127.0.0.1, answering as its mode says.

    >>> with FakeLLMProvider("openai") as provider:  # doctest: +SKIP
    ...     provider.set_mode("rate-limited")
    """

    host = procs.LOOPBACK

    def __init__(self, name: str, *, mode: str = "ok", latency: float = 0.05,
                 slow_seconds: float = 5.0, retry_after: int = 20,
                 max_concurrent: int = 64) -> None:
        self.name = name
        self.latency = latency
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.port = 0
        self.served: dict[int, int] = {}
        # When set, only requests bearing this key are served; others get 401.
        self.api_key: str | None = None
        self._mode = "ok"
        self.set_mode(mode)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._serial = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"port={self.port} mode={self._mode}" if self._httpd else "stopped"
        return f"<FakeLLMProvider {self.name} {state}>"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``; the provider must be started."""
        if self._httpd is None:
            raise SandboxError(f"LLM provider {self.name} is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str, *, slow_seconds: float | None = None) -> None:
        """Switch how every following request is answered."""
        if mode not in MODES:
            raise SandboxError(f"unknown LLM provider mode {mode!r}; "
                               f"known: {', '.join(MODES)}")
        if slow_seconds is not None:
            self.slow_seconds = slow_seconds
        self._mode = mode
        log.info("LLM provider %s: mode %s", self.name, mode)

    def start(self) -> Self:
        """Listen on a free loopback port, serving in a daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server((self.host, 0), self)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"llm-{self.name}-{self.port}", daemon=True)
        self._thread.start()
        log.debug("LLM provider %s on port %d", self.name, self.port)
        return self

    def stop(self) -> None:
        """Stop serving; slow answers in progress give up at once."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.debug("LLM provider %s stopped", self.name)

    def _count(self, status: int) -> None:
        with self._lock:
            self.served[status] = self.served.get(status, 0) + 1

    def _answer(self) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Return status, headers and body for one request, in the current mode."""
        mode = self._mode
        if mode in ("ok", "slow"):
            delay = self.latency if mode == "ok" else self.slow_seconds
            if self._stopping.wait(delay):
                return 503, {}, _error("api_error", "provider shutting down")
            return 200, {}, {
                "id": f"lab-{self.name}-{next(self._serial)}",
                "provider": self.name,
                "content": "The lab's provider answers every prompt alike.",
                "usage": {"input_tokens": 42, "output_tokens": 12},
            }

        status, kind, message = _ERRORS[mode]
        headers = {}
        if mode == "rate-limited":
            headers["Retry-After"] = str(self.retry_after)
        if mode == "outage" and next(self._serial) % 2 == 0:
            status, message = 502, "Bad gateway"
        return status, headers, _error(kind, message)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], provider: FakeLLMProvider) -> None:
        self.provider = provider
        super().__init__(address, _Handler)


STATUS_PATH = "/api/v2/status.json"
# mode -> (indicator, description), as a provider's status page words it.
_STATUS = {"ok": ("none", "All Systems Operational"),
           "slow": ("minor", "Elevated latency"),
           "invalid-key": ("none", "All Systems Operational"),
           "rate-limited": ("minor", "Elevated rate of 429 responses"),
           "outage": ("major", "Partial outage of the API")}


def status_page(provider: FakeLLMProvider) -> dict[str, Any]:
    """Return the provider's status page body, in the usual status JSON."""
    indicator, description = _STATUS[provider.mode]
    return {"page": {"name": provider.name},
            "status": {"indicator": indicator, "description": description}}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?")[0] != STATUS_PATH:
            self._send(404, {}, _error("not_found_error", "not found"))
            return
        self._send(200, {}, status_page(self.server.provider))

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        provider = self.server.provider
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(min(length, 1 << 20))

        wanted = provider.api_key
        if wanted is not None and \
                self.headers.get("Authorization") != f"Bearer {wanted}":
            self._send(401, {}, _error(*_ERRORS["invalid-key"][1:]))
            return
        if not provider._slots.acquire(blocking=False):
            self._send(529, {}, _error("overloaded_error", "too many requests"))
            return
        try:
            status, headers, body = provider._answer()
        finally:
            provider._slots.release()
        self._send(status, headers, body)

    def _send(self, status: int, headers: dict[str, str], body: dict[str, Any]
              ) -> None:
        self.server.provider._count(status)
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            # The API gave up waiting (its LLM timeout) and hung up: expected.
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("llm %s: " + format, self.server.provider.name, *args)
