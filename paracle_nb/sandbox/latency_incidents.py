"""Reproduce the guide's four causes of high API latency, under real load.

Each incident puts one part of the lab in trouble (or none, for too many
concurrent requests), starts a bounded load against the API stand-in, and
returns once a whole ``window`` of that load has passed and Prometheus's
p95 over it is above one second. The load keeps running while the incident
is held, so a runbook sees live traffic: statements running, Redis
answering slowly, requests queued.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from paracle_nb import latency, prometheus
from paracle_nb.sandbox.live import settle
from paracle_nb.sandbox.load import Load
from paracle_nb.target import Target
from paracle_nb.units import parse_duration

if TYPE_CHECKING:
    from paracle_nb.sandbox.lab import Lab

log = logging.getLogger(__name__)

THRESHOLD_S = 1.0
WINDOW = "15s"
# How long an incident's load may run at most, and how long to wait for
# Prometheus to see the latency.
LOAD_SECONDS = 120.0
SETTLE_TIMEOUT = 45.0


@dataclasses.dataclass
class LatencyIncident:
    """A latency incident being held: what was done, the load, what was seen."""

    cause: str
    load: Load
    window: str
    p95_s: float | None = None
    settled_in_s: float = 0.0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


def slow_db(lab: Lab, *, window: str = WINDOW, concurrency: int | None = None
            ) -> LatencyIncident:
    """Each run also reads the agent's failed executions: a seq scan.

    The scans are CPU-bound, so the clients scale with the cores (twelve
    per core, 24 to 96): the twelve workers each wait on their statement,
    and the other requests wait for a worker.
    """
    if concurrency is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 2
        concurrency = 12 * min(8, max(2, cores))
    lab.live.require_api().set_fault("slow-db")
    incident = _under_load(lab, "slow-database-queries", window, concurrency)
    incident.details.update(concurrency=concurrency)
    return incident


def llm_timeout(lab: Lab, *, provider: str = "openai", window: str = WINDOW,
                concurrency: int = 8) -> LatencyIncident:
    """The default provider answers after longer than the API's LLM_TIMEOUT."""
    slow_seconds = lab.live.require_api().config.llm_timeout * 4
    lab.live.providers[provider].set_mode("slow", slow_seconds=slow_seconds)
    incident = _under_load(lab, "llm-provider-timeout", window, concurrency)
    incident.details.update(provider=provider, slow_seconds=slow_seconds,
                            llm_timeout_s=lab.live.require_api().config.llm_timeout)
    return incident


def slow_redis(lab: Lab, *, window: str = WINDOW, concurrency: int = 8,
               sleep_s: float = 0.25) -> LatencyIncident:
    """Redis held busy (the lab's ``redis-slow``); each run makes four calls."""
    lab.reproduce("redis-slow", sleep_s=sleep_s)
    try:
        incident = _under_load(lab, "slow-redis", window, concurrency)
    except BaseException:
        lab.heal("redis-slow")
        raise
    incident.details.update(sleep_s=sleep_s)
    return incident


def too_many_requests(lab: Lab, *, window: str = WINDOW, concurrency: int = 100
                      ) -> LatencyIncident:
    """A hundred clients at once against twelve workers; every part healthy."""
    incident = _under_load(lab, "too-many-concurrent-requests", window,
                           concurrency)
    incident.details.update(workers=lab.live.require_api().config.workers)
    return incident


def heal(lab: Lab, incident: LatencyIncident) -> None:
    """Stop the load and put every part back as it was."""
    result = incident.load.stop()
    log.info("latency incident %s over: %s", incident.cause, result.summary())
    lab.live.heal()
    if incident.cause == "slow-redis":
        lab.heal("redis-slow")


@contextlib.contextmanager
def healthy_traffic(lab: Lab, *, window: str = WINDOW, concurrency: int = 4
                    ) -> Iterator[Load]:
    """Hold light traffic until Prometheus's p95 over ``window`` is healthy.

    After an incident, its slow requests stay in the window for a while:
    this waits them out, so a runbook sees only healthy traffic.
    """
    load = lab.live.load(requests=100_000, concurrency=concurrency,
                         seconds=LOAD_SECONDS, timeout=10.0).start()
    try:
        if lab.live.prometheus is not None:
            _settle(lab, window, lambda p95: p95 < THRESHOLD_S)
        yield load
    finally:
        load.stop()


def _under_load(lab: Lab, cause: str, window: str, concurrency: int
                ) -> LatencyIncident:
    load = lab.live.load(requests=100_000, concurrency=concurrency,
                         seconds=LOAD_SECONDS, timeout=10.0).start()
    incident = LatencyIncident(cause, load, window)
    try:
        if lab.live.prometheus is None:
            # Without Prometheus, only the logs and the servers can tell.
            time.sleep(3.0)
        else:
            started = time.monotonic()
            incident.p95_s = _settle(lab, window, lambda p95: p95 > THRESHOLD_S)
            incident.settled_in_s = round(time.monotonic() - started, 1)
    except BaseException:
        load.stop()
        lab.live.heal()
        raise
    log.info("latency incident %s: p95 %.2fs after %.1fs", cause,
             incident.p95_s or float("nan"), incident.settled_in_s)
    return incident


def _settle(lab: Lab, window: str, good: Callable[[float], bool]) -> float:
    """Wait until ``window`` holds only the load just started, and its p95
    satisfies ``good``; return that p95.

    Until a whole window has passed, an earlier incident's requests (and
    log lines) still count in it.
    """
    assert lab.live.prometheus is not None
    target = Target(prometheus_url=lab.live.prometheus.url, timeout_seconds=2.0)
    query = latency.quantile_query(window)
    fresh = time.monotonic() + parse_duration(window)
    p95 = settle(lambda: prometheus.value(target, query),
                 lambda value: value == value and good(value),
                 f"p95 over {window}", SETTLE_TIMEOUT, not_before=fresh)
    return round(p95, 3)

