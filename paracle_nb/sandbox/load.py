"""A bounded load generator for the lab's API stand-in (loopback only).

``C`` threads send requests until ``requests`` have been sent or
``seconds`` have passed, whichever comes first; each request has its own
timeout. Run it to completion with :func:`run_load`, or in the background
with :class:`Load` (``start``/``stop``) while a runbook looks at the lab.
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import logging
import statistics
import threading
import time
from collections import Counter
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from paracle_nb.errors import SandboxError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 256
MAX_REQUESTS = 100_000
MAX_SECONDS = 300.0


@dataclasses.dataclass
class LoadResult:
    """What a load run sent and how long each answer took (seconds)."""

    sent: int = 0
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    latencies: list[float] = dataclasses.field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        """Answers with a 2xx status."""
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def failed(self) -> int:
        """Requests without a 2xx answer (status 0: no answer at all)."""
        return self.sent - self.ok

    def quantile(self, q: float) -> float:
        """Return the ``q`` quantile of the latencies (NaN without any)."""
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[min(98, max(0, round(q * 100) - 1))]

    def summary(self) -> dict[str, float | int]:
        return {"sent": self.sent, "ok": self.ok, "failed": self.failed,
                "p50_s": round(self.quantile(0.5), 3),
                "p95_s": round(self.quantile(0.95), 3),
                "elapsed_s": round(self.elapsed, 2)}


class Load:
    """Requests sent by ``concurrency`` threads, bounded in count and time.

    >>> with Load(api_url, requests=200, concurrency=4) as load:  # doctest: +SKIP
    ...     time.sleep(2)
    >>> load.result.summary()  # doctest: +SKIP
    """

    def __init__(self, url: str, *, requests: int = 100, concurrency: int = 4,
                 seconds: float = 10.0, path: str = "/v1/agents/run",
                 timeout: float = 30.0, agents: int = 2_000) -> None:
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
            raise SandboxError(f"the load generator sends to loopback only, not "
                               f"{url}")
        if not (0 < concurrency <= MAX_CONCURRENCY and 0 < requests <= MAX_REQUESTS
                and 0 < seconds <= MAX_SECONDS):
            raise SandboxError(
                f"load out of bounds: at most {MAX_CONCURRENCY} threads, "
                f"{MAX_REQUESTS} requests, {MAX_SECONDS:g} s")
        self.host, self.port = "127.0.0.1", parts.port
        self.requests, self.concurrency = requests, concurrency
        self.seconds, self.path, self.timeout = seconds, path, timeout
        self.agents = agents
        self.result = LoadResult()
        self._tickets = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self) -> Self:
        """Start the sending threads; returns at once."""
        if self._threads:
            return self
        self._started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._send_until_done, daemon=True,
                             name=f"load-{self.port}-{i}")
            for i in range(self.concurrency)]
        for thread in self._threads:
            thread.start()
        log.info("load: %d threads, up to %d requests or %g s, to port %d",
                 self.concurrency, self.requests, self.seconds, self.port)
        return self

    def wait(self, timeout: float | None = None) -> LoadResult:
        """Wait until the load has run its course; return the result."""
        deadline = time.monotonic() + (timeout if timeout is not None
                                       else self.seconds + self.timeout + 5)
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.result.elapsed = time.monotonic() - self._started
        return self.result

    def stop(self) -> LoadResult:
        """Send no more requests; wait for those in flight (their timeout)."""
        self._stop.set()
        return self.wait(self.timeout + 5)

    def _send_until_done(self) -> None:
        deadline = self._started + self.seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            ticket = next(self._tickets)
            if ticket >= self.requests:
                return
            agent = 1 + (ticket * 7919) % self.agents
            started = time.monotonic()
            status = self._send(json.dumps({"agent_id": agent}).encode())
            latency = time.monotonic() - started
            with self._lock:
                self.result.sent += 1
                self.result.statuses[status] += 1
                self.result.latencies.append(latency)

    def _send(self, body: bytes) -> int:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", self.path, body=body,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            return int(response.status)
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()


def run_load(url: str, *, requests: int = 100, concurrency: int = 4,
             seconds: float = 10.0, timeout: float = 30.0) -> LoadResult:
    """Send the load and wait for it; return counts and latencies."""
    load = Load(url, requests=requests, concurrency=concurrency, seconds=seconds,
                timeout=timeout)
    load.start()
    return load.wait()
